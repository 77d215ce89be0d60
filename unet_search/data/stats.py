"""Exact pixel statistics of images in their own values (8-bit, 16-bit, float), and the size
an image takes at a scale: numpy only, so the planner (and every command that reads a search
space) does not import OpenCV and albumentations with the training transforms (``unet-search
report`` imported them through the planner: 3.4 s of its 11 s). Torch still comes in through
the space's model check (``models.build``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Intensity",
    "PERCENTILES",
    "as_channels",
    "intensity",
    "moments",
    "percentile_of_counts",
    "scaled_size",
    "value_range",
]

# The low and high percentiles ``percentile`` normalization maps to 0 and 1 (CSBDeep's and
# StarDist's 1 and 99.8; Cellpose uses 1 and 99)
PERCENTILES = (1.0, 99.8)


def value_range(dtype: np.dtype | type) -> float:
    """The full scale of an image type's values: 255 (uint8), 65535 (uint16), 1.0 (float)."""
    kind = np.dtype(dtype)
    return float(np.iinfo(kind).max) if kind.kind == "u" else 1.0


def as_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """(H, W, C) -> (H, W, ``channels``): the channel mean (float32) when a colour image meets a
    one-channel model, the grey channel repeated when a grey image meets a colour one."""
    have = image.shape[-1]
    if have == channels:
        return image
    if channels == 1:
        return image.mean(axis=-1, keepdims=True, dtype=np.float32)
    if have == 1:
        return np.repeat(image, channels, axis=-1)
    raise ValueError(f"an image of {have} channels cannot feed {channels}")


@dataclass(frozen=True)
class Intensity:
    """Per-channel mean, std and low / high percentile of an image, in its own values."""

    mean: np.ndarray
    std: np.ndarray
    low: np.ndarray
    high: np.ndarray


def moments(counts: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """Mean and std of ``values`` counted ``counts[k]`` times."""
    n = max(int(counts.sum()), 1)
    mean = float(counts @ values) / n
    return mean, math.sqrt(max(float(counts @ (values - mean) ** 2) / n, 0.0))


def percentile_of_counts(counts: np.ndarray, values: np.ndarray, q: float) -> float:
    """The ``q``-th percentile of ``values`` counted ``counts[k]`` times, interpolated as
    ``numpy.percentile`` does (linearly between the two nearest ranks)."""
    n = int(counts.sum())
    if n == 0:
        return 0.0
    cumulative = np.cumsum(counts)
    rank = q / 100.0 * (n - 1)
    below = math.floor(rank)
    first, second = np.searchsorted(cumulative, [below, min(below + 1, n - 1)], side="right")
    return float(values[first] + (rank - below) * (values[second] - values[first]))


def _counts(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values (V,), counts (C, V)) of an 8- or 16-bit image's channels: exact statistics of
    any image without a float copy of it (a 4000 x 4000 image would take 384 MB as float64)."""
    flat = image.reshape(-1, image.shape[-1])
    n = int(flat.max(initial=0)) + 1
    counts = np.stack([np.bincount(flat[:, c], minlength=n) for c in range(flat.shape[1])])
    return np.arange(n, dtype=np.float64), counts


def intensity(
    image: np.ndarray, grey: bool = False, q: Sequence[float] = PERCENTILES
) -> Intensity:
    """The :class:`Intensity` of an (H, W, C) image (``grey``: of its channel mean, one
    channel), exact: integer images by their value counts (the channel mean by the channel
    sum's), float images directly."""
    if grey and image.shape[-1] > 1 and image.dtype.kind == "u":
        total = image.sum(axis=-1, dtype=np.uint32)[..., None]
        values, counts = _counts(total)
        values = values / image.shape[-1]
    elif image.dtype.kind == "u":
        values, counts = _counts(image)
    else:
        flat = as_channels(image, 1) if grey else image
        flat = flat.reshape(-1, flat.shape[-1]).astype(np.float64)
        low, high = np.percentile(flat, list(q), axis=0) if len(flat) else np.zeros((2, 1))
        return Intensity(flat.mean(axis=0), flat.std(axis=0), low, high)
    stats = [moments(c, values) for c in counts]
    return Intensity(
        np.array([m for m, _ in stats]),
        np.array([s for _, s in stats]),
        np.array([percentile_of_counts(c, values, q[0]) for c in counts]),
        np.array([percentile_of_counts(c, values, q[1]) for c in counts]),
    )


def scaled_size(size: Sequence[float], scale: float) -> tuple[int, int]:
    """An image of ``size`` (height, width) resampled by ``scale``."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
