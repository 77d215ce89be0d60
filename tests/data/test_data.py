from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from unet_search.core.errors import DataError
from unet_search.core.sections import DataConfig
from unet_search.data.dataset import DatasetArrays, load_dataset
from unet_search.data.decode import read_image
from unet_search.data.scan import scan_dataset
from unet_search.data.split import split_indices, split_names
from unet_search.data.synthetic import make_synthetic


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def _generic(root: Path, n: int = 4, size: int = 20, mask_value: int = 255) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        _png(root / "images" / f"img {i}.png", rng.integers(0, 255, (size, size + 3, 3), np.uint8))
        mask = np.zeros((size, size + 3), np.uint8)
        mask[2:8, 3:9] = mask_value
        _png(root / "masks" / f"img {i}.png", mask)
    return root


def _dsb(root: Path, n: int = 3) -> Path:
    for i in range(n):
        image_id = f"id{i}"
        _png(
            root / image_id / "images" / f"{image_id}.png",
            np.full((16, 16, 4), 100 + i, np.uint8),
            "RGBA",
        )
        a, b = np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8)
        a[0:6, 0:6], b[4:10, 4:10] = 255, 255  # overlapping instances
        _png(root / image_id / "masks" / "m1.png", a)
        _png(root / image_id / "masks" / "m2.png", b)
    return root


def test_detects_both_layouts(tmp_path: Path) -> None:
    generic = scan_dataset(_generic(tmp_path / "g"))
    assert generic.layout == "images_masks"
    assert [s.name for s in generic.samples] == ["img 0", "img 1", "img 2", "img 3"]
    dsb = scan_dataset(_dsb(tmp_path / "d"))
    assert dsb.layout == "dsb2018"
    assert [len(s.masks) for s in dsb.samples] == [2, 2, 2]


def test_dsb_masks_are_unioned_and_instances_kept(tmp_path: Path) -> None:
    arrays = load_dataset(_dsb(tmp_path / "d"), DataConfig(val_fraction=0.34))
    assert arrays.mask(0).sum() == 36 + 36 - 4  # union of two 6x6 squares overlapping 2x2
    assert set(np.unique(arrays.instances(0)).tolist()) == {0, 1, 2}
    assert arrays.image(0)[0, 0].tolist() == [100, 100, 100]  # RGBA -> RGB
    assert arrays.sizes[0].tolist() == [16, 16]


def test_mask_instances_are_8_connected_like_predicted_ones(tmp_path: Path) -> None:
    """The images/masks layout has no instances: its truth is the mask's components, found
    with the rule predictions follow (8-connectivity), so an exact prediction scores 1."""
    from unet_search.train.metrics import dsb_image_score

    mask = np.zeros((20, 20), np.uint8)
    mask[2:6, 2:6] = mask[6:10, 6:10] = 255  # touching at one corner: one object
    mask[14:18, 2:6] = 255  # apart: another
    _png(tmp_path / "g" / "images" / "a.png", np.zeros((20, 20, 3), np.uint8))
    _png(tmp_path / "g" / "masks" / "a.png", mask)
    _png(tmp_path / "g" / "images" / "b.png", np.zeros((20, 20, 3), np.uint8))
    _png(tmp_path / "g" / "masks" / "b.png", mask)
    arrays = load_dataset(tmp_path / "g", DataConfig(val_fraction=0.5))
    assert int(arrays.instances(0).max()) == 2
    assert dsb_image_score(arrays.mask(0) > 0, arrays.instances(0)) == 1.0


def test_label_images_are_read_as_instances_with_masks_instances(tmp_path: Path) -> None:
    """``data.masks: instances``: an images/masks label image (16-bit PNG or TIFF, any ids,
    0 the background) holds the same objects as the DSB2018 layout's one mask per object:
    touching nuclei stay apart, and the plan counts them touching alike."""
    from unet_search.plan.profile import profile_data

    dsb = tmp_path / "dsb"
    make_synthetic(dsb, n=6, size=48, seed=3, style="hard")
    truth = load_dataset(dsb, DataConfig(val_fraction=0.34))
    root = tmp_path / "labels"
    for i, name in enumerate(truth.names):
        _png(root / "images" / f"{name}.png", truth.image(i))
        ids = truth.instances(i).astype(np.uint32) * 7 + 300  # not consecutive, > 255
        ids[truth.instances(i) == 0] = 0
        if i % 2:
            tifffile.imwrite(root / "masks" / f"{name}.tif", ids.astype(np.uint16))
        else:
            _png(root / "masks" / f"{name}.png", ids.astype(np.uint16))
    cfg = DataConfig(val_fraction=0.34, masks="instances")
    arrays = load_dataset(root, cfg)
    assert arrays.summary.layout == "images_masks"
    assert arrays.summary.instances_per_image == truth.summary.instances_per_image > 5
    touching = 0
    for i in range(len(truth)):
        assert np.array_equal(arrays.mask(i), truth.mask(i))
        ours, theirs = arrays.instances(i), truth.instances(i)
        pairs = set(zip(ours.ravel().tolist(), theirs.ravel().tolist(), strict=True))
        assert len(pairs) == len(np.unique(ours)) == len(np.unique(theirs))  # one to one
        assert int(ours.max()) == len(np.unique(ours)) - 1  # labels 1..K
        # touching objects stay apart: more objects than the mask's connected components
        touching += int(ours.max()) - int(ndimage.label(truth.mask(i) > 0)[0].max())
    assert touching > 0
    assert profile_data(arrays).touching == profile_data(truth).touching > 0.1
    # another reading of the same files: another data id (the registry compares apart)
    plain = load_dataset(_generic(tmp_path / "g"), DataConfig())
    assert load_dataset(tmp_path / "g", DataConfig(masks="instances")).summary.data_id != (
        plain.summary.data_id
    )
    # read as class masks, the label images break the binary rule, and the error says how
    with pytest.raises(DataError, match=r"is read with --set masks=instances\.$"):
        load_dataset(root, DataConfig(val_fraction=0.34))


def test_a_label_image_with_a_negative_id_names_its_file(tmp_path: Path) -> None:
    root = _generic(tmp_path / "g")
    labels = np.zeros((20, 23), np.int32)
    labels[2:8, 3:9], labels[10:12, 10:12] = 4, -1
    (root / "masks" / "img 2.png").unlink()
    tifffile.imwrite(root / "masks" / "img 2.tif", labels)
    with pytest.raises(DataError) as err:
        load_dataset(root, DataConfig(masks="instances"))
    assert str(err.value) == (
        f"{root / 'masks' / 'img 2.tif'}: a label image (data.masks: instances) holds object "
        "ids >= 0 (0 the background), but holds -1."
    )


@pytest.mark.parametrize("value", [1, 255])
def test_binary_mask_encodings(tmp_path: Path, value: int) -> None:
    arrays = load_dataset(_generic(tmp_path / "g", mask_value=value), DataConfig())
    assert set(np.unique(arrays.mask_pixels).tolist()) == {0, 1}
    assert arrays.sizes.tolist() == [[20, 23]] * 4


def test_class_index_masks(tmp_path: Path) -> None:
    root = _generic(tmp_path / "g")
    mask = np.zeros((20, 23), np.uint8)
    mask[0:5], mask[10:15] = 1, 2
    for i in range(4):
        _png(root / "masks" / f"img {i}.png", mask)
    arrays = load_dataset(root, DataConfig(num_classes=3))
    assert set(np.unique(arrays.mask_pixels).tolist()) == {0, 1, 2}
    assert arrays.instance_pixels is None and arrays.instances(0) is None
    with pytest.raises(DataError, match=r"binary \(0/1 or 0/255\) for num_classes=1"):
        load_dataset(root, DataConfig(num_classes=1))


def test_images_keep_their_bit_depth_and_channels(tmp_path: Path) -> None:
    """16-bit values stay (a 12-bit camera's 0..4095 and 8-bit values in a 16-bit file were
    divided by 257 and lost); a grey image is one channel; floats stay float."""
    gray16 = np.array([[0, 257 * 100], [65535, 257]], np.uint16)
    _png(tmp_path / "g16.png", gray16)
    assert read_image(tmp_path / "g16.png").dtype == np.uint16
    assert read_image(tmp_path / "g16.png")[..., 0].tolist() == gray16.tolist()
    assert read_image(tmp_path / "g16.png").shape == (2, 2, 1)
    eight_in_16 = np.array([[0, 235], [17, 3]], np.uint16)  # the DSB nuclei TIFF's kind
    tifffile.imwrite(tmp_path / "t.tif", eight_in_16)
    assert read_image(tmp_path / "t.tif")[..., 0].tolist() == [[0, 235], [17, 3]]
    tifffile.imwrite(tmp_path / "f.tif", np.array([[0.25, np.nan], [2.5, -1.0]], np.float64))
    floats = read_image(tmp_path / "f.tif")
    assert floats.dtype == np.float32 and floats[..., 0].tolist() == [[0.25, 0.0], [2.5, -1.0]]
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "j.jpg")
    assert abs(int(read_image(tmp_path / "j.jpg")[4, 4, 0]) - 200) <= 2
    _png(tmp_path / "g8.png", np.full((3, 3), 7, np.uint8))
    assert read_image(tmp_path / "g8.png").tolist()[0][0] == [7]


def test_a_grey_dataset_is_cached_as_one_channel_and_a_mixed_one_widens(tmp_path: Path) -> None:
    root = tmp_path / "grey"
    for i in range(4):
        _png(root / "images" / f"i{i}.png", np.full((6, 5), 1000 * i, np.uint16))
        _png(root / "masks" / f"i{i}.png", np.eye(6, 5, dtype=np.uint8) * 255)
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


def _problem(tmp_path: Path, kind: str) -> tuple[Path, str]:
    root = _generic(tmp_path / "g")
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
        _png(root / "masks" / "img 0.png", np.zeros((5, 5), np.uint8))
        return root, "mask is 5x5 but its image img 0.png is 20x23"
    if kind == "values":
        _png(root / "masks" / "img 0.png", np.full((20, 23), 7, np.uint8))
        return root, "mask values must be binary"
    if kind == "symlink":
        outside = _png(tmp_path / "outside.png", np.zeros((20, 23), np.uint8))
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
    root = _generic(tmp_path / "g")
    os.remove(root / "masks" / "img 1.png")
    (root / "images" / "notes.txt").write_text("x")
    with pytest.raises(DataError) as err:
        scan_dataset(root)
    assert "2 problem(s)" in str(err.value)
    assert "notes.txt" in str(err.value) and "img 1.png" in str(err.value)


def test_cache_is_read_on_the_second_load(tmp_path: Path) -> None:
    root, cache = _generic(tmp_path / "g"), tmp_path / "cache"
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
    root = _generic(tmp_path / "g")
    base = load_dataset(root, DataConfig()).fingerprint
    assert load_dataset(root, DataConfig()).fingerprint == base
    # Every run is scored on the whole images: how a model sees them is not the data.
    assert load_dataset(root, DataConfig(input_mode="resize", image_size=32)).fingerprint == base
    assert load_dataset(root, DataConfig(patch_size=(16, 32), scale=0.5)).fingerprint == base
    assert load_dataset(root, DataConfig(num_classes=2)).fingerprint != base
    assert load_dataset(root, DataConfig(val_fraction=0.5)).fingerprint != base
    assert load_dataset(root, DataConfig(split_seed=1)).fingerprint != base
    mask = np.zeros((20, 23), np.uint8)
    _png(root / "masks" / "img 0.png", mask)
    assert load_dataset(root, DataConfig()).fingerprint != base


def test_split_is_deterministic_disjoint_and_complete() -> None:
    cfg = DataConfig(val_fraction=0.2, split_seed=3)
    train, val, test = split_indices(50, cfg)
    assert [part.tolist() for part in split_indices(50, cfg)] == [
        train.tolist(),
        val.tolist(),
        test.tolist(),
    ]
    # 50 images: 10% held out for the test by default, disjoint from train and val
    assert (len(train), len(val), len(test)) == (35, 10, 5)
    assert sorted([*train, *val, *test]) == list(range(50))
    # the test images do not depend on the validation split (a plan reads the same images)
    other_val = split_indices(50, cfg.with_values(val_fraction=0.3))
    assert other_val.test.tolist() == test.tolist() and len(other_val.val) == 15
    assert len(split_indices(50, cfg.with_values(test_fraction=0.0)).test) == 0
    assert split_indices(50, cfg.with_values(split_seed=4)).val.tolist() != val.tolist()
    # fewer than 20 images: no test split unless asked for
    assert len(split_indices(19, cfg).test) == 0
    assert len(split_indices(19, cfg.with_values(test_fraction=0.1)).test) == 2
    with pytest.raises(DataError, match=r"2 image\(s\) are too few .* test_fraction=0.4"):
        split_indices(2, cfg.with_values(val_fraction=0.4, test_fraction=0.4))


def test_the_test_split_is_named_in_split_json_order(tmp_path: Path) -> None:
    names = [f"img{i:02d}" for i in range(20)]
    cfg = DataConfig(val_fraction=0.2)
    parts = split_names(names, cfg)
    split = split_indices(20, cfg)
    assert parts == {
        "train": [names[i] for i in split.train],
        "val": [names[i] for i in split.val],
        "test": [names[i] for i in split.test],
    }
    assert (len(parts["val"]), len(parts["test"])) == (4, 2)


def test_the_fingerprint_covers_the_test_split(tmp_path: Path) -> None:
    make_synthetic(tmp_path / "d", n=4, size=32, seed=0)
    base = load_dataset(tmp_path / "d", DataConfig(val_fraction=0.25)).fingerprint
    held = load_dataset(tmp_path / "d", DataConfig(val_fraction=0.25, test_fraction=0.25))
    assert held.fingerprint != base
    assert load_dataset(tmp_path / "d", DataConfig(val_fraction=0.25)).fingerprint == base


def test_object_store_uri_is_fetched_then_read(tmp_path: Path) -> None:
    from unet_search.data.dataset import materialize

    root = _generic(tmp_path / "bucket" / "ds")
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

    root = _generic(tmp_path / "data")
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
        _png(root / "images" / f"{name}.png", rng.integers(0, 255, (20, 23, 3), np.uint8))
        _png(root / "masks" / f"{name}.png", (rng.random((20, 23)) > 0.5).astype(np.uint8))
    arrays = load_dataset(root, DataConfig(val_fraction=0.25))
    assert len(arrays) == 4 and arrays.pixels.shape == (4 * 20 * 23, 3)
    assert arrays.image(3).shape == (20, 23, 3)  # at its own size
    assert set(np.unique(arrays.mask_pixels)) <= {0, 1}


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
