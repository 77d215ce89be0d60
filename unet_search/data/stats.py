"""Exact pixel statistics of uint8 images, and the size an image takes at a scale: numpy
only, so the planner (and every command that reads a search space) does not import OpenCV
and albumentations with the training transforms (``unet-search report`` imported them
through the planner: 3.4 s of its 11 s). Torch still comes in through the space's model
check (``models.build``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["image_histograms", "moments", "scaled_size"]


def image_histograms(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(3, 256) counts of each channel's values and (766,) counts of the channel sum of an
    (H, W, 3) uint8 image: exact statistics of any image without a float copy of it (a
    4000 x 4000 image would take 384 MB as float64)."""
    image = np.asarray(image)
    channels = np.stack([np.bincount(image[..., c].ravel(), minlength=256) for c in range(3)])
    total = image[..., 0].astype(np.uint16) + image[..., 1] + image[..., 2]
    return channels, np.bincount(total.ravel(), minlength=766)


def moments(counts: np.ndarray, scale: float) -> tuple[float, float]:
    """Mean and std of values ``k * scale`` counted ``counts[k]`` times."""
    values = np.arange(len(counts), dtype=np.float64) * scale
    n = max(int(counts.sum()), 1)
    mean = float(counts @ values) / n
    return mean, math.sqrt(max(float(counts @ (values - mean) ** 2) / n, 0.0))


def scaled_size(size: Sequence[float], scale: float) -> tuple[int, int]:
    """An image of ``size`` (height, width) resampled by ``scale``."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
