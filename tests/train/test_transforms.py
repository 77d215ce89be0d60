from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from unet_search.core.config import RunConfig
from unet_search.core.sections import IGNORE, AugmentConfig, DataConfig
from unet_search.data.dataset import DatasetArrays, load_dataset
from unet_search.data.split import split_indices
from unet_search.data.synthetic import make_synthetic
from unet_search.data.targets import BORDER_SIGMA, BorderWeighting, class_weights
from unet_search.train.engine import set_epoch
from unet_search.train.sliding import preprocessing_of
from unet_search.train.transforms import (
    Normalization,
    PatchDataset,
    ResizeDataset,
    image_levels,
    normalization_for,
    to_tensor,
    train_pipeline,
)


@pytest.mark.parametrize("elastic", [False, True])
def test_pipelines_build_without_ignored_argument_warnings(elastic: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # albumentations warns (only) on ignored arguments
        pipeline = train_pipeline(AugmentConfig(aug_strength=1.0, elastic=elastic))
    assert len(pipeline.transforms) == (6 if elastic else 5)


def test_image_and_mask_stay_aligned() -> None:
    rng = np.random.default_rng(0)
    for seed in range(20):
        pipeline = train_pipeline(AugmentConfig(aug_strength=1.0, elastic=True), seed=seed)
        mask = np.zeros((48, 48), np.uint8)
        for _ in range(4):
            y, x = rng.integers(0, 40, 2)
            mask[y : y + 8, x : x + 6] = 1
        image = np.repeat((mask * 255)[..., None], 3, axis=2).astype(np.uint8)
        out = pipeline(image=image, mask=mask)
        channel = out["image"][..., 0].astype(np.float32)
        # Brightness/contrast are monotonic: the mid-range separates object from background.
        fg_image = channel > (channel.min() + channel.max()) / 2
        fg_mask = out["mask"] > 0
        iou = (fg_image & fg_mask).sum() / max((fg_image | fg_mask).sum(), 1)
        # Aligned pairs score >= 0.81 over 200 seeds (bilinear image vs nearest mask under
        # elastic/affine warps); a mask flipped against its image scores ~0.15.
        assert iou > 0.75, seed
        assert set(np.unique(out["mask"]).tolist()) <= {0, 1}  # nearest: no new values


def test_zero_strength_is_identity() -> None:
    image = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    out = train_pipeline(AugmentConfig(aug_strength=0.0))(image=image, mask=image[..., 0])
    assert np.array_equal(out["image"], image)


def test_normalizations() -> None:
    image = np.full((2, 2, 3), 255, np.uint8)
    assert torch.allclose(to_tensor(image, "unit", 3), torch.ones(3, 2, 2))
    imagenet = to_tensor(image, "imagenet", 3)
    assert imagenet[0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229)
    assert to_tensor(image, "unit", 1).shape == (1, 2, 2)
    assert normalization_for(RunConfig()).name == "unit"
    pretrained = RunConfig().replace(encoder="resnet18", encoder_weights="imagenet")
    assert normalization_for(pretrained).name == "imagenet"


def test_zscore_makes_images_of_other_brightness_and_contrast_alike() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 100, (16, 24, 3)).astype(np.float64)
    dim, bright = base.astype(np.uint8), (base * 2 + 40).astype(np.uint8)
    a, b = to_tensor(dim, "zscore", 3), to_tensor(bright, "zscore", 3)
    assert torch.allclose(a, b, atol=0.05)  # only rounding to uint8 differs
    for x in (a, b, to_tensor(bright, "zscore", 1)):
        flat = x.reshape(x.shape[0], -1)
        assert torch.allclose(flat.mean(1), torch.zeros(x.shape[0]), atol=1e-5)
        assert torch.allclose(flat.std(1, correction=0), torch.ones(x.shape[0]), atol=1e-4)
    flat = to_tensor(np.full((4, 4, 3), 7, np.uint8), "zscore", 3)
    assert torch.equal(flat, torch.zeros(3, 4, 4))  # a flat image stays flat, not noise


def test_zscore_patches_use_their_whole_images_statistics_as_predict_does() -> None:
    """A background patch normalized by its own statistics would be blown up to noise and
    would not match the whole-image normalization of predict (measured: 0.917 vs 0.953
    held-out Dice on the fluorescence style before this was fixed)."""
    image = np.full((64, 64, 3), 20, np.uint8)
    image[:, 32:] = 200  # dark left half, bright right half
    arrays = DatasetArrays.of([image], [np.zeros((64, 64), np.uint8)])
    data = _patches(arrays, patch=(16, 16), normalization="zscore", length=64)
    whole = to_tensor(image, "zscore", 3)
    for k in range(64):
        patch = data[k]["image"]
        values = set(torch.round(patch, decimals=4).unique().tolist())
        assert values <= set(torch.round(whole, decimals=4).unique().tolist())
    dark = to_tensor(image[:16, :16], "zscore", 3, image_levels(image, Normalization("zscore"), 3))
    assert torch.allclose(dark, whole[:, :16, :16])
    assert float(dark.max()) < -0.9  # the dark half stays dark, not zero-mean noise


def test_dataset_normalization_uses_the_training_images_only() -> None:
    val_idx = split_indices(4, DataConfig(val_fraction=0.25)).val
    rng = np.random.default_rng(0)
    images = [rng.integers(40, 60, (8, 8, 3), dtype=np.uint8) for _ in range(4)]
    images[int(val_idx[0])] = np.full((8, 8, 3), 250, np.uint8)  # must not count
    arrays = DatasetArrays.of(images, [np.zeros((8, 8), np.uint8)] * 4)
    train = np.stack([im for i, im in enumerate(images) if i != val_idx[0]]) / 255.0
    cfg = RunConfig().replace(normalization="dataset", val_fraction=0.25)
    norm = normalization_for(cfg, arrays)
    assert norm.name == "dataset"
    assert norm.mean == pytest.approx(tuple(train.mean(axis=(0, 1, 2))), abs=1e-5)
    assert norm.std == pytest.approx(tuple(train.std(axis=(0, 1, 2))), abs=1e-5)
    assert Normalization.of_preprocessing(preprocessing_of(cfg, norm)) == norm
    with pytest.raises(ValueError, match="needs the dataset"):
        normalization_for(cfg)


def test_non_square_patches_keep_their_shape_under_every_augmentation() -> None:
    """rot90 would swap a non-square patch's sides (and break the batch): it is left out."""
    arrays = _arrays((90, 70), (60, 120))
    pipeline = train_pipeline(AugmentConfig(aug_strength=1.0), seed=0, square=False)
    assert not any(type(t).__name__ == "RandomRotate90" for t in pipeline.transforms)
    data = _patches(arrays, patch=(32, 64), pipeline=pipeline, length=40)
    assert {tuple(data[k]["image"].shape) for k in range(40)} == {(3, 32, 64)}


def _arrays(*shapes: tuple[int, int], fg: tuple[slice, slice] | None = None) -> DatasetArrays:
    """Read-only arrays (as from Ray's object store) of random images; masks empty but for
    ``fg`` in every image."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (*shape, 3), dtype=np.uint8) for shape in shapes]
    masks = [np.zeros(shape, np.uint8) for shape in shapes]
    if fg is not None:
        for mask in masks:
            mask[fg] = 1
    arrays = DatasetArrays.of(images, masks)
    for array in (arrays.pixels, arrays.mask_pixels):
        array.setflags(write=False)
    return arrays


def _patches(arrays: DatasetArrays, **kwargs: object) -> PatchDataset:
    options: dict = {
        "patch": (32, 32),
        "scale": 1.0,
        "fg_oversample": 0.0,
        "length": 64,
        "normalization": "unit",
        "in_channels": 3,
        "pipeline": None,
        "seed": 0,
    }
    indices = kwargs.pop("indices", range(len(arrays)))
    return PatchDataset(arrays, indices, **{**options, **kwargs})  # type: ignore[arg-type]


def test_patches_keep_the_data_scale_and_padding_gets_no_loss() -> None:
    arrays = _arrays((20, 30), (100, 80))
    data = _patches(arrays)
    assert len(data) == 64
    small = big = 0
    for k in range(64):
        item = data[k]
        assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (32, 32)
        ignored = int((item["mask"] == IGNORE).sum())
        if ignored:  # the 20x30 image, mirror-padded to 32x32: the padding is ignored
            assert ignored == 32 * 32 - 20 * 30
            assert (item["mask"][:20, :30] != IGNORE).all()
            small += 1
        else:  # a crop of the 100x80 image, at its own scale: its pixels exactly
            big += 1
            pixels = (item["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            whole = arrays.image(1)
            found = [
                (y, x)
                for y in range(100 - 31)
                for x in range(80 - 31)
                if np.array_equal(whole[y : y + 32, x : x + 32], pixels)
            ]
            assert len(found) == 1
    assert small and big


def test_a_scale_resamples_the_patch_region() -> None:
    arrays = _arrays((100, 100))
    item = _patches(arrays, scale=0.5)[0]
    assert item["image"].shape == (3, 32, 32)  # a 64x64 region, halved
    assert _patches(arrays, scale=0.5).region == (64, 64)


@pytest.mark.parametrize(
    ("share", "low", "high"), [(0.0, 0.0, 0.2), (0.33, 0.3, 0.55), (1.0, 1.0, 1.0)]
)
def test_fg_oversample_centres_that_share_of_patches_on_foreground(
    share: float, low: float, high: float
) -> None:
    """One 6x6 nucleus in a 200x200 image: a random patch holds it ~6% of the time."""
    arrays = _arrays((200, 200), fg=(slice(120, 126), slice(40, 46)))
    data = _patches(arrays, fg_oversample=share, length=200)
    hits = np.mean([bool((data[k]["mask"] == 1).any()) for k in range(200)])
    assert low <= hits <= high, hits


def test_patch_streams_differ_per_epoch_and_item_and_repeat_for_the_seed() -> None:
    arrays = _arrays((90, 70), (60, 120))
    pipeline = train_pipeline(AugmentConfig(aug_strength=1.0))

    def draw(epoch: int, item: int, seed: int = 0) -> torch.Tensor:
        data = _patches(arrays, pipeline=pipeline, seed=seed)
        data.set_epoch(epoch)
        return data[item]["image"]

    assert torch.equal(draw(1, 3), draw(1, 3))
    assert not torch.equal(draw(1, 3), draw(2, 3))
    assert not torch.equal(draw(1, 3), draw(1, 4))
    assert not torch.equal(draw(1, 3), draw(1, 3, seed=1))


def test_loader_workers_draw_new_patches_each_epoch_and_repeat_for_the_seed() -> None:
    """Workers are started anew each epoch; before, their augmentations repeated every
    epoch (forked from a generator that never advanced)."""
    arrays = _arrays((90, 70), (60, 120))

    def epochs() -> list[torch.Tensor]:
        data = _patches(arrays, length=8, pipeline=train_pipeline(AugmentConfig(aug_strength=1.0)))
        loader = DataLoader(data, batch_size=4, num_workers=2)
        out = []
        for epoch in (1, 2):
            set_epoch(loader, epoch)
            out.append(torch.cat([batch["image"] for batch in loader]))
        return out

    first, again = epochs(), epochs()
    assert not torch.equal(first[0], first[1])
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_resize_mode_squashes_each_image_to_the_square() -> None:
    arrays = _arrays((20, 30), (100, 80))
    data = ResizeDataset(
        arrays, [1, 0], size=48, normalization="unit", in_channels=3, pipeline=None, seed=0
    )
    assert len(data) == 2 and data[0]["image"].shape == (3, 48, 48)
    assert data[1]["mask"].shape == (48, 48)


def test_seeded_pipeline_is_reproducible() -> None:
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    cfg = AugmentConfig(aug_strength=1.0)
    first = [train_pipeline(cfg, seed=5)(image=image, mask=image[..., 0])["image"] for _ in "ab"]
    other = train_pipeline(cfg, seed=6)(image=image, mask=image[..., 0])["image"]
    assert np.array_equal(first[0], first[1])
    assert not np.array_equal(first[0], other)


def test_a_saved_preprocessing_reads_back_typed_as_it_was_written() -> None:
    """The model file keeps its preprocessing keys (other tools read them); the predictor
    reads them once into a typed Preprocessing with the same plan, normalization, channels,
    classes and threshold the run trained with."""
    from unet_search.train.sliding import Preprocessing, tiling_of

    cfg = RunConfig.from_dict({"patch_size": 64, "threshold": 0.4, "normalization": "zscore"})
    pre = Preprocessing.from_dict(preprocessing_of(cfg))
    assert pre.tiling == tiling_of(cfg)
    assert pre.normalization == Normalization.named("zscore")
    assert (pre.in_channels, pre.num_classes, pre.threshold) == (3, 1, 0.4)
    # A model saved before patch mode: resize mode at its image size, x/255, threshold 0.5.
    old = Preprocessing.from_dict({"image_size": 96, "normalization": "unit"}, num_classes=1)
    assert (old.tiling.input_mode, old.tiling.image_size, old.threshold) == ("resize", 96, 0.5)


def test_border_weights_are_cut_scaled_and_augmented_with_their_patch(tmp_path: Path) -> None:
    """``loss.border_weight``: each training item carries its weight map. Cut with the
    patch, from the labels within reach of it, it equals the whole image's map there; at a
    scale its sigma is the model's 5 px; augmented, it moves with the mask (with a vanishing
    border term the weights are exactly the mask's class weights, pixel for pixel)."""
    make_synthetic(tmp_path / "d", n=3, size=96, seed=2, style="hard")
    arrays = load_dataset(tmp_path / "d", DataConfig(val_fraction=0.34))
    classes = class_weights([arrays.mask(i) for i in range(3)], 2)
    border = BorderWeighting(10.0, classes)
    data = _patches(arrays, border=border, indices=[0])
    labels, mask = arrays.instances(0), arrays.mask(0)
    assert labels is not None
    whole = border.of(labels, mask, BORDER_SIGMA)
    for top, left in ((0, 0), (40, 7), (64, 64)):
        cut = data._weights(0, top, left)
        np.testing.assert_allclose(cut, whole[top : top + 32, left : left + 32], atol=1e-4)
    item = data[0]
    assert item["weights"].shape == (32, 32) and item["weights"].dtype == torch.float32
    assert float(whole.max()) > 10.0 * 0.8  # touching nuclei: the border term is high there
    halved = _patches(arrays, border=border, indices=[0], scale=0.5)
    np.testing.assert_allclose(
        halved._weights(0, 0, 0), border.of(labels, mask, 2 * BORDER_SIGMA)[:64, :64], atol=1e-4
    )
    pipeline = train_pipeline(AugmentConfig(aug_strength=1.0, elastic=True), seed=3)
    flat = BorderWeighting(1e-9, classes)
    moved = PatchDataset(
        arrays,
        [0, 1],
        patch=(32, 32),
        scale=1.0,
        fg_oversample=0.5,
        length=24,
        normalization="unit",
        in_channels=3,
        pipeline=pipeline,
        seed=0,
        border=flat,
    )
    for k in range(24):
        item = moved[k]
        valid = item["mask"] != IGNORE
        expected = torch.from_numpy(classes)[item["mask"][valid]]
        torch.testing.assert_close(item["weights"][valid], expected, atol=1e-6, rtol=0)
        assert (item["weights"][~valid] == 0).all()


def test_percentile_normalization_by_hand() -> None:
    """Each channel's 1st and 99.8th percentiles (numpy's linear rule) go to 0 and 1; a
    12-bit image and its 8-bit copy become the same input; a flat channel stays flat."""
    image = np.zeros((10, 10, 3), np.uint16)
    image[..., 0] = np.arange(100).reshape(10, 10) * 40  # 0..3960
    image[..., 1] = 1000  # flat
    image[..., 2] = np.arange(100).reshape(10, 10)[::-1] + 7
    x = to_tensor(image, "percentile", 3)
    low, high = np.percentile(image[..., 0], [1, 99.8])
    assert (low, high) == pytest.approx((0.99 * 40, 98.802 * 40))
    expected = (image[..., 0].astype(np.float64) - low) / (high - low)
    np.testing.assert_allclose(x[0].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(x[1], torch.zeros(10, 10))  # flat: 0, not noise
    assert float(x[2].min()) == pytest.approx((7 - 7.99) / (105.802 - 7.99))  # 7..106: narrow
    eight = np.round(image.astype(np.float64) * 255 / 3960).astype(np.uint8)[..., :1]
    sixteen = image[..., :1]
    a, b = to_tensor(eight, "percentile", 1), to_tensor(sixteen, "percentile", 1)
    assert torch.allclose(a, b, atol=0.02)  # only the 8-bit copy's rounding differs
    grey = to_tensor(image[..., :1], "percentile", 3)  # one channel fed to a colour model
    assert grey.shape == (3, 10, 10) and torch.equal(grey[0], grey[2])


def test_a_saved_percentile_normalization_reads_back() -> None:
    cfg = RunConfig().replace(normalization="percentile")
    pixels = np.zeros((4, 1), np.uint16)
    pre = preprocessing_of(cfg, pixels=pixels)
    assert pre["percentiles"] == [1.0, 99.8]
    assert (pre["image_dtype"], pre["image_channels"]) == ("uint16", 1)
    assert Normalization.of_preprocessing(pre) == Normalization("percentile")
    assert "percentiles" not in preprocessing_of(RunConfig())  # others have none


def test_pictures_show_deep_images_stretched() -> None:
    """What the sample pictures show: 8-bit as it is, a 16-bit grey image stretched from its
    1st to its 99.8th percentile into 8-bit RGB."""
    from unet_search.train.visualize import displayed

    eight = np.arange(60, dtype=np.uint8).reshape(6, 10)[..., None]
    assert np.array_equal(displayed(np.repeat(eight, 3, axis=2)), np.repeat(eight, 3, axis=2))
    shown = displayed(eight.astype(np.uint16) * 64)  # 0..3776 of 65535: dark as it was
    assert shown.shape == (6, 10, 3) and shown.dtype == np.uint8
    assert shown.min() == 0 and shown.max() == 255 and np.array_equal(shown[..., 0], shown[..., 2])
