"""Loss registry: ``bce``, ``dice``, ``focal``, ``tversky`` and ``mix`` (Dice + BCE / CE);
the cross-entropy of ``bce`` and ``mix`` can be weighted per pixel (``loss.border_weight``).
Under an instance target (``boundary``, ``distance``: every class but 0 is part of an object)
the Dice and Tversky terms score the object region in place of the background
(:func:`loss_of`), so the mask is learned as a whole, as with ``semantic``.

Every loss takes logits (N, K, H, W) and integer targets (N, H, W); ``K = 1`` means binary
(sigmoid), ``K >= 2`` multi-class (softmax). Binary "bce" is cross-entropy in the K >= 2 case.

``segmentation_models_pytorch.losses`` is used where it is the same function: the binary
focal loss. The others differ, so they stay ours (``tests/train/test_losses.py`` measures
each difference): smp's Dice and Tversky give 0 for a class absent from the batch (no
gradient against false positives on a patch without nuclei; ours, soft over the batch with
+1 smoothing, equals smp's ``smooth=1`` whenever the class is present), smp's BCE averages
over ignored (padding) pixels too, and its multi-class focal loss is one-vs-rest sigmoids.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from unet_search.core.config import RunConfig
from unet_search.core.errors import ConfigError
from unet_search.core.sections import IGNORE, LossConfig

__all__ = ["LOSSES", "loss_of", "SegmentationLoss", "build_loss"]

EPS = 1.0


def _probs_and_onehot(
    logits: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K, H, W) probabilities and a float one-hot (or 0/1) target of the same shape."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits), target.unsqueeze(1).float()
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
    return torch.softmax(logits, dim=1), onehot


def _mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of per-pixel (N, 1 or K, H, W) values over the valid (N, 1, H, W) pixels."""
    weights = valid.expand_as(values)
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


def _cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of the valid pixels; with (N, 1, H, W) ``weights`` (the border
    weight map) their weighted mean, so the loss keeps its scale beside the Dice term."""
    if logits.shape[1] == 1:
        ce = F.binary_cross_entropy_with_logits(
            logits, target.unsqueeze(1).float(), reduction="none"
        )
    else:
        ce = F.cross_entropy(logits, target, reduction="none").unsqueeze(1)
    return _mean(ce, valid if weights is None else valid * weights)


def _tversky(
    logits: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    alpha: float,
    beta: float,
    regions: bool = False,
) -> torch.Tensor:
    """1 - (TP + 1) / (TP + alpha FP + beta FN + 1), soft, over the batch's valid pixels,
    averaged over channels; alpha = beta = 0.5 is the soft Dice loss. With ``regions``
    (an instance target: classes 1..K-1 are parts of the object) channel 0 is the object,
    1 - P(background) against the mask, instead of the background: the mask is scored as
    a whole, as nnU-Net's region-based training scores nested regions."""
    probs, truth = _probs_and_onehot(logits.float(), target)
    if regions and probs.shape[1] > 2:  # channel 0: the object, in place of the background
        probs = torch.cat([1 - probs[:, :1], probs[:, 1:]], dim=1)
        truth = torch.cat([1 - truth[:, :1], truth[:, 1:]], dim=1)
    probs, truth = probs * valid, truth * valid
    dims = (0, 2, 3)
    tp = (probs * truth).sum(dims)
    fp = (probs * (1 - truth)).sum(dims)
    fn = ((1 - probs) * truth).sum(dims)
    return (1 - (tp + EPS) / (tp + alpha * fp + beta * fn + EPS)).mean()


def _dice(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, regions: bool = False
) -> torch.Tensor:
    return _tversky(logits, target, valid, 0.5, 0.5, regions)


def _focal(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, gamma: float
) -> torch.Tensor:
    if logits.shape[1] == 1:  # smp's binary focal loss is this function: use it
        # Imported here: smp's package import pulls timm and torchvision (2.6 s), which a
        # worker that trains a from-scratch UNet with another loss never needs.
        from segmentation_models_pytorch.losses import FocalLoss

        ignored = torch.where(valid[:, 0] > 0, target, torch.full_like(target, IGNORE))
        return FocalLoss("binary", gamma=gamma, ignore_index=IGNORE)(logits, ignored)
    # smp's multi-class focal loss is one-vs-rest sigmoids: ours is the softmax's.
    ce = F.cross_entropy(logits, target, reduction="none").unsqueeze(1)
    p_true = torch.exp(-ce)
    return _mean((1 - p_true) ** gamma * ce, valid)


# (logits, target, valid, per-pixel weights or None, config, regions) -> loss; only the
# losses of WEIGHTED_LOSSES take weights (a config check: loss.border_weight); ``regions``:
# the Dice / Tversky terms score the object region, not the background (an instance target)
LossFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, LossConfig, bool],
    torch.Tensor,
]
LOSSES: dict[str, LossFn] = {
    "bce": lambda x, y, v, w, c, r: _cross_entropy(x, y, v, w),
    "dice": lambda x, y, v, w, c, r: _dice(x, y, v, r),
    "focal": lambda x, y, v, w, c, r: _focal(x, y, v, c.focal_gamma),
    "tversky": lambda x, y, v, w, c, r: _tversky(x, y, v, c.tversky_alpha, c.tversky_beta, r),
    "mix": lambda x, y, v, w, c, r: (
        c.dice_weight * _dice(x, y, v, r) + (1 - c.dice_weight) * _cross_entropy(x, y, v, w)
    ),
}


class SegmentationLoss(nn.Module):
    """A registry loss as a module: ``loss(logits (N,K,H,W), target (N,H,W) int[, weights
    (N,H,W)]) -> scalar``; ``weights``, the border weight map of training items, weigh the
    cross-entropy (validation's loss is unweighted: comparable across ``border_weight``).

    Target pixels equal to :data:`~unet_search.core.sections.IGNORE` (padding) count nowhere.
    ``regions``: the classes above 0 are parts of one object (``data.target`` ``boundary`` or
    ``distance``): the Dice / Tversky terms score the object (every class but 0) in place of
    the background."""

    def __init__(self, cfg: LossConfig, regions: bool = False) -> None:
        super().__init__()
        self.cfg, self.fn, self.regions = cfg, LOSSES[cfg.loss], regions

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        valid = target != IGNORE
        target = torch.where(valid, target, torch.zeros_like(target))
        w = None if weights is None else weights.unsqueeze(1).float()
        return self.fn(
            logits.float(), target, valid.unsqueeze(1).float(), w, self.cfg, self.regions
        )


def build_loss(cfg: LossConfig, regions: bool = False) -> SegmentationLoss:
    """The loss a config names (``regions``: see :class:`SegmentationLoss`); an unknown name
    lists the valid ones."""
    if cfg.loss not in LOSSES:
        raise ConfigError(f"`loss.loss` must be one of {sorted(LOSSES)}, but got {cfg.loss!r}.")
    return SegmentationLoss(cfg, regions)


def loss_of(cfg: RunConfig) -> SegmentationLoss:
    """The loss a run trains with: ``cfg.loss``, scoring the object region with the Dice /
    Tversky terms when ``data.target`` is an instance target (``boundary``, ``distance``)."""
    return build_loss(cfg.loss, regions=cfg.data.target != "semantic")
