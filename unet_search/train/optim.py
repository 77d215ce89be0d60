"""Optimizers and per-step LR schedules: registry dicts plus their factories (STYLE rule 2).

Plain PyTorch; the engine builds a run's optimizer and schedule through these.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from unet_search.core.errors import ConfigError
from unet_search.core.sections import OptimConfig

__all__ = ["build_optimizer", "build_scheduler", "OPTIMIZERS", "SCHEDULES", "WARM_UP_FROM"]

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda params, c: torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay),
    "adamw": lambda params, c: torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay),
    "sgd": lambda params, c: torch.optim.SGD(
        params, lr=c.lr, momentum=0.9, nesterov=True, weight_decay=c.weight_decay
    ),
}
WARM_UP_FROM = 0.05  # a warm start's first LR, as a share of the peak
# Per-step LR schedules over a run's steps (a registry, as the optimizers): none, a cosine
# down to 1% of the peak, or one cycle.
SCHEDULES: dict[
    str,
    Callable[
        [torch.optim.Optimizer, OptimConfig, int], torch.optim.lr_scheduler.LRScheduler | None
    ],
] = {
    "none": lambda optimizer, cfg, steps: None,
    "cosine": lambda optimizer, cfg, steps: torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=steps, eta_min=cfg.lr * 0.01
    ),
    "onecycle": lambda optimizer, cfg, steps: torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=steps
    ),
}


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer a config names, over the trainable parameters."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(
            f"`optim.optimizer` must be one of {sorted(OPTIMIZERS)}, but got {cfg.optimizer!r}."
        )
    return OPTIMIZERS[cfg.optimizer]([p for p in model.parameters() if p.requires_grad], cfg)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int, warm_up_steps: int = 0
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-step LR schedule (:data:`SCHEDULES`) over ``total_steps``; with
    ``warm_up_steps`` (a run that starts from trained weights) the LR first ramps up
    linearly from 5% over those steps and the schedule spans the rest: a fresh optimizer at
    the peak LR would jolt the weights it was given (``onecycle`` warms up on its own)."""
    if cfg.lr_schedule not in SCHEDULES:
        raise ConfigError(
            f"`optim.lr_schedule` must be one of {list(SCHEDULES)}, but got {cfg.lr_schedule!r}."
        )
    total_steps = max(total_steps, 1)
    if cfg.lr_schedule == "onecycle" or not 0 < warm_up_steps < total_steps:
        return SCHEDULES[cfg.lr_schedule](optimizer, cfg, total_steps)
    main = SCHEDULES[cfg.lr_schedule](optimizer, cfg, total_steps - warm_up_steps)
    ramp = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=WARM_UP_FROM, end_factor=1.0, total_iters=warm_up_steps
    )
    if main is None:
        return ramp  # then constant at the peak
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, main], [warm_up_steps])
