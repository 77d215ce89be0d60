"""Training engine in plain PyTorch: epochs, evaluation, early stopping, optimizer, schedule.

No Ray and no MLflow here: the Ray worker (and a unit test) call :func:`fit` with a
``report`` callback that receives each epoch's metrics and the training state.
When ``torch.distributed`` is initialized (DDP), losses and metrics are summed over ranks.
"""

from __future__ import annotations

import contextlib
import copy
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from unet_search.config import ConfigError, OptimConfig, RunConfig, TrainConfig
from unet_search.metrics import (
    dice_iou_per_image,
    dsb_image_score,
    logits_to_labels,
    soft_dice_per_image,
)

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "EarlyStopping",
    "TrainingState",
    "build_optimizer",
    "build_scheduler",
    "evaluate",
    "fit",
    "predict_labels",
    "seed_everything",
    "train_one_epoch",
]

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda params, c: torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay),
    "adamw": lambda params, c: torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay),
    "sgd": lambda params, c: torch.optim.SGD(
        params, lr=c.lr, momentum=0.9, nesterov=True, weight_decay=c.weight_decay
    ),
}
SCHEDULES = ("none", "cosine", "onecycle")
MAXIMIZE = {
    "val_dice": True,
    "val_iou": True,
    "val_dsb_score": True,
    "val_loss": False,
    "val_soft_dice": True,
}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer a config names, over the trainable parameters."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(
            f"`optim.optimizer` must be one of {sorted(OPTIMIZERS)}, but got {cfg.optimizer!r}."
        )
    return OPTIMIZERS[cfg.optimizer]([p for p in model.parameters() if p.requires_grad], cfg)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-step LR schedule (``none`` | ``cosine`` | ``onecycle``) over ``total_steps``."""
    if cfg.lr_schedule not in SCHEDULES:
        raise ConfigError(
            f"`optim.lr_schedule` must be one of {list(SCHEDULES)}, but got {cfg.lr_schedule!r}."
        )
    steps = max(total_steps, 1)
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=steps, eta_min=cfg.lr * 0.01
        )
    if cfg.lr_schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=steps)
    return None


def is_better(metric: str, new: float, old: float | None) -> bool:
    """Whether ``new`` improves on ``old`` (None: nothing yet) for a validation metric."""
    return old is None or (new > old if MAXIMIZE[metric] else new < old)


@dataclass
class EarlyStopping:
    """Tracks the best value of a metric; ``should_stop`` after ``patience`` bad epochs."""

    metric: str
    patience: int
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's value; returns whether it is a new best."""
        better = is_better(self.metric, value, self.best)
        if better:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience


@dataclass
class TrainingState:
    """Everything a checkpoint holds, so that training resumes exactly where it stopped."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    early: EarlyStopping
    scaler: torch.amp.GradScaler | None = None
    epoch: int = 0  # epochs completed
    best_state: dict[str, torch.Tensor] | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_so_far: dict[str, float] = field(default_factory=dict)  # per metric, any epoch

    @property
    def module(self) -> nn.Module:
        """The model without its DDP wrapper."""
        return getattr(self.model, "module", self.model)

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "early": vars(self.early).copy(),
            "epoch": self.epoch,
            "best_state": self.best_state,
            "best_metrics": self.best_metrics,
            "best_so_far": self.best_so_far,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.early = EarlyStopping(**state["early"])
        self.epoch, self.best_state = state["epoch"], state["best_state"]
        self.best_metrics = state["best_metrics"]
        self.best_so_far = state["best_so_far"]

    def update_best_so_far(self, metrics: dict[str, float]) -> dict[str, float]:
        """Running best of every validation metric, as ``best_<name>`` entries."""
        for name in MAXIMIZE:
            if name in metrics and is_better(name, metrics[name], self.best_so_far.get(name)):
                self.best_so_far[name] = metrics[name]
        return {f"best_{k}": v for k, v in self.best_so_far.items()}


def _sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _batches(
    loader: Iterable[dict[str, torch.Tensor]], device: torch.device, channels_last: bool
) -> Iterator[dict[str, torch.Tensor]]:
    fmt = (
        torch.channels_last if channels_last and device.type == "cuda" else torch.contiguous_format
    )
    for batch in loader:
        out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        out["image"] = out["image"].contiguous(memory_format=fmt)
        yield out


def train_one_epoch(
    state: TrainingState,
    loader: Iterable[dict[str, torch.Tensor]],
    loss_fn: nn.Module,
    cfg: RunConfig,
    device: torch.device,
) -> dict[str, float]:
    """One pass over ``loader``; the schedule steps per batch.

    Returns ``train_loss`` (mean over samples, all ranks), ``images_per_s`` (all ranks),
    ``epoch_s`` (this rank's wall time of the pass).
    """
    model, optimizer, tc = state.model, state.optimizer, cfg.train
    model.train()
    start, loss_sum, count = time.perf_counter(), 0.0, 0.0
    for batch in _batches(loader, device, tc.channels_last):
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, tc.amp):
            loss = loss_fn(model(batch["image"]), batch["mask"])
        if state.scaler is not None:
            state.scaler.scale(loss).backward()
            state.scaler.unscale_(optimizer)
        else:
            loss.backward()
        if cfg.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        if state.scaler is not None:
            state.scaler.step(optimizer)
            state.scaler.update()
        else:
            optimizer.step()
        if state.scheduler is not None:
            state.scheduler.step()
        n = batch["image"].shape[0]
        loss_sum, count = loss_sum + float(loss.detach()) * n, count + n
    seconds = time.perf_counter() - start
    loss_sum, count = _sum_over_ranks([loss_sum, count], device)
    return {
        "train_loss": loss_sum / max(count, 1),
        "images_per_s": count / max(seconds, 1e-9),
        "epoch_s": seconds,
    }


@torch.no_grad()
def predict_labels(
    model: nn.Module, images: torch.Tensor, threshold: float, amp: str = "off"
) -> torch.Tensor:
    """(N, C, H, W) float -> (N, H, W) int64 labels, in eval mode."""
    module = getattr(model, "module", model)
    module.eval()
    with _autocast(images.device, amp):
        return logits_to_labels(module(images), threshold)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[dict[str, torch.Tensor]],
    loss_fn: nn.Module,
    cfg: RunConfig,
    device: torch.device,
    with_dsb: bool,
) -> dict[str, float]:
    """Validation loss, Dice, IoU, soft Dice (per image, averaged) and optionally the DSB2018
    score.

    Each rank evaluates its own shard; sums are reduced over ranks, so no sample is counted
    twice. Uses the unwrapped model (no DDP collectives during evaluation).
    """
    module = getattr(model, "module", model)
    module.eval()
    sums = [0.0] * 6  # loss*n, dice, iou, dsb, n, soft dice
    for batch in _batches(loader, device, cfg.train.channels_last):
        with _autocast(device, cfg.train.amp):
            logits = module(batch["image"])
        n = batch["image"].shape[0]
        labels = logits_to_labels(logits, cfg.train.threshold)
        dice, iou = dice_iou_per_image(labels, batch["mask"], cfg.data.num_classes)
        sums[0] += float(loss_fn(logits, batch["mask"])) * n
        sums[1] += float(dice.sum())
        sums[2] += float(iou.sum())
        if with_dsb and "instances" in batch:
            fg, truth = (labels > 0).cpu().numpy(), batch["instances"].cpu().numpy()
            sums[3] += sum(dsb_image_score(fg[i], truth[i]) for i in range(n))
        sums[4] += n
        sums[5] += float(soft_dice_per_image(logits, batch["mask"]).sum())
    loss, dice_sum, iou_sum, dsb_sum, count, soft_sum = _sum_over_ranks(sums, device)
    count = max(count, 1)
    out = {
        "val_loss": loss / count,
        "val_dice": dice_sum / count,
        "val_iou": iou_sum / count,
        "val_soft_dice": soft_sum / count,
    }
    if with_dsb:
        out["val_dsb_score"] = dsb_sum / count
    return out


def new_training_state(
    model: nn.Module, cfg: RunConfig, steps_per_epoch: int, device: torch.device
) -> TrainingState:
    """Optimizer, schedule, early stopping (and an fp16 grad scaler on GPU) for a model."""
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, steps_per_epoch * cfg.train.epochs)
    scaler = (
        torch.amp.GradScaler("cuda") if device.type == "cuda" and cfg.train.amp == "fp16" else None
    )
    early = EarlyStopping(cfg.train.early_stop_metric, cfg.train.early_stop_patience)
    return TrainingState(model, optimizer, scheduler, early, scaler)


def _dsb_due(tc: TrainConfig, epoch: int) -> bool:
    return tc.dsb_every > 0 and (epoch % tc.dsb_every == 0 or epoch == tc.epochs)


def fit(
    state: TrainingState,
    cfg: RunConfig,
    train_loader: DataLoader[Any],
    val_loader: DataLoader[Any],
    loss_fn: nn.Module,
    device: torch.device,
    report: Callable[[dict[str, float], TrainingState], None] | None = None,
) -> TrainingState:
    """Run the remaining epochs (from ``state.epoch``), keeping the best weights.

    After each epoch ``report(metrics, state)`` is called with ``epoch`` (1-based),
    ``train_loss``, ``val_loss``, ``val_dice``, ``val_iou``, ``val_dsb_score`` (when due),
    ``images_per_s``, ``epoch_s``, ``lr``, the running bests ``best_val_*`` and ``finished``
    (1.0 on the last epoch this call runs: the epoch budget or early stopping ended it; a
    trial stopped from outside, e.g. by ASHA, never reports it). Stops early after
    ``early_stop_patience`` epochs without improvement of ``early_stop_metric``.
    """
    for epoch in range(state.epoch + 1, cfg.train.epochs + 1):
        set_epoch = getattr(getattr(train_loader, "sampler", None), "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)  # DistributedSampler: a new shuffle each epoch
        metrics = train_one_epoch(state, train_loader, loss_fn, cfg, device)
        metrics |= evaluate(
            state.model, val_loader, loss_fn, cfg, device, _dsb_due(cfg.train, epoch)
        )
        metrics |= {"epoch": float(epoch), "lr": state.optimizer.param_groups[0]["lr"]}
        state.epoch = epoch
        if state.early.update(metrics[cfg.train.early_stop_metric], epoch):
            state.best_state = copy.deepcopy(
                {k: v.detach().cpu() for k, v in state.module.state_dict().items()}
            )
            state.best_metrics = dict(metrics)
        metrics |= state.update_best_so_far(metrics)
        metrics["finished"] = float(epoch == cfg.train.epochs or state.early.should_stop)
        if report is not None:
            report(metrics, state)
        if state.early.should_stop:
            break
    return state
