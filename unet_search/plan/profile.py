"""The dataset's profile, what the planner reads (:mod:`unet_search.plan.planner`; nnU-Net
calls it the dataset fingerprint, a word that here means the data's identity hash): image and
object sizes, foreground share and intensity statistics, the test images left out."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from unet_search.core.sections import DataConfig
from unet_search.data.dataset import DatasetArrays
from unet_search.data.decode import EIGHT_CONNECTED
from unet_search.data.split import split_indices
from unet_search.data.stats import intensity, value_range
from unet_search.data.targets import near_another_label

__all__ = ["TOUCH_PX", "touching_objects", "DataProfile", "profile_data", "STATS_IMAGES"]

STATS_IMAGES = 200  # object sizes and intensities from at most this many images


@dataclass(frozen=True)
class DataProfile:
    """The dataset's profile as the planner reads it."""

    count: int
    median_size: tuple[int, int]  # (height, width), per axis
    min_size: tuple[int, int]
    object_px: float | None  # median equivalent diameter of the objects; None: no objects
    objects: int
    foreground: float  # share of foreground pixels
    mean: tuple[float, ...]  # per channel, pixel values over their type's full scale
    std: tuple[float, ...]
    mean_spread: float  # std of per-image mean brightness / dataset std
    std_spread: float  # std of per-image contrast (std) / dataset std
    held_out: int = 0  # test images left out of the statistics
    # share of the objects within TOUCH_PX of another (None: no instance truth, multi-class)
    touching: float | None = None
    pixels: str = "uint8"  # the images' type: uint8, uint16 or float32
    # the images' median 1st and 99.8th percentiles, in their own values
    levels: tuple[float, float] = (0.0, 255.0)

    def lines(self) -> list[str]:
        obj = "none" if self.object_px is None else f"{self.object_px:.1f} px"
        held = f"; {self.held_out} test images not read" if self.held_out else ""
        return [
            f"images             {self.count} (median {self.median_size[0]}x"
            f"{self.median_size[1]}, smallest {self.min_size[0]}x{self.min_size[1]}{held})",
            f"objects            {self.objects} in the images read, median diameter {obj}",
            f"foreground         {self.foreground:.3f} of pixels",
            "intensity          mean "
            + " ".join(f"{v:.3f}" for v in self.mean)
            + ", std "
            + " ".join(f"{v:.3f}" for v in self.std)
            + f" (per-image spread: means {self.mean_spread:.2f}, stds {self.std_spread:.2f})",
            f"pixels             {self.pixels}, median 1st..99.8th percentile "
            f"{self.levels[0]:g}..{self.levels[1]:g}",
            "touching           "
            + (
                "no instances (multi-class)"
                if self.touching is None
                else f"{self.touching:.3f} of the objects at most {TOUCH_PX} px from another"
            ),
        ]


# Objects at most this many background pixels apart count as touching (cells behind a thin
# membrane too)
TOUCH_PX = 2


def touching_objects(labels: np.ndarray) -> tuple[int, int]:
    """(objects at most :data:`TOUCH_PX` px from another object, objects) of (H, W) instance
    labels: an object one of whose pixels has another object's pixel in the square of
    2 (TOUCH_PX + 1) + 1 pixels around it (a gap of TOUCH_PX pixels or fewer)."""
    labels = np.asarray(labels, np.int64)
    objects = np.unique(labels[labels > 0])
    if len(objects) < 2:
        return 0, len(objects)
    near = near_another_label(labels, 2 * (TOUCH_PX + 1) + 1, background=False)
    return len(np.unique(labels[near])), len(objects)


def _picked(pool: np.ndarray) -> list[int]:
    """At most :data:`STATS_IMAGES` images of ``pool``, evenly spread (deterministic)."""
    if len(pool) <= STATS_IMAGES:
        return [int(i) for i in pool]
    return sorted({int(pool[int(k)]) for k in np.linspace(0, len(pool) - 1, STATS_IMAGES)})


def profile_data(arrays: DatasetArrays, data: DataConfig | None = None) -> DataProfile:
    """Image sizes (all images), object sizes (instance labels, or the mask's connected
    components), foreground share and intensity statistics (of at most 200 images). With
    ``data``, its split's test images are left out: a plan is a choice, and no choice sees
    the test images."""
    pool = np.arange(len(arrays))
    if data is not None:
        split = split_indices(len(arrays), data)
        pool = np.sort(np.concatenate([split.train, split.val]))
    sizes = arrays.sizes[pool]
    picks = _picked(pool)
    diameters: list[np.ndarray] = []
    means, stds, fg, pixels = [], [], 0, 0
    channels = arrays.pixels.shape[1]
    sums, squares = np.zeros(channels), np.zeros(channels)
    lows, highs = [], []
    full = value_range(arrays.pixels.dtype)
    touching = [0, 0]  # objects near another, objects (instance truth only)
    for i in picks:
        mask, labels = arrays.mask(i), arrays.instances(i)
        if labels is None:
            labels = ndimage.label(mask > 0, structure=EIGHT_CONNECTED)[0]
        else:
            touching = [a + b for a, b in zip(touching, touching_objects(labels), strict=True)]
        areas = np.bincount(labels.ravel())[1:]
        areas = areas[areas > 0]
        diameters.append(2.0 * np.sqrt(areas / math.pi))
        fg += int((mask > 0).sum())
        pixels += mask.size
        image = arrays.image(i)
        each, grey = intensity(image), intensity(image, grey=True)  # exact, no float copy
        sums += each.mean / full * mask.size
        squares += ((each.std / full) ** 2 + (each.mean / full) ** 2) * mask.size
        means.append(float(each.mean.mean()) / full)
        stds.append(float(grey.std[0]) / full)
        lows.append(float(grey.low[0]))
        highs.append(float(grey.high[0]))
    mean = sums / pixels
    std = np.sqrt(np.maximum(squares / pixels - mean**2, 0.0))
    scale = max(float(std.mean()), 1e-6)
    all_d = np.concatenate(diameters) if diameters else np.empty(0)
    return DataProfile(
        count=len(pool),
        median_size=(int(np.median(sizes[:, 0])), int(np.median(sizes[:, 1]))),
        min_size=(int(sizes[:, 0].min()), int(sizes[:, 1].min())),
        object_px=round(float(np.median(all_d)), 2) if len(all_d) else None,
        objects=len(all_d),
        foreground=round(fg / max(pixels, 1), 4),
        mean=tuple(round(float(v), 4) for v in mean),
        std=tuple(round(float(v), 4) for v in std),
        mean_spread=round(float(np.std(means)) / scale, 3),
        std_spread=round(float(np.std(stds)) / scale, 3),
        held_out=len(arrays) - len(pool),
        touching=(
            round(touching[0] / max(touching[1], 1), 4)
            if arrays.instance_pixels is not None
            else None
        ),
        pixels=arrays.pixels.dtype.name,
        levels=(round(float(np.median(lows)), 4), round(float(np.median(highs)), 4)),
    )
