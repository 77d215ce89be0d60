"""Finding and checking a dataset's files: both layouts, every violation named with its file and
rule, all problems at once, enormous images refused from their header, any file name."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from layouts import dsb, images_masks, png

from unet_search.core.errors import DataError
from unet_search.core.sections import DataConfig
from unet_search.data.dataset import load_dataset
from unet_search.data.scan import scan_dataset


def test_detects_both_layouts(tmp_path: Path) -> None:
    generic = scan_dataset(images_masks(tmp_path / "g"))
    assert generic.layout == "images_masks"
    assert [s.name for s in generic.samples] == ["img 0", "img 1", "img 2", "img 3"]
    bowl = scan_dataset(dsb(tmp_path / "d"))
    assert bowl.layout == "dsb2018"
    assert [len(s.masks) for s in bowl.samples] == [2, 2, 2]


def _problem(tmp_path: Path, kind: str) -> tuple[Path, str]:
    root = images_masks(tmp_path / "g")
    if kind == "missing":
        return tmp_path / "nope", "data directory does not exist"
    if kind == "empty":
        (tmp_path / "e").mkdir()
        return tmp_path / "e", "is empty"
    if kind == "no_mask":
        os.remove(root / "masks" / "img 1.png")
        return root, "img 1.png: image has no mask"
    if kind == "no_image":
        os.remove(root / "images" / "img 2.png")
        return root, "img 2.png: mask has no image"
    if kind == "corrupt":
        data = (root / "images" / "img 0.png").read_bytes()
        (root / "images" / "img 0.png").write_bytes(data[: len(data) // 2])
        return root, "img 0.png: cannot be decoded as an image"
    if kind == "zero_bytes":
        (root / "masks" / "img 3.png").write_bytes(b"")
        return root, "img 3.png: file is empty (0 bytes)"
    if kind == "not_image":
        (root / "images" / "notes.txt").write_text("hello")
        return root, "notes.txt: not a supported file type"
    if kind == "size":
        png(root / "masks" / "img 0.png", np.zeros((5, 5), np.uint8))
        return root, "mask is 5x5 but its image img 0.png is 20x23"
    if kind == "values":
        png(root / "masks" / "img 0.png", np.full((20, 23), 7, np.uint8))
        return root, "mask values must be binary"
    if kind == "symlink":
        outside = png(tmp_path / "outside.png", np.zeros((20, 23), np.uint8))
        os.remove(root / "masks" / "img 0.png")
        os.symlink(outside, root / "masks" / "img 0.png")
        return root, "is a link to outside the data root"
    if kind == "too_few":
        for i in range(1, 4):
            os.remove(root / "images" / f"img {i}.png")
            os.remove(root / "masks" / f"img {i}.png")
        return root, "1 image(s) are too few for val_fraction"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "missing",
        "empty",
        "no_mask",
        "no_image",
        "corrupt",
        "zero_bytes",
        "not_image",
        "size",
        "values",
        "symlink",
        "too_few",
    ],
)
def test_every_violation_names_the_file_and_rule(tmp_path: Path, kind: str) -> None:
    root, fragment = _problem(tmp_path, kind)
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        load_dataset(root, DataConfig(val_fraction=0.25), cache)
    assert fragment in str(err.value)
    assert not cache.exists()  # nothing written for bad data


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    root = images_masks(tmp_path / "g")
    os.remove(root / "masks" / "img 1.png")
    (root / "images" / "notes.txt").write_text("x")
    with pytest.raises(DataError) as err:
        scan_dataset(root)
    assert "2 problem(s)" in str(err.value)
    assert "notes.txt" in str(err.value) and "img 1.png" in str(err.value)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height but holds no pixels (a decompression bomb's shape)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_an_enormous_image_is_refused_from_its_header(tmp_path: Path) -> None:
    import resource

    root = images_masks(tmp_path / "data")
    _png_header_only(root / "images" / "img 0.png", 60_000, 60_000)  # 3.6 G pixels
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataError, match=r"img 0\.png.*(pixel limit|exceeds the limit)"):
        load_dataset(root, DataConfig(val_fraction=0.25))
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200  # never decoded (it would need 3.4 GiB)


def test_unicode_and_spaces_in_names_work(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    root = tmp_path / "données d'été"
    names = ["noyau ü 1", "核 2", "cell (3) é", "img 4"]
    for name in names:
        png(root / "images" / f"{name}.png", rng.integers(0, 255, (20, 23, 3), np.uint8))
        png(root / "masks" / f"{name}.png", (rng.random((20, 23)) > 0.5).astype(np.uint8))
    arrays = load_dataset(root, DataConfig(val_fraction=0.25))
    assert len(arrays) == 4 and arrays.pixels.shape == (4 * 20 * 23, 3)
    assert arrays.image(3).shape == (20, 23, 3)  # at its own size
    assert set(np.unique(arrays.mask_pixels)) <= {0, 1}
