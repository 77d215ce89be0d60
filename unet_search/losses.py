"""Loss registry: ``bce``, ``dice``, ``focal``, ``tversky`` and ``mix`` (Dice + BCE / CE).

Every loss takes logits (N, K, H, W) and integer targets (N, H, W); ``K = 1`` means binary
(sigmoid), ``K >= 2`` multi-class (softmax). Binary "bce" is cross-entropy in the K >= 2 case.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from unet_search.config import ConfigError, LossConfig

__all__ = ["LOSSES", "SegmentationLoss", "build_loss"]

EPS = 1.0


def _probs_and_onehot(
    logits: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K, H, W) probabilities and a float one-hot (or 0/1) target of the same shape."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits), target.unsqueeze(1).float()
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
    return torch.softmax(logits, dim=1), onehot


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits, target.unsqueeze(1).float())
    return F.cross_entropy(logits, target)


def _tversky(
    logits: torch.Tensor, target: torch.Tensor, alpha: float, beta: float
) -> torch.Tensor:
    """1 - (TP + 1) / (TP + alpha FP + beta FN + 1), soft, over the batch, averaged over
    channels; alpha = beta = 0.5 is the soft Dice loss."""
    probs, truth = _probs_and_onehot(logits.float(), target)
    dims = (0, 2, 3)
    tp = (probs * truth).sum(dims)
    fp = (probs * (1 - truth)).sum(dims)
    fn = ((1 - probs) * truth).sum(dims)
    return (1 - (tp + EPS) / (tp + alpha * fp + beta * fn + EPS)).mean()


def _dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return _tversky(logits, target, 0.5, 0.5)


def _focal(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    if logits.shape[1] == 1:
        truth = target.unsqueeze(1).float()
        ce = F.binary_cross_entropy_with_logits(logits, truth, reduction="none")
    else:
        ce = F.cross_entropy(logits, target, reduction="none")
    p_true = torch.exp(-ce)
    return ((1 - p_true) ** gamma * ce).mean()


LossFn = Callable[[torch.Tensor, torch.Tensor, LossConfig], torch.Tensor]
LOSSES: dict[str, LossFn] = {
    "bce": lambda x, y, c: _cross_entropy(x, y),
    "dice": lambda x, y, c: _dice(x, y),
    "focal": lambda x, y, c: _focal(x, y, c.focal_gamma),
    "tversky": lambda x, y, c: _tversky(x, y, c.tversky_alpha, c.tversky_beta),
    "mix": lambda x, y, c: (
        c.dice_weight * _dice(x, y) + (1 - c.dice_weight) * _cross_entropy(x, y)
    ),
}


class SegmentationLoss(nn.Module):
    """A registry loss as a module: ``loss(logits (N,K,H,W), target (N,H,W) int) -> scalar``."""

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        self.cfg, self.fn = cfg, LOSSES[cfg.loss]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.fn(logits.float(), target, self.cfg)


def build_loss(cfg: LossConfig) -> SegmentationLoss:
    """The loss a config names; an unknown name lists the valid ones."""
    if cfg.loss not in LOSSES:
        raise ConfigError(f"`loss.loss` must be one of {sorted(LOSSES)}, but got {cfg.loss!r}.")
    return SegmentationLoss(cfg)
