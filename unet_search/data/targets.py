"""What a network learns from the truth (``data.target``), made from the instance labels.

``semantic`` (the default): the mask itself, class indices (0/1 when binary). Touching objects
are one connected region, so they come out as one instance.

``boundary``: three classes, background 0 / interior 1 / boundary 2, for binary tasks with
instance truth. An object's pixels with a pixel of another label (the background or another
object) among their 8 neighbours are its boundary, so two touching objects are parted by a
band of boundary pixels two wide, and their interiors are apart: the three-class target of
Caicedo et al. 2019 (the DSB2018 evaluation) and of the DSB2018 top solutions' "mask +
contour" networks, decoded by marker-controlled watershed
(:mod:`unet_search.train.instances`). The mask it stands for is interior and boundary
together: the whole object, as for ``semantic``, so Dice, IoU and ``predict``'s masks mean
the same thing for every target.

``distance``: for binary tasks with instance truth, 0 background and 1..``DISTANCE_LEVELS``
inside an object: its distance to the object's edge over the object's largest, in equal
steps (1 at its edge, the top level at its centre). The mask and each object's normalized
distance transform, quantized as the Deep Watershed Transform's energy levels (Bai & Urtasun
2017) so that every target is a classification the same losses train; two touching objects
meet at their low levels, and watershed on the expected level parts them.

Numpy and SciPy only (the data layer).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np
from scipy import ndimage

from unet_search.core.sections import IGNORE
from unet_search.data.dataset import DatasetArrays

__all__ = [
    "BorderWeighting",
    "border_reach",
    "BORDER_SIGMA",
    "border_weights",
    "BOUNDARY",
    "boundary_map",
    "class_weights",
    "DISTANCE_LEVELS",
    "distance_map",
    "INTERIOR",
    "near_another_label",
    "target_arrays",
    "target_map",
]

INTERIOR, BOUNDARY = 1, 2  # the boundary target's classes (0 is the background)
DISTANCE_LEVELS = 4  # the distance target's levels inside an object (classes 1..4)


BORDER_SIGMA = 5.0  # px the model sees: the original UNet's sigma of its border weight map
BORDER_REACH = 4.0  # sigmas: beyond d1 + d2 of this the border term is < w0 * e^-8
CLASS_WEIGHT_LIMITS = (0.1, 10.0)  # a class of 0.1% of the pixels is not weighted 500 times


def near_another_label(labels: np.ndarray, size: int, background: bool) -> np.ndarray:
    """(H, W) bool: the object pixels of (H, W) int ``labels`` (0 the background) with a
    pixel of another label in the ``size`` x ``size`` square around them; the background
    counts as another label only with ``background``. The image's edge is no label."""
    labels = np.asarray(labels, np.int64)
    others = labels if background else np.where(labels > 0, labels, labels.max() + 1)
    high = ndimage.maximum_filter(labels, size=size, mode="nearest")
    low = ndimage.minimum_filter(others, size=size, mode="nearest")
    return (labels > 0) & ((high != labels) | (low != labels))


def boundary_map(instances: np.ndarray) -> np.ndarray:
    """The ``boundary`` target of (H, W) instance labels (0 background): (H, W) uint8,
    0 background, 1 interior, 2 boundary (an object pixel with another label among its 8
    neighbours; the image's edge is no boundary)."""
    out = (np.asarray(instances) > 0).astype(np.uint8)
    out[near_another_label(instances, 3, background=True)] = BOUNDARY
    return out


def _object_windows(labels: np.ndarray, margin: int) -> Iterator[tuple[int, tuple[slice, slice]]]:
    """(label, window) of each object of (H, W) ``labels``: its bounding box grown by
    ``margin`` pixels a side, within the image."""
    for k, box in enumerate(ndimage.find_objects(labels.astype(np.int64)), start=1):
        if box is not None:
            rows, cols = (
                slice(max(b.start - margin, 0), min(b.stop + margin, n))
                for b, n in zip(box, labels.shape, strict=True)
            )
            yield k, (rows, cols)


def distance_map(instances: np.ndarray, levels: int = DISTANCE_LEVELS) -> np.ndarray:
    """The ``distance`` target of (H, W) instance labels (0 background): (H, W) uint8, 0
    background, 1..``levels`` an object pixel's Euclidean distance to the nearest pixel of
    another label (the background or another object; the image's edge is none) over the
    largest in its object, in equal steps: 1 at the edge, ``levels`` at the centre."""
    labels = np.asarray(instances)
    out = np.zeros(labels.shape, np.uint8)
    for k, window in _object_windows(labels, 1):
        inside = labels[window] == k
        depth = ndimage.distance_transform_edt(inside)
        level = np.ceil(depth[inside] / depth.max() * levels).clip(1, levels)
        out[window][inside] = level.astype(np.uint8)
    return out


def target_map(target: str, mask: np.ndarray, instances: np.ndarray | None) -> np.ndarray:
    """(H, W) uint8 class map a network of ``target`` trains on, from an image's class mask
    and instance labels (None: a multi-class task, which has no instance target)."""
    if target == "semantic":
        return mask
    if instances is None:
        raise ValueError(f"target {target!r} needs instance labels (a binary task)")
    return boundary_map(instances) if target == "boundary" else distance_map(instances)


def target_arrays(arrays: DatasetArrays, target: str) -> DatasetArrays:
    """``arrays`` whose masks are ``target``'s class maps (the same images and instances):
    what training samples patches from. ``semantic`` returns ``arrays`` itself."""
    if target == "semantic":
        return arrays
    maps = [target_map(target, arrays.mask(i), arrays.instances(i)) for i in range(len(arrays))]
    return dataclasses.replace(arrays, mask_pixels=np.concatenate([m.ravel() for m in maps]))


def border_reach(sigma: float) -> int:
    """Pixels from an object beyond which its border term is negligible: ``BORDER_REACH``
    sigmas, rounded up."""
    return math.ceil(BORDER_REACH * sigma)


def border_weights(labels: np.ndarray, w0: float, sigma: float = BORDER_SIGMA) -> np.ndarray:
    """The original UNet's border term (Ronneberger et al. 2015, eq. 2) of (H, W) instance
    labels (0 the background): ``w0 * exp(-(d1 + d2)^2 / (2 sigma^2))``, float32, where d1 and
    d2 are each pixel's Euclidean distances to the nearest and the second-nearest object (0
    inside one). High in the narrow gaps between objects and where two objects touch, near
    0 around an object alone; the class-balancing ``w_c`` is added by the loader
    (:func:`class_weights`). Each object is measured only within ``BORDER_REACH`` sigmas of
    it, where the term is not negligible."""
    labels = np.asarray(labels)
    reach = border_reach(sigma)
    far = np.float32(2 * reach + 1)
    d1 = np.full(labels.shape, far, np.float32)
    d2 = np.full(labels.shape, far, np.float32)
    for k, window in _object_windows(labels, reach):
        dist = ndimage.distance_transform_edt(labels[window] != k).astype(np.float32)
        near1, near2 = d1[window], d2[window]
        near2[...] = np.minimum(near2, np.maximum(near1, dist))
        near1[...] = np.minimum(near1, dist)
    return (w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2))).astype(np.float32)


def class_weights(masks: list[np.ndarray], classes: int) -> np.ndarray:
    """(classes,) float32 weights that balance the classes of the (H, W) class maps
    ``masks`` (the original UNet's ``w_c``): each class present weighs ``1 / (classes present
    * its share of the pixels)``, so the weighted pixels average 1, clipped to
    ``CLASS_WEIGHT_LIMITS``; an absent class weighs 1."""
    counts = sum(
        (np.bincount(m.ravel(), minlength=256)[:classes] for m in masks),
        np.zeros(classes, np.int64),
    )
    present = counts > 0
    weights = np.ones(classes, np.float64)
    share = counts[present] / counts.sum()
    weights[present] = 1.0 / (present.sum() * share)
    return np.clip(weights, *CLASS_WEIGHT_LIMITS).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class BorderWeighting:
    """The original UNet's per-pixel loss weights of a training item (``loss.border_weight``
    > 0): the classes' balancing weights ``classes`` (:func:`class_weights`, of the
    training images) plus the border term of ``w0`` (:func:`border_weights`, sigma
    ``BORDER_SIGMA`` pixels of what the model sees), made from the instance labels of each
    item's region as it is cut."""

    w0: float
    classes: np.ndarray

    def of(self, labels: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
        """(H, W) float32 weights of ``labels`` / class map ``mask`` (IGNORE pixels: 0), with
        ``sigma`` in their own pixels."""
        weights = border_weights(labels, self.w0, sigma)
        valid = mask != IGNORE
        weights[valid] += self.classes[mask[valid]]
        weights[~valid] = 0.0
        return weights
