"""Benchmark 1, training overhead: steady-state images/s of a trial inside a search (the whole
path: Tune trial, per-epoch validation, checkpoint, MLflow logging, overlays) over images/s of a
plain PyTorch loop (train + a validation forward pass per epoch) on the same model, batch,
image size, data pipeline and threads. Target >= 0.90 for one worker. Then 2-worker DDP over
1 worker (both Ray Train, same total CPUs), reported.

Steady state: the time from the end of epoch 1 to the end of the last one (MLflow's metric
timestamps for the trial, wall clock for the plain loop), so start-up (benchmark 2) is out.

    python bench/training_overhead.py [--epochs 6] [--dsb-every 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
import torch
from mlflow.tracking import MlflowClient

from unet_search.core.config import RunConfig
from unet_search.data.dataset import load_dataset
from unet_search.distributed.trainer import init_ray, run_training
from unet_search.models.build import build_model
from unet_search.train.engine import build_loaders, seed_everything, validate
from unet_search.train.losses import build_loss

N_IMAGES, SIZE = 200, 64
FIXED = {
    "preset": "seed_keras",  # resize mode, as the figures before patch mode
    "image_size": 64,
    "batch_size": 8,
    "val_fraction": 0.2,
    "early_stop_patience": 0,
    "num_workers": 1,
    "cpus_per_worker": 2,
    "loader_workers": 0,
}


def plain_loop(cfg: RunConfig, arrays: Any, epochs: int) -> float:
    """Steady-state training images/s of a plain loop."""
    torch.set_num_threads(cfg.train.cpus_per_worker)
    seed_everything(cfg.train.seed)
    train, val = build_loaders(cfg, arrays, 0, 1)
    model = build_model(cfg.model, cfg.data.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    loss_fn = build_loss(cfg.loss)
    marks, images = [], 0
    for _ in range(epochs):
        model.train()
        images = 0
        for batch in train:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(batch["image"]), batch["mask"]).backward()
            optimizer.step()
            images += batch["image"].shape[0]
        validate(model, val, loss_fn, cfg, torch.device("cpu"), with_dsb=False)
        marks.append(time.perf_counter())
    return images * (epochs - 1) / (marks[-1] - marks[0])


def _steady_rate(uri: str, run_id: str, n_train: int) -> tuple[float, int]:
    points = {m.step: m.timestamp for m in MlflowClient(uri).get_metric_history(run_id, "epoch")}
    steps = sorted(points)
    seconds = (points[steps[-1]] - points[steps[0]]) / 1000
    return n_train * (len(steps) - 1) / seconds, len(steps)


def search_trial(data: Path, work: Path, fixed: dict[str, Any], epochs: int) -> float:
    os.environ["UNET_SEARCH_HOME"] = str(work)
    raw = {
        "name": "overhead",
        "fixed": {**fixed, "epochs": epochs},
        "params": {},
        "search": {"num_samples": 1, "baseline": "none", "scheduler": {"type": "fifo"}},
    }
    out = _common.search(raw, data, work)
    n_train = _n_train(RunConfig.from_dict(raw["fixed"]))
    rate, steps = _steady_rate(f"sqlite:///{work / 'mlflow.db'}", out.trials[0].run_id, n_train)
    assert steps == epochs, f"{steps} epochs logged"
    return rate


def _n_train(cfg: RunConfig) -> int:
    from unet_search.data.split import split_indices

    return len(split_indices(N_IMAGES, cfg.data).train)


def train_run(data: Path, work: Path, fixed: dict[str, Any], epochs: int) -> float:
    cfg = RunConfig.from_dict({**fixed, "epochs": epochs})
    arrays = load_dataset(data, cfg.data)
    out = run_training(cfg, arrays, data, work, "overhead-ddp")
    return _steady_rate(f"sqlite:///{work / 'mlflow.db'}", out.run_id, _n_train(cfg))[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--dsb-every", type=int, default=None)
    parser.add_argument("--no-ddp", action="store_true")
    args = parser.parse_args()
    fixed = dict(FIXED)
    if args.dsb_every is not None:
        fixed["dsb_every"] = args.dsb_every
    _common.header(f"training overhead: search trial vs plain loop ({fixed})")
    init_ray()
    with tempfile.TemporaryDirectory() as tmp:
        data = _common.synthetic(Path(tmp), N_IMAGES, SIZE)
        cfg = RunConfig.from_dict({**fixed, "epochs": args.epochs})
        arrays = load_dataset(data, cfg.data)
        plain_loop(cfg, arrays, 2)  # warm-up, while Ray's freshly started processes settle
        before = plain_loop(cfg, arrays, args.epochs)
        trial = search_trial(data, Path(tmp) / "a", fixed, args.epochs)
        after = plain_loop(cfg, arrays, args.epochs)
        plain = (before + after) / 2
        print(f"plain loop {before:.1f} / {after:.1f} img/s, search trial {trial:.1f} img/s")
        _common.verdict(
            "search trial / plain loop", trial / plain, ">= 0.90", trial >= 0.9 * plain
        )
        if not args.no_ddp:
            one = train_run(data, Path(tmp) / "b", {**fixed, "cpus_per_worker": 2}, args.epochs)
            two = train_run(
                data,
                Path(tmp) / "c",
                {**fixed, "num_workers": 2, "cpus_per_worker": 1},
                args.epochs,
            )
            print(
                f"Ray Train 1 worker x 2 CPUs {one:.1f} img/s, 2 workers x 1 CPU {two:.1f} img/s"
            )
            print(f"2-worker DDP / 1 worker: {two / one:.3f}")


if __name__ == "__main__":
    main()
