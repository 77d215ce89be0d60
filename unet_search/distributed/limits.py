"""What a search's trial measures before its first epoch, on its untrained model
(``num_parameters``; ``inference_ms``, :mod:`unet_search.train.latency`), the limits it must
keep (``search.constraints``), and the one result of a trial over one: it trains nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from unet_search.core.config import RunConfig
from unet_search.core.metrics import kept
from unet_search.core.outcome import INFEASIBLE_KEY
from unet_search.models.build import count_parameters
from unet_search.train.engine import TrainingState, Validation, validate
from unet_search.train.latency import inference_ms

__all__ = ["infeasible_result", "Limits", "measure"]


@dataclass(frozen=True)
class Limits:
    """What a search's trial measures before its first epoch, on its untrained model:
    ``num_parameters`` and ``inference_ms`` (of an image of ``latency_image`` pixels,
    :mod:`unet_search.train.latency`); and the limits it must keep (``constraints``:
    (metric, max), ... of ``search.constraints``)."""

    latency_image: tuple[int, int]
    constraints: tuple[tuple[str, float], ...] = ()

    def broken(self, measured: dict[str, float]) -> list[str]:
        """The limits ``measured`` breaks, in words (``num_parameters 6.1e+06 > 5e+06``)."""
        return [
            f"{metric} {measured[metric]:.4g} > {limit:.4g}"
            for metric, limit in self.constraints
            if measured.get(metric, 0.0) > limit
        ]


def measure(
    limits: Limits, module: torch.nn.Module, cfg: RunConfig, device: torch.device, rank: int
) -> dict[str, float]:
    """``num_parameters`` and ``inference_ms`` of the untrained model, measured by rank 0
    (on its device, at its thread count) and given to every rank (a collective)."""
    found: list[Any] = [None]
    if rank == 0:
        ms = inference_ms(module, cfg, limits.latency_image, device)
        found = [{"num_parameters": float(count_parameters(module)), "inference_ms": ms}]
    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(found, src=0)
    module.train()
    return dict(found[0])


def infeasible_result(
    state: TrainingState,
    val: Validation,
    loss_fn: torch.nn.Module,
    cfg: RunConfig,
    device: torch.device,
    measured: dict[str, float],
) -> dict[str, float]:
    """The one result of a trial over a limit: its untrained model's validation numbers
    (what Optuna is told beside the limits), marked infeasible, epoch 0."""
    scores = validate(state.model, val, loss_fn, cfg, device, cfg.train.dsb_every > 0)
    return {**scores, **kept(scores), **measured, "epoch": 0.0, INFEASIBLE_KEY: 1.0}
