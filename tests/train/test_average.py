from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from unet_search.core.config import RunConfig
from unet_search.data.dataset import load_dataset
from unet_search.models.build import build_model
from unet_search.train.average import WeightAverage, ema_decay
from unet_search.train.engine import (
    build_loaders,
    fit,
    new_training_state,
    seed_everything,
    validate,
)
from unet_search.train.losses import build_loss

CPU = torch.device("cpu")


def test_the_decay_is_a_horizon_in_epochs_after_a_warm_up() -> None:
    assert ema_decay(2.0, 50, 1_000_000) == pytest.approx(1 - 1 / 100)
    assert ema_decay(0.5, 50, 1_000_000) == pytest.approx(1 - 1 / 25)
    assert ema_decay(2.0, 50, 1) == pytest.approx(2 / 11)  # the first steps: mostly the new
    assert ema_decay(2.0, 50, 90) == pytest.approx(91 / 100)  # still warming up
    assert ema_decay(0.001, 1, 5) == 0.0  # a horizon under one step: no averaging


def test_the_average_follows_weights_and_batch_norm_statistics_by_hand() -> None:
    net = nn.Sequential(nn.Linear(2, 1, bias=False), nn.BatchNorm1d(1))
    average = WeightAverage(net, epochs=100.0, steps_per_epoch=1)  # decay (1+n)/(10+n)
    start = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[1].running_mean.fill_(4.0)
        net[1].num_batches_tracked.fill_(7)
    average.update(net)
    kept = 2 / 11  # the first update's decay
    assert torch.allclose(average.model[0].weight, kept * start + (1 - kept))
    assert average.model[1].running_mean.item() == pytest.approx((1 - kept) * 4.0)
    assert int(average.model[1].num_batches_tracked) == 7  # counts are copied, not averaged
    assert not average.model[0].weight.requires_grad
    average.update(net)
    second = 3 / 12
    expected = second * (kept * start + (1 - kept)) + (1 - second)
    assert torch.allclose(average.model[0].weight, expected)
    copy = WeightAverage(net, epochs=100.0, steps_per_epoch=1)
    copy.load_state_dict(average.state_dict())
    assert copy.updates == 2 and torch.equal(copy.model[0].weight, average.model[0].weight)


def test_a_run_with_ema_validates_keeps_and_resumes_the_average(
    synth_dir: Path, tmp_path: Path
) -> None:
    leaves = {"patch_size": 32, "patches_per_epoch": 16, "depth": 2, "base_filters": 4}
    cfg = RunConfig.from_dict(
        {**leaves, "epochs": 3, "val_fraction": 0.25, "dsb_every": 0, "ema_horizon": 1.0}
        | {"keep_weights": "last"}
    )
    arrays = load_dataset(synth_dir, cfg.data)
    seed_everything(0)
    train, val = build_loaders(cfg, arrays, rank=0, world=1)
    state = new_training_state(build_model(cfg.model, 2), cfg, len(train), CPU)
    assert state.average is not None and state.scored is state.average.model
    history: list[dict[str, float]] = []
    loss = build_loss(cfg.loss)
    fit(state, cfg.replace(epochs=2), train, val, loss, CPU, lambda m, s: history.append(m))
    assert state.average.updates == 2 * len(train)
    trained, averaged = state.module.state_dict(), state.average.model.state_dict()
    assert not torch.equal(trained["net.head.weight"], averaged["net.head.weight"])
    # The numbers reported are the average's, and the kept weights are the average's.
    last = validate(state.average.model, val, loss, cfg, CPU, False)
    assert history[-1]["val_dice"] == pytest.approx(last["val_dice"], abs=1e-6)
    assert history[-1]["val_loss"] == pytest.approx(last["val_loss"], rel=1e-5)
    assert state.best_state is not None
    assert state.best_metrics["epoch"] == 2.0
    assert all(torch.equal(state.best_state[k], v) for k, v in averaged.items())
    torch.save(state.state_dict(), tmp_path / "state.pt")
    fresh = new_training_state(build_model(cfg.model, 2), cfg, len(train), CPU)
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert fresh.average is not None and fresh.average.updates == state.average.updates
    assert torch.equal(
        fresh.average.model.state_dict()["net.head.weight"], averaged["net.head.weight"]
    )
