"""Reading images, masks and instance labels: DSB masks unioned, instances 8-connected, label
images, mask encodings, class-index masks, every bit depth and channel count kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from layouts import dsb, images_masks, png
from PIL import Image
from scipy import ndimage

from unet_search.core.errors import DataError
from unet_search.core.sections import DataConfig
from unet_search.data.dataset import load_dataset
from unet_search.data.decode import read_image
from unet_search.data.synthetic import make_synthetic


def test_dsb_masks_are_unioned_and_instances_kept(tmp_path: Path) -> None:
    arrays = load_dataset(dsb(tmp_path / "d"), DataConfig(val_fraction=0.34))
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
    png(tmp_path / "g" / "images" / "a.png", np.zeros((20, 20, 3), np.uint8))
    png(tmp_path / "g" / "masks" / "a.png", mask)
    png(tmp_path / "g" / "images" / "b.png", np.zeros((20, 20, 3), np.uint8))
    png(tmp_path / "g" / "masks" / "b.png", mask)
    arrays = load_dataset(tmp_path / "g", DataConfig(val_fraction=0.5))
    assert int(arrays.instances(0).max()) == 2
    assert dsb_image_score(arrays.mask(0) > 0, arrays.instances(0)) == 1.0


def test_label_images_are_read_as_instances_with_masks_instances(tmp_path: Path) -> None:
    """``data.masks: instances``: an images/masks label image (16-bit PNG or TIFF, any ids,
    0 the background) holds the same objects as the DSB2018 layout's one mask per object:
    touching nuclei stay apart, and the plan counts them touching alike."""
    from unet_search.plan.profile import profile_data

    bowl = tmp_path / "dsb"
    make_synthetic(bowl, n=6, size=48, seed=3, style="hard")
    truth = load_dataset(bowl, DataConfig(val_fraction=0.34))
    root = tmp_path / "labels"
    for i, name in enumerate(truth.names):
        png(root / "images" / f"{name}.png", truth.image(i))
        ids = truth.instances(i).astype(np.uint32) * 7 + 300  # not consecutive, > 255
        ids[truth.instances(i) == 0] = 0
        if i % 2:
            tifffile.imwrite(root / "masks" / f"{name}.tif", ids.astype(np.uint16))
        else:
            png(root / "masks" / f"{name}.png", ids.astype(np.uint16))
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
    plain = load_dataset(images_masks(tmp_path / "g"), DataConfig())
    assert load_dataset(tmp_path / "g", DataConfig(masks="instances")).summary.data_id != (
        plain.summary.data_id
    )
    # read as class masks, the label images break the binary rule, and the error says how
    with pytest.raises(DataError, match=r"is read with --set masks=instances\.$"):
        load_dataset(root, DataConfig(val_fraction=0.34))


def test_a_label_image_with_a_negative_id_names_its_file(tmp_path: Path) -> None:
    root = images_masks(tmp_path / "g")
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
    arrays = load_dataset(images_masks(tmp_path / "g", mask_value=value), DataConfig())
    assert set(np.unique(arrays.mask_pixels).tolist()) == {0, 1}
    assert arrays.sizes.tolist() == [[20, 23]] * 4


def test_class_index_masks(tmp_path: Path) -> None:
    root = images_masks(tmp_path / "g")
    mask = np.zeros((20, 23), np.uint8)
    mask[0:5], mask[10:15] = 1, 2
    for i in range(4):
        png(root / "masks" / f"img {i}.png", mask)
    arrays = load_dataset(root, DataConfig(num_classes=3))
    assert set(np.unique(arrays.mask_pixels).tolist()) == {0, 1, 2}
    assert arrays.instance_pixels is None and arrays.instances(0) is None
    with pytest.raises(DataError, match=r"binary \(0/1 or 0/255\) for num_classes=1"):
        load_dataset(root, DataConfig(num_classes=1))


def test_images_keep_their_bit_depth_and_channels(tmp_path: Path) -> None:
    """16-bit values stay (a 12-bit camera's 0..4095 and 8-bit values in a 16-bit file were
    divided by 257 and lost); a grey image is one channel; floats stay float."""
    gray16 = np.array([[0, 257 * 100], [65535, 257]], np.uint16)
    png(tmp_path / "g16.png", gray16)
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
    png(tmp_path / "g8.png", np.full((3, 3), 7, np.uint8))
    assert read_image(tmp_path / "g8.png").tolist()[0][0] == [7]
