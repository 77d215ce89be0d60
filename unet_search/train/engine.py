"""Training engine in plain PyTorch: epochs, validation, early stopping, training state.

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
from torch.utils.data import DataLoader, Dataset

from unet_search.core.config import RunConfig
from unet_search.core.metrics import METRICS, better, kept
from unet_search.core.outcome import FINISHED_KEY
from unet_search.core.sections import TrainConfig
from unet_search.data.dataset import DatasetArrays
from unet_search.data.split import split_indices
from unet_search.data.targets import BorderWeighting, class_weights, target_arrays, target_map
from unet_search.train.average import WeightAverage
from unet_search.train.instances import (
    Decoding,
    decode_instances,
    foreground_labels,
    foreground_logits,
)
from unet_search.train.metrics import Scorer, class_dice_sums, otsu_dice, soft_dice_per_image
from unet_search.train.optim import build_optimizer, build_scheduler
from unet_search.train.sliding import Tiling, predict_logits, tiling_of
from unet_search.train.transforms import (
    Normalization,
    PatchDataset,
    ResizeDataset,
    normalization_for,
    train_pipeline,
)

__all__ = [
    "build_loaders",
    "EarlyStopping",
    "fit",
    "keep_the_start",
    "new_training_state",
    "otsu_val_dice",
    "seed_everything",
    "set_epoch",
    "train_one_epoch",
    "TrainingState",
    "val_indices",
    "validate",
    "Validation",
]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
        improved = better(METRICS[self.metric].mode, value, self.best)
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return improved

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
    best_metrics: dict[str, float] = field(default_factory=dict)  # the kept epoch's
    average: WeightAverage | None = None  # the weights' moving average (train.ema_horizon)

    @property
    def module(self) -> nn.Module:
        """The model without its DDP wrapper."""
        return getattr(self.model, "module", self.model)

    @property
    def scored(self) -> nn.Module:
        """The model a run validates, keeps and saves: the moving average of the weights
        with ``train.ema_horizon``, else the trained model (without its DDP wrapper)."""
        return self.average.model if self.average is not None else self.module

    def keep(self, metrics: dict[str, float]) -> None:
        """Keep the scored model's weights now, with their validation ``metrics``."""
        self.best_state = copy.deepcopy(
            {k: v.detach().cpu() for k, v in self.scored.state_dict().items()}
        )
        self.best_metrics = dict(metrics)

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
            "average": self.average.state_dict() if self.average else None,
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
        if self.average is not None and state.get("average"):
            self.average.load_state_dict(state["average"])

    def kept_metrics(self) -> dict[str, float]:
        """The validation metrics of the kept weights (the epoch with the best
        ``early_stop_metric`` so far, or the last with ``keep_weights: last``), as
        ``best_<name>`` entries: the numbers a run reports are those of the model it keeps."""
        return kept(self.best_metrics)


def _sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _broadcast_buffers(module: nn.Module) -> None:
    """Every rank's buffers set to rank 0's (a collective: every rank calls it)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)


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
            truth = (batch["mask"], batch["weights"]) if "weights" in batch else (batch["mask"],)
            loss = loss_fn(model(batch["image"]), *truth)
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
        if state.average is not None:
            state.average.update(state.module)
        n = batch["image"].shape[0]
        loss_sum, count = loss_sum + float(loss.detach()) * n, count + n
    seconds = time.perf_counter() - start
    loss_sum, count = _sum_over_ranks([loss_sum, count], device)
    return {
        "train_loss": loss_sum / max(count, 1),
        "images_per_s": count / max(seconds, 1e-9),
        "epoch_s": seconds,
    }


@dataclass(frozen=True)
class Validation:
    """This rank's share of the validation images, each scored whole at its original size
    by the predictor ``predict`` uses (:func:`unet_search.train.sliding.predict_logits`)."""

    arrays: DatasetArrays
    indices: tuple[int, ...]
    tiling: Tiling
    normalization: Normalization
    in_channels: int
    decoding: Decoding = field(default_factory=Decoding)  # how instances are decoded


@torch.no_grad()
def validate(
    model: nn.Module,
    val: Validation,
    loss_fn: nn.Module,
    cfg: RunConfig,
    device: torch.device,
    with_dsb: bool,
) -> dict[str, float]:
    """Validation loss (of the whole-image logits), Dice, IoU, soft Dice (per image,
    averaged) and optionally the DSB2018 score, of the images as ``predict`` segments them.

    Each rank scores its own images; sums are reduced over ranks, so the result equals one
    process scoring them all. Uses the unwrapped model (no DDP collectives), with rank 0's
    buffers (BatchNorm statistics) on every rank: DDP makes the weights equal, but each rank's
    last training step moved its own running statistics, and rank 0's model is the one kept
    and saved, so the number must be that model's."""
    module = getattr(model, "module", model)
    _broadcast_buffers(module)
    scorer = Scorer(cfg.data.num_classes, with_dsb and val.arrays.instance_pixels is not None)
    sums = [0.0, 0.0]  # loss, soft Dice
    classes = max(cfg.data.num_classes - 1, 0) if cfg.data.num_classes > 2 else 0
    class_sums = [0.0] * (2 * classes)  # per foreground class: Dice sum, images scored
    target, threshold = cfg.data.target, cfg.train.threshold
    for i in val.indices:
        with _autocast(device, cfg.train.amp):
            logits = predict_logits(
                module, val.arrays.image(i), val.tiling, val.normalization, val.in_channels, device
            )[None].float()
        truth = val.arrays.mask(i)
        goal = torch.from_numpy(
            target_map(target, truth, val.arrays.instances(i)).astype(np.int64)
        ).to(device)[None]
        mask = torch.from_numpy(truth.astype(np.int64)).to(device)[None]
        labels = foreground_labels(logits, target, threshold)
        predicted = (
            decode_instances(logits[0], target, threshold, val.decoding)
            if scorer.with_dsb
            else None
        )
        scorer.add(labels, mask, val.arrays.instances(i), predicted)
        sums[0] += float(loss_fn(logits, goal))
        sums[1] += float(soft_dice_per_image(foreground_logits(logits, target), mask).sum())
        if classes:
            dices, present = class_dice_sums(labels, mask, cfg.data.num_classes)
            class_sums = [a + b for a, b in zip(class_sums, dices + present, strict=True)]
    totals = _sum_over_ranks(scorer.sums + sums + class_sums, device)
    n = Scorer.SIZE
    scores, (loss, soft), count = scorer.means_of(totals[:n]), totals[n : n + 2], totals[n - 1]
    out = {"val_loss": loss / max(count, 1), "val_soft_dice": soft / max(count, 1)}
    out |= {f"val_{key}": value for key, value in scores.items()}
    for k in range(classes):  # a class in no image's truth or prediction: nothing missed
        scored = totals[n + 2 + classes + k]
        out[f"val_dice_c{k + 1}"] = totals[n + 2 + k] / scored if scored else 1.0
    return out


def val_indices(cfg: RunConfig, arrays: DatasetArrays) -> np.ndarray:
    """The validation images scored each epoch: the split's, at most ``val_max_images``
    (the first of the split, which is in a seeded random order)."""
    val_idx = split_indices(len(arrays), cfg.data).val
    cap = cfg.train.val_max_images
    return val_idx[:cap] if cap else val_idx


def build_loaders(
    cfg: RunConfig, arrays: DatasetArrays, rank: int, world: int
) -> tuple[DataLoader[Any], Validation]:
    """The training loader (patches, or resized images, by ``input_mode``, of the masks as
    ``data.target`` has them) and this rank's share of the validation images."""
    train_idx = split_indices(len(arrays), cfg.data).train
    norm, channels, seed = normalization_for(cfg, arrays), cfg.model.in_channels, cfg.train.seed
    square = cfg.data.input_mode == "resize" or len(set(cfg.data.patch_size)) == 1
    common: dict[str, Any] = {
        "normalization": norm,
        "in_channels": channels,
        "pipeline": train_pipeline(cfg.augment, seed, square=square),
        "seed": seed,  # every rank the same: each draws other items (see item_rng)
    }
    train_set: Dataset[dict[str, torch.Tensor]]
    learned = target_arrays(arrays, cfg.data.target)
    if cfg.loss.border_weight > 0:  # the original UNet's weight map on the cross-entropy
        maps = [learned.mask(int(i)) for i in train_idx]
        classes = class_weights(maps, max(2, cfg.data.network_classes))
        common["border"] = BorderWeighting(cfg.loss.border_weight, classes)
    if cfg.data.input_mode == "patch":
        train_set = PatchDataset(
            learned,
            train_idx,
            patch=cfg.data.patch_size,
            scale=cfg.data.scale,
            fg_oversample=cfg.train.fg_oversample,
            length=cfg.train.patches_per_epoch,
            **common,
        )
    else:
        train_set = ResizeDataset(learned, train_idx, size=cfg.data.square, **common)
    # A last batch of one sample is dropped: batch norm cannot normalize one value per channel
    # (a 1 x 1 bottleneck, e.g. 32-px patches at depth 5), and one sample is a noisy step.
    per_rank = -(-len(train_set) // world)  # Ray Train's DistributedSampler pads to this
    train = DataLoader(
        train_set,
        batch_size=cfg.train.batch_size,
        drop_last=per_rank > 1 and per_rank % cfg.train.batch_size == 1,
        shuffle=cfg.data.input_mode == "resize",  # patches are random already
        num_workers=cfg.train.loader_workers,
        generator=torch.Generator().manual_seed(seed),
    )
    # Validation is sharded by hand (no padding with repeats), so no image counts twice.
    val = Validation(
        arrays,
        tuple(int(i) for i in val_indices(cfg, arrays)[rank::world]),
        tiling_of(cfg),
        norm,
        channels,
    )
    return train, val


def otsu_val_dice(arrays: DatasetArrays, cfg: RunConfig) -> float | None:
    """Mean Dice of the plain Otsu threshold (:func:`unet_search.train.metrics.otsu_mask`) on the
    validation images every run is scored on; None for a multi-class task."""
    if cfg.data.num_classes > 2:
        return None
    return otsu_dice(arrays, [int(i) for i in val_indices(cfg, arrays)])


def new_training_state(
    model: nn.Module,
    cfg: RunConfig,
    steps_per_epoch: int,
    device: torch.device,
    warm_start: bool = False,
    optimizer_state: dict[str, Any] | None = None,
) -> TrainingState:
    """Optimizer, schedule, early stopping (and an fp16 grad scaler on GPU) for a model.
    The schedule spans ``train.schedule_epochs`` (0: ``epochs``). ``warm_start`` (the model
    holds trained weights): the LR warms up over the first epoch. ``optimizer_state`` (a run
    going on from another's weights and optimizer, a final fit's ``continue``): the
    optimizer goes on where that run left it, and the schedule runs from its LR there, with
    no warm-up, over this run's epochs."""
    optimizer = build_optimizer(model, cfg.optim)
    span = steps_per_epoch * (cfg.train.schedule_epochs or cfg.train.epochs)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
        for group in optimizer.param_groups:  # the schedule's peak: where it was left
            group["initial_lr"] = group["lr"]
        warm_start, span = False, steps_per_epoch * cfg.train.epochs
    scheduler = build_scheduler(optimizer, cfg.optim, span, steps_per_epoch if warm_start else 0)
    scaler = (
        torch.amp.GradScaler("cuda") if device.type == "cuda" and cfg.train.amp == "fp16" else None
    )
    early = EarlyStopping(cfg.train.early_stop_metric, cfg.train.early_stop_patience)
    state = TrainingState(model, optimizer, scheduler, early, scaler)
    if cfg.train.ema_horizon > 0:
        state.average = WeightAverage(state.module, cfg.train.ema_horizon, steps_per_epoch)
    return state


def keep_the_start(
    state: TrainingState, val: Validation, loss_fn: nn.Module, cfg: RunConfig, device: torch.device
) -> dict[str, float]:
    """Validate the weights a run starts from (epoch 0) and keep them as its best so far: a
    run from trained weights (a final fit) then never keeps worse weights than it was given.
    Returns their validation metrics."""
    metrics = validate(state.scored, val, loss_fn, cfg, device, cfg.train.dsb_every > 0)
    metrics["epoch"] = 0.0
    keep = cfg.train.early_stop_metric
    if keep in metrics:
        state.early.best, state.early.best_epoch = metrics[keep], 0
        state.keep(metrics)
    return metrics


def _dsb_due(tc: TrainConfig, epoch: int) -> bool:
    return tc.dsb_every > 0 and (epoch % tc.dsb_every == 0 or epoch == tc.epochs)


def set_epoch(loader: DataLoader[Any], epoch: int) -> None:
    """A new shuffle (DistributedSampler) and new random patches (our datasets) each epoch."""
    for part in (getattr(loader, "sampler", None), getattr(loader, "dataset", None)):
        set_epoch = getattr(part, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)


def fit(
    state: TrainingState,
    cfg: RunConfig,
    train_loader: DataLoader[Any],
    val: Validation,
    loss_fn: nn.Module,
    device: torch.device,
    report: Callable[[dict[str, float], TrainingState], None] | None = None,
) -> TrainingState:
    """Run the remaining epochs (from ``state.epoch``), keeping the best weights (the last
    epoch's with ``keep_weights: last``).

    After each epoch ``report(metrics, state)`` is called with ``epoch`` (1-based),
    ``train_loss``, ``val_loss``, ``val_dice``, ``val_iou``, ``val_soft_dice``,
    ``val_dsb_score`` (when due), ``images_per_s``, ``epoch_s``, ``lr``, the kept weights'
    values ``best_val_*`` (the epoch with the best ``early_stop_metric``) and ``finished``
    (1.0 on the last epoch this call runs: the epoch budget or early stopping ended it; a
    trial stopped from outside, e.g. by ASHA, never reports it). Stops early after
    ``early_stop_patience`` epochs without improvement of ``early_stop_metric``.
    """
    keep = cfg.train.early_stop_metric
    for epoch in range(state.epoch + 1, cfg.train.epochs + 1):
        set_epoch(train_loader, epoch)
        metrics = train_one_epoch(state, train_loader, loss_fn, cfg, device)
        metrics |= validate(state.scored, val, loss_fn, cfg, device, _dsb_due(cfg.train, epoch))
        metrics |= {"epoch": float(epoch), "lr": state.optimizer.param_groups[0]["lr"]}
        state.epoch = epoch
        # An epoch without the metric (the DSB score is not due) keeps nothing and counts
        # nothing for early stopping.
        if keep in metrics and (
            state.early.update(metrics[keep], epoch) or cfg.train.keep_weights == "last"
        ):
            state.keep(metrics)
        metrics |= state.kept_metrics()
        metrics[FINISHED_KEY] = float(epoch == cfg.train.epochs or state.early.should_stop)
        if report is not None:
            report(metrics, state)
        if state.early.should_stop:
            break
    return state
