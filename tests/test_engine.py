from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from unet_search.config import RunConfig
from unet_search.data import load_dataset, split_indices
from unet_search.engine import (
    EarlyStopping,
    TrainingState,
    fit,
    new_training_state,
    seed_everything,
)
from unet_search.losses import build_loss
from unet_search.models import build_model
from unet_search.synthetic import make_synthetic
from unet_search.transforms import SegmentationDataset, train_pipeline

CPU = torch.device("cpu")


def _setup(data: Path, cfg: RunConfig) -> tuple[TrainingState, DataLoader, DataLoader]:
    arrays = load_dataset(data, cfg.data)
    train_idx, val_idx = split_indices(len(arrays), cfg.data.val_fraction, cfg.data.split_seed)
    seed_everything(cfg.train.seed)
    train = DataLoader(
        SegmentationDataset(
            arrays.images,
            arrays.masks,
            train_idx,
            normalization="unit",
            in_channels=3,
            pipeline=train_pipeline(cfg.augment),
        ),
        batch_size=cfg.train.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    val = DataLoader(
        SegmentationDataset(
            arrays.images,
            arrays.masks,
            val_idx,
            normalization="unit",
            in_channels=3,
            instances=arrays.instances,
        ),
        batch_size=16,
    )
    model = build_model(cfg.model, cfg.data.num_classes)
    return new_training_state(model, cfg, len(train), CPU), train, val


@pytest.mark.slow
def test_small_unet_learns_synthetic_nuclei(tmp_path: Path) -> None:
    """A small plain UNet reaches validation Dice >= 0.75 in well under a CPU minute
    (a global threshold reaches ~0.45 on this data, see test_synthetic)."""
    torch.set_num_threads(2)
    make_synthetic(tmp_path / "d", n=128, size=64, seed=11)
    cfg = RunConfig.from_dict(
        {
            "image_size": 64,
            "depth": 3,
            "base_filters": 16,
            "epochs": 16,
            "batch_size": 8,
            "lr": 3e-3,
            "val_fraction": 0.2,
            "dsb_every": 4,
        }
    )
    state, train, val = _setup(tmp_path / "d", cfg)
    history: list[dict[str, float]] = []
    fit(state, cfg, train, val, build_loss(cfg.loss), CPU, lambda m, s: history.append(m))
    assert [m["epoch"] for m in history] == list(range(1, 17))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert state.best_metrics["val_dice"] >= 0.75
    assert state.best_metrics["val_iou"] >= 0.6
    assert "val_dsb_score" in history[3] and "val_dsb_score" not in history[4]
    assert 0.0 < history[-1]["val_dsb_score"] <= 1.0


def test_early_stopping_rules() -> None:
    up = EarlyStopping("val_dice", patience=2)
    assert [up.update(v, e) for e, v in enumerate([0.5, 0.6, 0.55, 0.58], 1)] == [
        True,
        True,
        False,
        False,
    ]
    assert up.should_stop and up.best == 0.6 and up.best_epoch == 2
    down = EarlyStopping("val_loss", patience=0)
    assert down.update(1.0, 1) and down.update(0.5, 2) and not down.update(0.7, 3)
    assert not down.should_stop  # patience 0: never stops


class RisingValidationLoss(torch.nn.Module):
    """A loss whose validation value rises every epoch (training still gets a gradient):
    early stopping must keep epoch 1 as the best and stop after `patience` more epochs."""

    def __init__(self) -> None:
        super().__init__()
        self.evaluations = 0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return logits.float().mean() * 0.0 + 1.0
        self.evaluations += 1
        return logits.float().mean() * 0.0 + float(self.evaluations)


def test_fit_stops_early_and_keeps_best_weights(synth_dir: Path) -> None:
    cfg = RunConfig.from_dict(
        {
            "image_size": 32,
            "depth": 2,
            "base_filters": 4,
            "epochs": 6,
            "early_stop_patience": 2,
            "early_stop_metric": "val_loss",
            "val_fraction": 0.25,
            "dsb_every": 0,
        }
    )
    state, train, val = _setup(synth_dir, cfg)
    history: list[dict[str, float]] = []
    fit(state, cfg, train, val, RisingValidationLoss(), CPU, lambda m, s: history.append(m))
    assert [m["epoch"] for m in history] == [1.0, 2.0, 3.0]  # best at 1, then 2 bad epochs
    assert [m["finished"] for m in history] == [0.0, 0.0, 1.0]
    assert state.early.best_epoch == 1 and state.best_metrics["epoch"] == 1.0
    assert state.best_state is not None
    assert history[-1]["best_val_loss"] == history[0]["val_loss"]


def test_state_dict_round_trip_resumes_where_it_stopped(synth_dir: Path, tmp_path: Path) -> None:
    cfg = RunConfig.from_dict(
        {
            "image_size": 32,
            "depth": 2,
            "base_filters": 4,
            "epochs": 3,
            "val_fraction": 0.25,
            "dsb_every": 0,
        }
    )
    state, train, val = _setup(synth_dir, cfg)
    fit(state, cfg.replace(epochs=2), train, val, build_loss(cfg.loss), CPU)
    torch.save(state.state_dict(), tmp_path / "state.pt")
    fresh, _, _ = _setup(synth_dir, cfg)
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert fresh.epoch == 2 and fresh.early.best == state.early.best
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            fresh.model.state_dict().values(), state.model.state_dict().values(), strict=True
        )
    )
    epochs: list[float] = []
    fit(fresh, cfg, train, val, build_loss(cfg.loss), CPU, lambda m, s: epochs.append(m["epoch"]))
    assert epochs == [3.0]


@pytest.mark.parametrize(
    ("schedule", "peak", "last"),
    [("none", 1e-2, 1e-2), ("cosine", 1e-2, 1e-4), ("onecycle", 1e-2, None)],
)
def test_lr_schedules(schedule: str, peak: float, last: float | None) -> None:
    from unet_search.config import OptimConfig
    from unet_search.engine import build_optimizer, build_scheduler

    model = torch.nn.Linear(2, 1)
    cfg = OptimConfig(lr=1e-2, lr_schedule=schedule)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    assert max(lrs) == pytest.approx(peak, rel=1e-3)
    final = optimizer.param_groups[0]["lr"]
    if last is not None:
        assert final == pytest.approx(last, rel=1e-2)
    else:
        assert final < 1e-3 * peak  # annealed far below the peak
        assert lrs[0] == pytest.approx(peak / 25)  # starts at max_lr / div_factor
        assert lrs.index(max(lrs)) == pytest.approx(30, abs=1)  # warm-up over 30% of steps
