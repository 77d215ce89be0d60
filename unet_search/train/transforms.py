"""albumentations pipelines, normalization and the torch Datasets of training items (patches at
the data's own scale, or whole images resized to one square)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from unet_search.core.config import RunConfig
from unet_search.core.sections import IGNORE, AugmentConfig
from unet_search.data.dataset import DatasetArrays
from unet_search.data.split import split_indices
from unet_search.data.stats import PERCENTILES, as_channels, intensity, value_range
from unet_search.data.targets import BORDER_SIGMA, BorderWeighting, border_reach

NEAREST = cv2.INTER_NEAREST

__all__ = [
    "image_levels",
    "item_rng",
    "Levels",
    "Normalization",
    "normalization_for",
    "NORMALIZATIONS",
    "PatchDataset",
    "PER_IMAGE",
    "resize_image",
    "ResizeDataset",
    "standardized",
    "to_tensor",
    "to_unit",
    "train_pipeline",
]

# name -> (mean, std) applied to pixel values scaled to [0, 1] by their type's full scale.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # x / 255, as the Keras seed does
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # pre-trained encoders
}
PER_IMAGE = ("zscore", "percentile")  # normalized by each image's own statistics
ZSCORE_MIN_STD = 1.0 / 255.0  # of a float image's [0, 1]; integer images: one level
STATS_PIXELS = 4_000_000  # at most this many training pixels give the dataset statistics


@dataclass(frozen=True)
class Normalization:
    """How an image's values become the model's input.

    ``unit`` (x / the full scale of the image's type: 255 for 8-bit, 65535 for 16-bit, 1 for
    float), ``imagenet`` and ``dataset`` (the training images' per-channel mean and std) then
    subtract ``mean`` and divide by ``std``; ``zscore`` uses each image's own per-channel
    mean and std (nnU-Net's rule for non-CT images), so brightness and contrast that vary
    between images do not reach the model; ``percentile`` maps each image's ``percentiles``
    (low, high) of each channel to 0 and 1 (Cellpose, CSBDeep: fluorescence of any bit depth).
    With one input channel the grey image (the channel mean) is normalized, by the first
    ``mean`` / ``std`` value."""

    name: str
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    percentiles: tuple[float, float] = PERCENTILES

    @classmethod
    def named(cls, name: str) -> Normalization:
        """A normalization that needs no data: ``unit``, ``imagenet``, ``zscore`` or
        ``percentile``."""
        if name in PER_IMAGE:
            return cls(name)
        mean, std = NORMALIZATIONS[name]
        return cls(name, mean, std)

    @classmethod
    def of_preprocessing(cls, pre: Mapping[str, Any]) -> Normalization:
        """From a saved model's ``preprocessing`` (older models: unit or imagenet, with or
        without their statistics written out)."""
        name = str(pre["normalization"])
        if name == "percentile":
            low, high = pre.get("percentiles", PERCENTILES)
            return cls(name, percentiles=(float(low), float(high)))
        if "mean" not in pre or name == "zscore":
            return cls.named(name)
        return cls(name, tuple(pre["mean"]), tuple(pre["std"]))


def normalization_for(cfg: RunConfig, arrays: DatasetArrays | None = None) -> Normalization:
    """``data.normalization`` of a run: ``default`` is ImageNet statistics for pre-trained
    encoders and x/255 for models trained from scratch; ``dataset`` measures the training
    split of ``arrays`` (deterministic: every rank and trial gets the same numbers)."""
    name = cfg.data.normalization
    if name == "default":
        return Normalization.named("imagenet" if cfg.model.encoder_weights else "unit")
    if name != "dataset":
        return Normalization.named(name)
    if arrays is None:
        raise ValueError("normalization: dataset needs the dataset's arrays")
    train_idx = split_indices(len(arrays), cfg.data).train
    mean, std = _dataset_statistics(arrays, train_idx, grey=cfg.model.in_channels == 1)
    return Normalization("dataset", mean, std)


def _dataset_statistics(
    arrays: DatasetArrays, indices: Sequence[int] | np.ndarray, grey: bool = False
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (of values over their type's full scale, in [0, 1]) over the
    images ``indices``, from an evenly strided subset of at most :data:`STATS_PIXELS` pixels;
    ``grey``: of the channel mean; always three values (a grey image's repeated)."""
    total = int(sum(int(arrays.sizes[i].prod()) for i in indices))
    stride = max(1, total // STATS_PIXELS)
    channels = arrays.pixels.shape[1]
    picked = np.concatenate(
        [arrays.image(int(i)).reshape(-1, channels)[::stride] for i in indices]
    ).astype(np.float64) / value_range(arrays.pixels.dtype)
    if grey or channels == 1:
        picked = np.repeat(picked.mean(axis=1, keepdims=True), 3, axis=1)
    mean = picked.mean(axis=0)
    std = np.maximum(picked.std(axis=0), ZSCORE_MIN_STD)
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


@dataclass(frozen=True)
class Levels:
    """What one image's values become, per input channel: ``(x - low) / span`` (its *unit*
    values, about 0..1, where augmentation works), then ``(unit - mean) / std``. ``unit``,
    ``imagenet`` and ``dataset``: low 0 and span the type's full scale; ``percentile``: low
    and span from the image's percentiles; ``zscore`` standardizes by the image's own mean
    and std (which the span cancels) over the full scale for 8-bit images, as before, and
    over its percentiles for deeper ones (a 12-bit image fills 1/16 of 65535)."""

    low: np.ndarray
    span: np.ndarray
    mean: np.ndarray
    std: np.ndarray


def image_levels(image: np.ndarray, normalization: Normalization, in_channels: int) -> Levels:
    """The :class:`Levels` of a whole (H, W, C) image for a model of ``in_channels``. A patch
    is normalized by its whole image's levels, as ``predict`` normalizes the whole image,
    never by its own (a background patch would be blown up to noise)."""
    norm, full = normalization, value_range(image.dtype)
    grey = in_channels == 1 and image.shape[-1] > 1
    if norm.name in PER_IMAGE:  # a flat image is not blown up to noise: one level at least
        step = 1.0 if image.dtype.kind == "u" else ZSCORE_MIN_STD
        stats = intensity(image, grey, norm.percentiles)
        low, span = stats.low, np.maximum(stats.high - stats.low, step)
        if norm.name == "zscore" and image.dtype == np.uint8:
            low, span = np.zeros_like(low), np.full_like(span, full)
        if norm.name == "zscore":
            mean = (stats.mean - low) / span
            std = np.maximum(stats.std, step) / span
        else:
            mean, std = np.zeros_like(low), np.ones_like(low)
    else:
        low, span = np.zeros(in_channels), np.full(in_channels, full)
        mean, std = np.array(norm.mean[:in_channels]), np.array(norm.std[:in_channels])
    if len(low) < in_channels:  # a grey image's one channel fed to a colour model
        low, span, mean, std = (np.repeat(v, in_channels) for v in (low, span, mean, std))
    return Levels(*(np.asarray(v, np.float32) for v in (low, span, mean, std)))


def to_unit(image: np.ndarray, levels: Levels, in_channels: int) -> np.ndarray:
    """(H, W, C) image -> (H, W, ``in_channels``) float32 unit values (:class:`Levels`)."""
    x = np.array(as_channels(image, in_channels), dtype=np.float32)  # a copy (the store's
    x -= levels.low  # arrays are read-only), then in place
    return np.divide(x, levels.span, out=x)


def standardized(unit: np.ndarray, levels: Levels) -> torch.Tensor:
    """(H, W, C) unit values -> (C, H, W) float32, the model's input."""
    x = (unit - levels.mean) / levels.std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32))


def train_pipeline(cfg: AugmentConfig, seed: int | None = None, square: bool = True) -> A.Compose:
    """Flips, rot90 (square items only: it would swap a non-square patch's height and width),
    affine, brightness/contrast (+ optional elastic), scaled by strength.

    Masks use nearest-neighbour interpolation and the same geometric transform as the image.
    ``seed`` makes the random draws reproducible (albumentations 2 has its own generator).
    """
    s = cfg.aug_strength
    if s == 0.0:
        return A.Compose([], seed=seed)
    reflect = cv2.BORDER_REFLECT_101
    steps: list[Any] = [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        *([A.RandomRotate90(p=0.5)] if square else []),
        A.Affine(
            scale=(1.0 - 0.25 * s, 1.0 + 0.25 * s),
            translate_percent=(-0.1 * s, 0.1 * s),
            rotate=(-45.0 * s, 45.0 * s),
            shear=(-10.0 * s, 10.0 * s),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=reflect,
            p=0.3 + 0.5 * s,
        ),
        A.RandomBrightnessContrast(
            brightness_limit=0.3 * s, contrast_limit=0.3 * s, p=0.3 + 0.5 * s
        ),
    ]
    if cfg.elastic:
        steps.append(
            A.ElasticTransform(
                alpha=30.0 * s,
                sigma=5.0,
                border_mode=reflect,
                mask_interpolation=cv2.INTER_NEAREST,
                p=0.3,
            )
        )
    return A.Compose(steps, seed=seed)


def to_tensor(
    image: np.ndarray,
    normalization: Normalization | str,
    in_channels: int,
    levels: Levels | None = None,
) -> torch.Tensor:
    """(H, W, C) image in its own values -> (``in_channels``, H, W) float32 normalized.
    ``levels``: the whole image's (a patch of it; default: ``image``'s own)."""
    norm = Normalization.named(normalization) if isinstance(normalization, str) else normalization
    levels = levels or image_levels(image, norm, in_channels)
    return standardized(to_unit(image, levels, in_channels), levels)


# The one resolution policy: how images and masks are resized and resampled by a scale, for
# the training patches, the resize-mode squares and what ``predict`` feeds the model
# (:func:`unet_search.train.sliding.model_input`). Padding is mirror padding for images
# (``BORDER_REFLECT_101`` here, ``mirror_pad`` in the models: the same reflection) and
# ``IGNORE`` for masks.


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) -> ``size`` (height, width), in the image's own type: area averaging when it
    shrinks both sides, else bilinear (the rule ``predict`` has always used, so older models
    predict as before; the training data are resized by it too)."""
    h, w = image.shape[:2]
    shrink = size[0] < h and size[1] < w
    out = cv2.resize(
        image, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )
    return out.reshape(*out.shape[:2], image.shape[2]) if image.ndim == 3 else out


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) class indices -> ``size`` (height, width), nearest neighbour."""
    return cv2.resize(mask, (size[1], size[0]), interpolation=NEAREST)


def _region_size(patch: tuple[int, int], scale: float) -> tuple[int, int]:
    """The region of an original image that becomes a ``patch`` at ``scale``."""
    return max(1, round(patch[0] / scale)), max(1, round(patch[1] / scale))


def item_rng(seed: int, epoch: int, item: int) -> np.random.Generator:
    """The random stream of one training item: differs per epoch and item (hence per rank and
    per loader worker, which draw different items) and repeats exactly for the same seed."""
    return np.random.default_rng([seed, epoch, item])


def _augment(
    pipeline: A.Compose | None,
    rng: np.random.Generator,
    image: np.ndarray,
    mask: np.ndarray,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The item through ``pipeline``; ``weights`` moved with the mask (the same draws with
    or without them)."""
    if pipeline is None or not len(pipeline.transforms):
        return image, mask, weights
    pipeline.set_random_seed(int(rng.integers(2**31)))
    if weights is None:
        out = pipeline(image=image, mask=mask)
        return out["image"], out["mask"], None
    out = pipeline(image=image, mask=mask, masks=[weights])
    return out["image"], out["mask"], out["masks"][0]


def _sample(
    unit: np.ndarray,
    mask: np.ndarray,
    levels: Levels,
    weights: np.ndarray | None = None,
) -> dict[str, torch.Tensor]:
    item = {
        "image": standardized(unit, levels),
        "mask": torch.from_numpy(np.array(mask, dtype=np.int64)),
    }
    if weights is not None:
        item["weights"] = torch.from_numpy(np.array(weights, dtype=np.float32))
    return item


class _EpochDataset(Dataset[dict[str, torch.Tensor]]):
    """Training items whose randomness follows (seed, epoch, item): see :func:`item_rng`."""

    def __init__(
        self,
        arrays: DatasetArrays,
        indices: Sequence[int] | np.ndarray,
        *,
        normalization: Normalization | str,
        in_channels: int,
        pipeline: A.Compose | None,
        seed: int,
        border: BorderWeighting | None = None,
    ) -> None:
        self.arrays, self.indices = arrays, [int(i) for i in indices]
        self.border = border  # per-pixel loss weights: needs the arrays' instance labels
        self.normalization = (
            Normalization.named(normalization) if isinstance(normalization, str) else normalization
        )
        self.in_channels = in_channels
        self.pipeline, self.seed, self.epoch = pipeline, seed, 0
        # each item by its whole image's levels, as predict normalizes the whole image
        self.levels = [self._levels(i) for i in self.indices]

    def _instances(self, i: int) -> np.ndarray:
        """Image ``i``'s instance labels, which border weights are made from."""
        labels = self.arrays.instances(i)
        assert labels is not None, "border weights need instance labels"
        return labels

    def set_epoch(self, epoch: int) -> None:
        """Called before each epoch (loader workers are started anew with the new value)."""
        self.epoch = epoch

    def _levels(self, i: int) -> Levels:
        """Image ``i``'s :class:`Levels` (of the whole image)."""
        return image_levels(self.arrays.image(i), self.normalization, self.in_channels)

    def _item(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        levels: Levels,
        rng: np.random.Generator,
        weights: np.ndarray | None,
    ) -> dict[str, torch.Tensor]:
        """An item's region in its own values -> unit values, augmented, standardized. An
        8-bit image over its full scale is augmented as it is (the same up to rounding, and
        uint8 is albumentations' fast path: ~1.3x the items a second of float32)."""
        if image.dtype == np.uint8 and not levels.low.any() and (levels.span == 255).all():
            image, mask, weights = _augment(self.pipeline, rng, image, mask, weights)
            return _sample(to_unit(image, levels, self.in_channels), mask, levels, weights)
        unit = to_unit(image, levels, self.in_channels)
        unit, mask, weights = _augment(self.pipeline, rng, unit, mask, weights)
        return _sample(unit, mask, levels, weights)


class ResizeDataset(_EpochDataset):
    """Resize mode (the Keras seed): each training image squashed to one square, augmented.
    One epoch is one pass over the training images."""

    def __init__(
        self,
        arrays: DatasetArrays,
        indices: Sequence[int] | np.ndarray,
        *,
        size: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(arrays, indices, **kwargs)
        self.size = size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        i, square = self.indices[item], (self.size, self.size)
        image = resize_image(self.arrays.image(i), square)
        mask = _resize_mask(self.arrays.mask(i), square)
        weights = None
        if self.border is not None:  # made at the square the model sees
            labels = _resize_mask(self._instances(i), square)
            weights = self.border.of(labels, mask, BORDER_SIGMA)
        rng = item_rng(self.seed, self.epoch, item)
        return self._item(image, mask, self.levels[item], rng, weights)


FG_POINTS = 4096  # foreground pixels remembered per image for fg_oversample


class PatchDataset(_EpochDataset):
    """Patch mode: ``length`` random patches of ``patch`` pixels at the data's own scale
    (images resampled by ``scale``) per epoch, a ``fg_oversample`` share of them centred on
    a foreground pixel (nnU-Net, MONAI's RandCropByPosNegLabel). An image smaller than a
    patch is mirror-padded; its padded pixels are :data:`IGNORE` in the mask (no loss)."""

    def __init__(
        self,
        arrays: DatasetArrays,
        indices: Sequence[int] | np.ndarray,
        *,
        patch: tuple[int, int],
        scale: float,
        fg_oversample: float,
        length: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(arrays, indices, **kwargs)
        self.patch, self.scale, self.fg_oversample, self.length = (
            patch,
            scale,
            fg_oversample,
            length,
        )
        # The region of the original image that becomes one patch.
        self.region = _region_size(patch, scale)
        self.foreground = [self._fg_points(i) for i in self.indices] if fg_oversample else []

    def _fg_points(self, i: int) -> np.ndarray:
        flat = np.flatnonzero(self.arrays.mask(i))
        if len(flat) > FG_POINTS:  # a fixed subset: the same for every epoch and rank
            flat = np.random.default_rng(i).choice(flat, FG_POINTS, replace=False)
        return flat

    def __len__(self) -> int:
        return self.length

    def _corner(self, rng: np.random.Generator, k: int, size: tuple[int, int]) -> tuple[int, int]:
        """Top-left of the region: around a foreground pixel, or anywhere; inside the image
        wherever it is large enough."""
        (h, w), (rh, rw) = size, self.region
        points = self.foreground[k] if self.foreground else None
        if points is not None and len(points) and rng.random() < self.fg_oversample:
            y, x = divmod(int(points[rng.integers(len(points))]), w)
            top, left = y - rh // 2, x - rw // 2
        else:
            top, left = (
                int(rng.integers(max(h - rh, 0) + 1)),
                int(rng.integers(max(w - rw, 0) + 1)),
            )
        return min(max(top, 0), max(h - rh, 0)), min(max(left, 0), max(w - rw, 0))

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        rng = item_rng(self.seed, self.epoch, item)
        k = int(rng.integers(len(self.indices)))
        i = self.indices[k]
        image, mask = self.arrays.image(i), self.arrays.mask(i)
        top, left = self._corner(rng, k, image.shape[:2])
        rh, rw = self.region
        weights = self._weights(i, top, left) if self.border is not None else None
        image, mask = (
            image[top : top + rh, left : left + rw],
            mask[top : top + rh, left : left + rw],
        )
        pad_h, pad_w = rh - image.shape[0], rw - image.shape[1]
        if pad_h or pad_w:  # an image smaller than the region
            image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_REFLECT_101).reshape(
                rh, rw, image.shape[2]
            )
            mask = cv2.copyMakeBorder(mask, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=IGNORE)
            if weights is not None:
                weights = cv2.copyMakeBorder(weights, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT)
        if self.region != self.patch:
            image = resize_image(image, self.patch)
            mask = _resize_mask(mask, self.patch)
            if weights is not None:  # smooth: bilinear
                weights = cv2.resize(weights, self.patch[::-1], interpolation=cv2.INTER_LINEAR)
        return self._item(image, mask, self.levels[k], rng, weights)

    def _weights(self, i: int, top: int, left: int) -> np.ndarray:
        """The border weights of image ``i``'s region at (top, left), before any padding,
        from its labels within reach of the region (objects beyond weigh nothing there);
        sigma in the original image's pixels (``BORDER_SIGMA`` of the model's over ``scale``)."""
        assert self.border is not None
        labels = self._instances(i)
        sigma = BORDER_SIGMA / self.scale
        reach = border_reach(sigma)
        (rh, rw), (t0, l0) = self.region, (max(top - reach, 0), max(left - reach, 0))
        window = (slice(t0, top + rh + reach), slice(l0, left + rw + reach))
        region = (slice(top - t0, top - t0 + rh), slice(left - l0, left - l0 + rw))
        weights = self.border.of(labels[window], self.arrays.mask(i)[window], sigma)
        return np.ascontiguousarray(weights[region])
