"""Optimizers and LR schedules (unet_search/train/optim.py)."""

from __future__ import annotations

import itertools

import pytest
import torch


@pytest.mark.parametrize(
    ("schedule", "peak", "last"),
    [("none", 1e-2, 1e-2), ("cosine", 1e-2, 1e-4), ("onecycle", 1e-2, None)],
)
def test_lr_schedules(schedule: str, peak: float, last: float | None) -> None:
    from unet_search.core.sections import OptimConfig
    from unet_search.train.optim import build_optimizer, build_scheduler

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


@pytest.mark.parametrize(("schedule", "last"), [("cosine", 1e-4), ("none", 1e-2)])
def test_a_warm_start_ramps_the_lr_up_over_its_first_epoch_then_follows_its_schedule(
    schedule: str, last: float
) -> None:
    from unet_search.core.sections import OptimConfig
    from unet_search.train.optim import WARM_UP_FROM, build_optimizer, build_scheduler

    model = torch.nn.Linear(2, 1)
    cfg = OptimConfig(lr=1e-2, lr_schedule=schedule)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps=100, warm_up_steps=10)
    assert scheduler is not None
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1e-2 * WARM_UP_FROM)
    assert all(a < b for a, b in itertools.pairwise(lrs[:11]))  # rising
    assert lrs[10] == pytest.approx(1e-2) and max(lrs) == pytest.approx(1e-2)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(last, rel=1e-2)
    # The state round-trips (resume): a fresh schedule loaded at step 50 goes on the same.
    fresh_opt = build_optimizer(torch.nn.Linear(2, 1), cfg)
    fresh = build_scheduler(fresh_opt, cfg, total_steps=100, warm_up_steps=10)
    assert fresh is not None
    for _ in range(50):
        fresh_opt.step()
        fresh.step()
    assert fresh_opt.param_groups[0]["lr"] == pytest.approx(lrs[50])
