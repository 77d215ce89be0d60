"""Objects from a network's output: the instances ``predict --output-kind instances`` returns
and the DSB2018 score and AP50 count (REFERENCE.md sections 3 and 6).

``semantic`` target: an instance is an 8-connected component of the mask, so touching
objects are one. ``boundary`` target (background / interior / boundary,
:mod:`unet_search.data.targets`): marker-controlled watershed, as the DSB2018 top solutions
decoded their mask + contour networks. The markers are the 8-connected components of
confident interior (interior probability above ``marker``); watershed on the interior's
improbability grows them over the foreground (1 - background probability above the model's
threshold), so two touching objects meet at their boundary band instead of merging. A
foreground region that no marker reaches (a small object whose interior is never
confident) is an object of its own, and objects under ``min_size`` pixels are dropped from
the instances (the mask keeps them: it is the thresholded foreground, as for every target).
``distance`` target (background and levels of the distance to an object's edge): the same
watershed, with the expected level (over the top one) in place of the interior probability:
seeds where the network puts pixels deep inside an object, grown down its levels.

No Ray and no MLflow here; scikit-image for the watershed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from skimage.segmentation import watershed

from unet_search.data.decode import EIGHT_CONNECTED
from unet_search.data.targets import DISTANCE_LEVELS, INTERIOR
from unet_search.train.metrics import instance_scores, logits_to_labels

__all__ = [
    "choose_decoding",
    "Decoding",
    "decode_instances",
    "foreground_labels",
    "foreground_logits",
    "MARKERS",
]

MARKERS = (0.3, 0.5, 0.7)  # the depths a seed may need (choose_decoding)
MIN_SIZE_SHARES = (0.0, 0.1, 0.25)  # of the median true object's area


@dataclass(frozen=True)
class Decoding:
    """How a model's output becomes instances (saved in its preprocessing as ``decoding``).

    ``marker``: the depth a seed pixel must exceed (the interior probability of the
    boundary target, the expected level over the top one of the distance target);
    ``min_size``: objects under this many pixels are no instances."""

    marker: float = 0.5
    min_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Decoding:
        raw = raw or {}
        return cls(float(raw.get("marker", 0.5)), int(raw.get("min_size", 0)))


def foreground_logits(logits: torch.Tensor, target: str) -> torch.Tensor:
    """(N, K, H, W) logits of a ``target`` network -> the task's logits: ``semantic``'s as
    they are; ``boundary``'s one foreground logit (N, 1, H, W), log(p_interior +
    p_boundary) - log(p_background), whose sigmoid is the probability of the object."""
    if target == "semantic":
        return logits
    logits = logits.float()
    return (torch.logsumexp(logits[:, 1:], dim=1) - logits[:, 0])[:, None]


def foreground_labels(logits: torch.Tensor, target: str, threshold: float) -> torch.Tensor:
    """(N, K, H, W) logits -> (N, H, W) int64 labels of the task, by the one thresholding
    (:func:`~unet_search.train.metrics.logits_to_labels`) of :func:`foreground_logits`:
    for ``boundary`` 1 where the object (interior or boundary) is more probable than
    ``threshold``."""
    return logits_to_labels(foreground_logits(logits, target), threshold)


def _drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Labels 1..n of the objects with at least ``min_size`` pixels (0 elsewhere)."""
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(min_size, 1)
    keep[0] = False
    relabel = np.zeros(len(sizes), np.int32)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1)
    return relabel[labels]


def _depth(logits: torch.Tensor, target: str) -> np.ndarray:
    """(H, W) in [0, 1], how deep inside an object each pixel is, from (K, H, W) logits:
    the interior's probability (``boundary``), or the expected distance level over the top
    one (``distance``; the background's level is 0)."""
    probs = torch.softmax(logits.float(), dim=0)
    if target == "boundary":
        return probs[INTERIOR].cpu().numpy()
    levels = torch.arange(probs.shape[0], dtype=probs.dtype, device=probs.device)
    return (probs * (levels / DISTANCE_LEVELS)[:, None, None]).sum(0).cpu().numpy()


def decode_instances(
    logits: torch.Tensor, target: str, threshold: float, decoding: Decoding | None = None
) -> np.ndarray:
    """(K, H, W) logits of one image -> (H, W) int32 instance labels, 0 the background
    (``decoding`` None: the defaults)."""
    decoding = decoding or Decoding()
    fg = foreground_labels(logits[None], target, threshold)[0].cpu().numpy() > 0
    if target == "semantic":
        labels = ndimage.label(fg, structure=EIGHT_CONNECTED)[0]
        return _drop_small(labels.astype(np.int32), decoding.min_size)
    interior = _depth(logits, target)
    markers, count = ndimage.label(fg & (interior > decoding.marker), structure=EIGHT_CONNECTED)
    labels = watershed(1.0 - interior, markers, mask=fg, connectivity=2).astype(np.int32)
    rest, _ = ndimage.label(fg & (labels == 0), structure=EIGHT_CONNECTED)
    labels[rest > 0] = rest[rest > 0] + count
    return _drop_small(labels, decoding.min_size)


def _candidates(target: str, truths: list[np.ndarray]) -> list[Decoding]:
    """Every :data:`MARKERS` (an instance target) with every smallest object of
    :data:`MIN_SIZE_SHARES` of the median true object, the default first."""
    counts = [np.bincount(t.ravel().astype(np.int64))[1:] for t in truths]
    areas = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    median = float(np.median(areas[areas > 0])) if (areas > 0).any() else 0.0
    sizes = sorted({round(share * median) for share in MIN_SIZE_SHARES})
    markers = MARKERS if target != "semantic" else (Decoding().marker,)
    candidates = [Decoding(marker, size) for marker in markers for size in sizes]
    return sorted(candidates, key=lambda d: d != Decoding())  # stable: the default first


def choose_decoding(
    logits: Iterable[torch.Tensor], truths: list[np.ndarray], target: str, threshold: float
) -> tuple[Decoding, dict[str, float]]:
    """The decoding whose instances score the best mean DSB2018 score on images whose
    (K, H, W) ``logits`` (one at a time: an iterable) and (H, W) true instance labels
    ``truths`` are given (a run's validation images, on its kept weights), among every
    :data:`MARKERS` (an instance target) with every smallest object of :data:`MIN_SIZE_SHARES`
    of the median true object; a tie keeps the default. Returns it and its mean
    ``dsb_score`` and ``ap50``."""
    candidates = _candidates(target, truths)
    sums = np.zeros((len(candidates), 2))
    for x, truth in zip(logits, truths, strict=True):
        for k, decoding in enumerate(candidates):
            sums[k] += instance_scores(decode_instances(x, target, threshold, decoding), truth)
    means = sums / max(len(truths), 1)
    best = int(np.argmax(means[:, 0]))  # the first of equals: the default wins ties
    return candidates[best], {"dsb_score": float(means[best, 0]), "ap50": float(means[best, 1])}
