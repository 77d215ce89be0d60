"""The decoded arrays: the cache (one channel for grey data, read on the second load), the
fingerprint (bytes, classes and split), object-store URIs, the summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from layouts import images_masks, png

from unet_search.core.errors import DataError
from unet_search.core.sections import DataConfig
from unet_search.data.dataset import DatasetArrays, load_dataset
from unet_search.data.synthetic import make_synthetic


def test_a_grey_dataset_is_cached_as_one_channel_and_a_mixed_one_widens(tmp_path: Path) -> None:
    root = tmp_path / "grey"
    for i in range(4):
        png(root / "images" / f"i{i}.png", np.full((6, 5), 1000 * i, np.uint16))
        png(root / "masks" / f"i{i}.png", np.eye(6, 5, dtype=np.uint8) * 255)
    arrays = load_dataset(root, DataConfig(), tmp_path / "cache")
    assert arrays.pixels.shape == (4 * 30, 1) and arrays.pixels.dtype == np.uint16
    assert arrays.summary.pixels == "uint16, 1 channel" and arrays.summary.values == (0.0, 3000.0)
    again = load_dataset(root, DataConfig(), tmp_path / "cache")  # from the cache
    assert again.pixels.dtype == np.uint16 and np.array_equal(again.pixels, arrays.pixels)
    mixed = DatasetArrays.of(
        [np.full((2, 2), 40000, np.uint16), np.full((2, 2, 3), 9, np.uint8)],
        [np.zeros((2, 2), np.uint8)] * 2,
    )
    assert mixed.pixels.dtype == np.uint16 and mixed.pixels.shape == (8, 3)
    assert (
        mixed.image(0)[0, 0].tolist() == [40000] * 3 and mixed.image(1)[0, 0].tolist() == [9] * 3
    )


def test_cache_is_read_on_the_second_load(tmp_path: Path) -> None:
    root, cache = images_masks(tmp_path / "g"), tmp_path / "cache"
    cfg = DataConfig()
    first = load_dataset(root, cfg, cache)
    (path,) = cache.glob("*.npz")
    assert path.stem == first.fingerprint
    # Plant a marker in the cached arrays: only a load that reads the cache returns it.
    with np.load(path) as npz:
        content = dict(npz)
    content["pixels"] = np.full_like(content["pixels"], 42)
    np.savez(path, **content)
    second = load_dataset(root, cfg, cache)
    assert second.fingerprint == first.fingerprint
    assert int(second.pixels.min()) == int(second.pixels.max()) == 42


def test_fingerprint_follows_bytes_classes_and_split_not_the_input_mode(tmp_path: Path) -> None:
    root = images_masks(tmp_path / "g")
    base = load_dataset(root, DataConfig()).fingerprint
    assert load_dataset(root, DataConfig()).fingerprint == base
    # Every run is scored on the whole images: how a model sees them is not the data.
    assert load_dataset(root, DataConfig(input_mode="resize", image_size=32)).fingerprint == base
    assert load_dataset(root, DataConfig(patch_size=(16, 32), scale=0.5)).fingerprint == base
    assert load_dataset(root, DataConfig(num_classes=2)).fingerprint != base
    assert load_dataset(root, DataConfig(val_fraction=0.5)).fingerprint != base
    assert load_dataset(root, DataConfig(split_seed=1)).fingerprint != base
    mask = np.zeros((20, 23), np.uint8)
    png(root / "masks" / "img 0.png", mask)
    assert load_dataset(root, DataConfig()).fingerprint != base


def test_the_fingerprint_covers_the_test_split(tmp_path: Path) -> None:
    make_synthetic(tmp_path / "d", n=4, size=32, seed=0)
    base = load_dataset(tmp_path / "d", DataConfig(val_fraction=0.25)).fingerprint
    held = load_dataset(tmp_path / "d", DataConfig(val_fraction=0.25, test_fraction=0.25))
    assert held.fingerprint != base
    assert load_dataset(tmp_path / "d", DataConfig(val_fraction=0.25)).fingerprint == base


def test_object_store_uri_is_fetched_then_read(tmp_path: Path) -> None:
    from unet_search.data.dataset import materialize

    root = images_masks(tmp_path / "bucket" / "ds")
    local = materialize(f"file://{root}", tmp_path / "cache")
    assert (
        local != root
        and (local / "images" / "img 0.png").read_bytes()
        == (root / "images" / "img 0.png").read_bytes()
    )
    assert (
        load_dataset(local, DataConfig()).fingerprint
        == load_dataset(root, DataConfig()).fingerprint
    )  # same bytes, same dataset
    assert materialize(str(root), tmp_path / "cache") == root.resolve()
    with pytest.raises(DataError, match=r"cannot be read|is not a folder"):
        materialize(f"file://{tmp_path}/nope", tmp_path / "cache")
    with pytest.raises(DataError, match="cannot be read"):
        materialize("nosuchscheme://bucket/x", tmp_path / "cache")


def test_the_data_summary_reads_the_dict_caches_kept_before_it_was_typed() -> None:
    """DatasetArrays.summary is a typed DataSummary; the cache keeps it as the dict it always
    was, and a cache written before reads back the same."""
    from unet_search.data.dataset import DataSummary

    before = {
        "count": 3,
        "layout": "dsb2018",
        "sizes": {"64x64": 2, "80x96": 1},
        "min_size": [64, 64],
        "max_size": [80, 96],
        "foreground_ratio": 0.25,
        "instances_per_image": 4.0,
        "class_pixels": [9000, 3000],
        "data_id": "d1",
        "split": "s1",
    }
    summary = DataSummary.from_dict(before)
    assert summary.sizes == (("64x64", 2), ("80x96", 1)) and summary.max_size == (80, 96)
    assert (summary.data_id, summary.split, summary.instances_per_image) == ("d1", "s1", 4.0)
    assert summary.to_dict() == {
        **before,
        "min_size": (64, 64),
        "max_size": (80, 96),
        "class_pixels": (9000, 3000),
        "pixels": "uint8, 3 channels",  # every image was 8-bit RGB then
        "values": (0.0, 255.0),
    }
    assert DataSummary.from_dict(summary.to_dict()) == summary
