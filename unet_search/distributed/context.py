"""What a worker's recipe is given and where it runs: the :class:`RecipeInput` built once by
whoever starts the run, the :class:`WorkerContext` of a Ray Train worker or a Tune trial
process, and the :class:`Worker` the recipe sets up from both before its first epoch."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from unet_search.core.config import RunConfig
from unet_search.data.dataset import DatasetArrays
from unet_search.distributed.limits import Limits
from unet_search.tracking.outage import DEFAULT_PATIENCE_S, Outbox
from unet_search.train.engine import TrainingState, Validation

__all__ = ["RECIPE_KEY", "RecipeInput", "Worker", "WorkerContext"]


RECIPE_KEY = "recipe"  # a TorchTrainer's train_loop_config: {RECIPE_KEY: RecipeInput}


@dataclass(frozen=True)
class RecipeInput:
    """What the training recipe of every worker gets, built once by whoever starts the run
    (a search's trial, in process or through a TorchTrainer, or ``unet-search train``).

    ``dataset``: the ObjectRef of the DatasetArrays (or the arrays); ``fault``: a
    fault-injection spec (:func:`~unet_search.distributed.faults.maybe_fail`);
    ``tracking_patience_s``: how long an unreachable tracking server is waited for;
    ``init_run`` / ``init_checkpoint``: a run, or a trial checkpoint's path or URI, whose kept
    weights training starts from (a search's final fit); ``init_optimizer``: from the
    checkpoint's last weights and its optimizer instead, going on where that run left off
    (``final_fit_start: continue``); ``limits``: what a search's trial measures and must keep
    before it trains."""

    run_config: RunConfig
    dataset: Any
    tracking_uri: str
    run_id: str
    fault: str | None = None
    tracking_patience_s: float = DEFAULT_PATIENCE_S
    init_run: str | None = None
    init_checkpoint: str | None = None
    init_optimizer: bool = False
    limits: Limits | None = None

    @property
    def warm(self) -> bool:
        """Whether training starts from given weights (a final fit), not from scratch."""
        return bool(self.init_checkpoint or self.init_run)


@dataclass(frozen=True)
class WorkerContext:
    """Where the recipe runs: a Ray Train worker (DDP) or a Tune trial process (one worker).

    ``report(metrics, checkpoint_dir)`` hands an epoch to Ray; ``checkpoint_dir()`` returns
    the directory of the checkpoint to resume from, if any (a context manager)."""

    rank: int
    world: int
    device: torch.device
    report: Callable[[dict[str, float], str | None], None]
    checkpoint_dir: Callable[[], contextlib.AbstractContextManager[str | None]]
    prepare_model: Callable[[torch.nn.Module], torch.nn.Module]
    prepare_loader: Callable[[DataLoader[Any]], DataLoader[Any]]


@dataclass
class Worker:
    """A worker once set up, before its first epoch: its recipe and context, the data and
    loaders, the training state (restored from a checkpoint, if the run restarted), the loss,
    rank 0's outbox to MLflow, and what the trial measured before training (empty when it
    measures nothing)."""

    recipe: RecipeInput
    ctx: WorkerContext
    arrays: DatasetArrays
    train_loader: DataLoader[Any]
    val: Validation
    state: TrainingState
    loss_fn: torch.nn.Module
    outbox: Outbox
    measured: dict[str, float]

    @property
    def cfg(self) -> RunConfig:
        return self.recipe.run_config

    @property
    def lead(self) -> bool:
        """Rank 0: the rank that logs to MLflow and writes the checkpoints."""
        return self.ctx.rank == 0
