"""Segmentation metrics: Dice and IoU per image, and the 2018 Data Science Bowl score.

Conventions: an image whose truth and prediction are both empty scores 1 (nothing to find,
nothing found). Multi-class Dice/IoU average the foreground classes present in the truth or
the prediction of that image.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from scipy import ndimage

from unet_search.data.dataset import DatasetArrays
from unet_search.data.decode import EIGHT_CONNECTED

__all__ = [
    "DSB_THRESHOLDS",
    "class_dice_sums",
    "otsu_dice",
    "otsu_mask",
    "score_masks",
    "Scorer",
    "dice_iou_per_image",
    "dsb_image_score",
    "instance_scores",
    "logits_to_labels",
    "soft_dice_per_image",
]

DSB_THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)  # 0.50, 0.55, ..., 0.95


def logits_to_labels(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(N, K, H, W) logits -> (N, H, W) int64 labels: sigmoid > threshold if K = 1, else
    argmax. The one thresholding of validation, the samples and ``predict``: sigmoid(x) > t
    is computed as x > logit(t), without a sigmoid over full-size maps (10-20% of
    ``predict``'s time on large images, bench 6)."""
    if logits.shape[1] == 1:
        cut = float(torch.logit(torch.tensor(float(threshold), dtype=torch.float64)))
        return (logits[:, 0] > cut).long()
    return logits.argmax(dim=1)


class Scorer:
    """The one scorer of whole-image label maps: validation every epoch, the held-out test
    split, the bench. It sums per-image Dice and IoU, and with ``with_dsb`` (binary tasks
    with instance truth) the DSB2018 score and AP50 of the instances, counting every image
    (DSB2018's convention: the mean over all images, an image with empty truth and empty
    prediction scoring 1). :attr:`sums` is a flat list (:data:`SIZE` of them), so ranks can
    add theirs before :meth:`means_of`."""

    SIZE = 5  # dice, iou, dsb score, ap50, images

    def __init__(self, num_classes: int, with_dsb: bool) -> None:
        self.num_classes, self.with_dsb = num_classes, with_dsb
        self.sums = [0.0] * self.SIZE

    def add(
        self,
        labels: torch.Tensor,
        truth: torch.Tensor,
        instances: np.ndarray | None,
        predicted: np.ndarray | None = None,
    ) -> None:
        """One image: ``labels`` and ``truth`` (1, H, W) int64, ``instances`` its (H, W)
        true instance labels (None: no instance scores for it, which ``with_dsb`` then must
        not ask), ``predicted`` the (H, W) predicted instances (None: the 8-connected
        components of ``labels``)."""
        dice, iou = dice_iou_per_image(labels, truth, self.num_classes)
        self.sums[0] += float(dice.sum())
        self.sums[1] += float(iou.sum())
        if self.with_dsb:
            if instances is None:
                raise ValueError("a DSB score needs the image's instance labels")
            if predicted is None:
                fg = (labels[0] > 0).cpu().numpy()
                predicted = ndimage.label(fg, structure=EIGHT_CONNECTED)[0]
            dsb, ap50 = instance_scores(predicted, instances)
            self.sums[2] += dsb
            self.sums[3] += ap50
        self.sums[4] += 1

    def means_of(self, sums: Sequence[float] | None = None) -> dict[str, float]:
        """``dice``, ``iou`` (and ``dsb_score``, ``ap50``) averaged over the images of
        ``sums`` (these sums added over ranks; default: this scorer's own)."""
        dice, iou, dsb, ap50, images = sums if sums is not None else self.sums
        n = max(images, 1)
        out = {"dice": dice / n, "iou": iou / n}
        if self.with_dsb:
            out |= {"dsb_score": dsb / n, "ap50": ap50 / n}
        return out


def _per_class(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) Dice and IoU of each scored class (binary: class 1; else 1..C-1), NaN where a
    class is in neither the truth nor the prediction of an image."""
    classes = [1] if num_classes <= 2 else list(range(1, num_classes))
    dices, ious = [], []
    for c in classes:
        p, t = (pred == c).flatten(1), (target == c).flatten(1)
        inter = (p & t).sum(1).double()
        total = p.sum(1).double() + t.sum(1).double()
        union = total - inter
        present = total > 0
        dices.append(torch.where(present, 2 * inter / total.clamp(min=1), torch.nan))
        ious.append(torch.where(present, inter / union.clamp(min=1), torch.nan))
    return torch.stack(dices, 1), torch.stack(ious, 1)


def dice_iou_per_image(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image Dice and IoU of label maps.

    Args:
        pred, target: (N, H, W) integer labels.
        num_classes: 1 (binary: class 1 is foreground) or C (classes 1..C-1 are scored).
    Returns:
        dice, iou: (N,) float64.
    """
    dice, iou = _per_class(pred, target, num_classes)
    empty = torch.isnan(dice).all(dim=1)
    dice = torch.where(
        empty,
        1.0,
        torch.nan_to_num(dice, nan=0.0).sum(1) / (~torch.isnan(dice)).sum(1).clamp(min=1),
    )
    iou = torch.where(
        empty, 1.0, torch.nan_to_num(iou, nan=0.0).sum(1) / (~torch.isnan(iou)).sum(1).clamp(min=1)
    )
    return dice, iou


def class_dice_sums(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int
) -> tuple[list[float], list[float]]:
    """Per foreground class of a multi-class task: the sum of its Dice over the images where
    it is in the truth or the prediction, and the number of those images (``val_dice_c<k>``
    is their ratio, summed over ranks first)."""
    dice, _ = _per_class(pred, target, num_classes)
    present = ~torch.isnan(dice)
    return torch.nan_to_num(dice, nan=0.0).sum(0).tolist(), present.sum(0).double().tolist()


def soft_dice_per_image(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image soft Dice of predicted probabilities (no threshold), smoothed by one pixel.

    Unlike the thresholded Dice it moves with every improvement of the probabilities, and it
    does not depend on the loss a trial trains with, so it ranks trials whose thresholded Dice
    is tied (early in training many predict no foreground at all and score exactly 0).

    Args:
        logits: (N, K, H, W); K = 1 is binary (sigmoid, label 1 is the foreground), else
            softmax over K classes and classes 1..K-1 are scored and averaged.
        target: (N, H, W) integer labels.
    Returns:
        (N,) float64 in (0, 1].
    """
    logits = logits.float()
    if logits.shape[1] == 1:  # binary: channel 0 is the foreground (label 1)
        channels = [(torch.sigmoid(logits[:, 0]), 1)]
    else:
        probs = torch.softmax(logits, dim=1)
        channels = [(probs[:, c], c) for c in range(1, logits.shape[1])]
    scores = []
    for p, c in channels:
        t = (target == c).flatten(1).to(p.dtype)
        p = p.flatten(1)
        inter, total = (p * t).sum(1).double(), (p.sum(1) + t.sum(1)).double()
        scores.append((2 * inter + 1) / (total + 1))
    return torch.stack(scores, 1).mean(1)


def instance_scores(pred_instances: np.ndarray, true_instances: np.ndarray) -> tuple[float, float]:
    """The DSB2018 score and AP50 of one image's instances.

    DSB2018: the mean over IoU thresholds 0.50..0.95 of TP / (TP + FP + FN); AP50: that ratio
    at IoU 0.5 alone (the "AP" StarDist and the DSB2018 papers report). An image with no true
    and no predicted instance scores 1 on both.

    Args:
        pred_instances, true_instances: (H, W) int labels, 0 = background.
    Returns:
        (dsb_score, ap50).
    """
    pred, n_pred = _consecutive(pred_instances)
    truth, n_true = _consecutive(true_instances)
    if n_true == 0 and n_pred == 0:
        return 1.0, 1.0
    if n_true == 0 or n_pred == 0:
        return 0.0, 0.0
    joint = np.bincount(
        (truth * (n_pred + 1) + pred).ravel(), minlength=(n_true + 1) * (n_pred + 1)
    ).reshape(n_true + 1, n_pred + 1)
    inter = joint[1:, 1:].astype(np.float64)
    union = joint.sum(1)[1:, None] + joint.sum(0)[None, 1:] - inter
    iou = inter / union
    # IoU > 0.5 makes every match unique, so counting pairs above t counts true positives.
    tp = np.array([(iou > t).sum() for t in DSB_THRESHOLDS], dtype=np.float64)
    ratios = tp / (n_true + n_pred - tp)
    return float(np.mean(ratios)), float(ratios[0])


def _consecutive(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels renumbered 1..n (0 stays the background, also where no pixel is 0) and n."""
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    if ids[0] != 0:  # no background pixel at all: shift so that 0 stays background
        inverse = inverse + 1
    return inverse, int(inverse.max())


def dsb_image_score(pred_foreground: np.ndarray, true_instances: np.ndarray) -> float:
    """DSB2018 score of one image whose predicted instances are the 8-connected components
    of ``pred_foreground`` ((H, W) bool); ``true_instances`` (H, W) int labels, 0 =
    background. See :func:`instance_scores`."""
    pred_labels, _ = ndimage.label(pred_foreground, structure=EIGHT_CONNECTED)
    return instance_scores(pred_labels, true_instances)[0]


def otsu_mask(image: np.ndarray) -> np.ndarray:
    """The plain-threshold baseline: Otsu's threshold of the grey image (the channel mean),
    per image; the foreground is the minority side of the threshold (bright nuclei on a dark
    background, or dark ones on a bright background). (H, W[, C]) image in its own values ->
    (H, W) uint8 0/1: 8-bit images over their 256 levels, deeper ones over 256 bins between
    their smallest and largest value (scikit-image's rule)."""
    grey = image if image.ndim == 2 else image[..., :3].mean(axis=2)
    if image.dtype == np.uint8:
        grey = np.round(grey).astype(np.uint8)
    else:
        low, high = float(grey.min(initial=0)), float(grey.max(initial=0))
        grey = np.round((grey - low) * (255.0 / max(high - low, 1e-12))).astype(np.uint8)
    _, above = cv2.threshold(grey, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return above if above.mean() <= 0.5 else (1 - above).astype(np.uint8)


def score_masks(
    masks: Sequence[np.ndarray],
    arrays: DatasetArrays,
    indices: Sequence[int],
    num_classes: int,
    instances: Sequence[np.ndarray] | None = None,
) -> dict[str, float]:
    """Mean per-image ``dice`` and ``iou`` of predicted (H, W) class-index ``masks`` against
    images ``indices`` of ``arrays`` (at their original sizes), and ``dsb_score`` and
    ``ap50`` where the dataset has instance truth (binary tasks) of the predicted
    ``instances`` (None: the masks' 8-connected components): the :class:`Scorer` validation
    uses."""
    scorer = Scorer(num_classes, arrays.instance_pixels is not None)
    predicted = instances if instances is not None else [None] * len(masks)
    for mask, objects, i in zip(masks, predicted, indices, strict=True):
        pred = torch.from_numpy(np.asarray(mask, np.int64)[None])
        truth = torch.from_numpy(arrays.mask(int(i)).astype(np.int64)[None])
        scorer.add(pred, truth, arrays.instances(int(i)), objects)
    return scorer.means_of()


def otsu_dice(arrays: DatasetArrays, indices: Sequence[int]) -> float:
    """Mean Dice of the plain Otsu threshold (:func:`otsu_mask`) on images ``indices``."""
    masks = [otsu_mask(arrays.image(int(i))) for i in indices]
    return score_masks(masks, arrays, indices, 1)["dice"]
