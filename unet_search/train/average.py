"""An exponential moving average of a model's weights (``train.ema_horizon``, in epochs), in
plain PyTorch.

The averaged copy is what a run validates, keeps and saves (Polyak averaging; timm's
``ModelEmaV2``, YOLO's ``ModelEMA``): one optimizer step's noise and the batch-norm
statistics of the last few batches move a small data set's validation Dice from one epoch
to the next, and an average of the last steps' weights is meant to take that out. Measured
on two real sets it did not steady the planned default (bench/README.md, "12, the planned
default"), so it is off by default. The horizon is given in epochs, so that it means the
same whatever an epoch's number of steps (16 on a CPU search's patches, thousands on a GPU)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["ema_decay", "WeightAverage"]

WARM_UP = 10  # early steps average less: the decay is at most (1 + n) / (WARM_UP + n)


def ema_decay(epochs: float, steps_per_epoch: int, updates: int) -> float:
    """The weight of the average at update ``updates`` (1-based): ``1 - 1 / (epochs x
    steps_per_epoch)``, a horizon of ``epochs`` epochs, and at most ``(1 + n) / (10 + n)``,
    so that the first steps' random weights are soon forgotten (timm, YOLO)."""
    horizon = max(epochs * steps_per_epoch, 1.0)
    return min(1.0 - 1.0 / horizon, (1.0 + updates) / (WARM_UP + updates))


class WeightAverage:
    """The moving average of ``module``'s weights and buffers (batch-norm statistics
    included; integer buffers are copied), updated after each optimizer step.

    ``model`` is a copy of ``module`` (no DDP wrapper, never trained itself)."""

    def __init__(self, module: nn.Module, epochs: float, steps_per_epoch: int) -> None:
        self.model = copy.deepcopy(module)
        self.model.requires_grad_(False)
        self.epochs, self.steps_per_epoch, self.updates = epochs, steps_per_epoch, 0

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the average towards ``module``'s weights now (the same architecture)."""
        self.updates += 1
        weight = 1.0 - ema_decay(self.epochs, self.steps_per_epoch, self.updates)
        mine = self.model.state_dict()
        for key, value in module.state_dict().items():
            if mine[key].dtype.is_floating_point:
                mine[key].lerp_(value.detach(), weight)
            else:
                mine[key].copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
