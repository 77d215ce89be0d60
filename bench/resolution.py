"""Benchmark 8, resolution: held-out Dice of patch mode (with each normalization),
resize mode and a plain Otsu threshold on both synthetic styles; patch training images/s
over resize mode at equal pixels per batch, with the share of time spent loading data. CPU,
2 threads.

Both modes train the same UNet for the same epochs on the same images (large, non-square,
nuclei ~12 px across); the held-out images are predicted whole through ``load_model`` (the
sliding window in patch mode, resize and back in resize mode), as a user's images are.

    python bench/resolution.py [--epochs 8] [--n 24]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _common
import numpy as np
import torch

from unet_search.core.config import RunConfig
from unet_search.core.sections import DataConfig
from unet_search.data.dataset import load_dataset
from unet_search.data.synthetic import make_synthetic
from unet_search.models.build import build_model, save_model_dir
from unet_search.models.card import ModelCard
from unet_search.plan.planner import make_plan, parse_budget, profile_data
from unet_search.serve.inference import load_model
from unet_search.train.engine import build_loaders, fit, new_training_state, seed_everything
from unet_search.train.losses import build_loss
from unet_search.train.metrics import otsu_mask
from unet_search.train.sliding import preprocessing_of

CPU = torch.device("cpu")
MODEL = {"depth": 3, "base_filters": 16, "batch_size": 8, "lr": 3e-3, "aug_strength": 0.3}
MODES = {
    "patch 96 px": {"patch_size": 96, "patches_per_epoch": 128},
    "patch 96 px, zscore": {"patch_size": 96, "patches_per_epoch": 128, "normalization": "zscore"},
    "patch 96 px, dataset": {
        "patch_size": 96,
        "patches_per_epoch": 128,
        "normalization": "dataset",
    },
    "resize 128 px": {"input_mode": "resize", "image_size": 128},
}
QUICK = parse_budget("cpu-quick")
STYLE = {"size": 200, "max_size": 400, "object_px": 12}


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = pred.sum() + truth.sum()
    return float(2 * (pred & truth).sum() / total) if total else 1.0


def train(data: Path, leaves: dict, epochs: int, out: Path) -> tuple[Path, float]:
    """Train one run (engine only, no Ray); its kept weights as a model dir, and seconds."""
    cfg = RunConfig.from_dict(
        {**MODEL, **leaves, "epochs": epochs, "val_fraction": 0.2, "dsb_every": 0}
    )
    arrays = load_dataset(data, cfg.data)
    seed_everything(0)
    loader, val = build_loaders(cfg, arrays, 0, 1)
    state = new_training_state(build_model(cfg.model, 1), cfg, len(loader), CPU)
    start = time.perf_counter()
    fit(state, cfg, loader, val, build_loss(cfg.loss), CPU)
    seconds = time.perf_counter() - start
    if state.best_state is not None:
        state.module.load_state_dict(state.best_state)
    save_model_dir(
        out, state.module, ModelCard(cfg.model, 1, preprocessing_of(cfg, val.normalization))
    )
    return out, seconds


def throughput(
    data: Path, leaves: dict, batches: int = 24, warmup: int = 3
) -> tuple[float, float]:
    """Training images/s and the share of the time spent waiting for batches, after
    ``warmup`` untimed batches (the first steps allocate and pick kernels)."""
    cfg = RunConfig.from_dict({**MODEL, **leaves, "val_fraction": 0.2})
    arrays = load_dataset(data, cfg.data)
    loader, _ = build_loaders(cfg, arrays, 0, 1)
    torch.manual_seed(0)
    model = build_model(cfg.model, 1).train()
    optimizer = torch.optim.Adam(model.parameters())
    loss_fn = build_loss(cfg.loss)
    waiting = stepping = 0.0
    seen = images = 0
    while seen < warmup + batches:
        mark = time.perf_counter()
        for batch in loader:
            got = time.perf_counter()
            optimizer.zero_grad()
            loss_fn(model(batch["image"]), batch["mask"]).backward()
            optimizer.step()
            done = time.perf_counter()
            full = len(batch["image"]) == cfg.train.batch_size
            if seen >= warmup and full:  # equal pixels per batch: an epoch's last may be less
                waiting, stepping = waiting + got - mark, stepping + done - got
                images += len(batch["image"])
            mark = done
            seen += full
            if seen >= warmup + batches:
                break
    return images / (waiting + stepping), waiting / (waiting + stepping)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--n", type=int, default=24, help="training images per style")
    parser.add_argument("--only", default="", help="run the modes whose name has this text")
    parser.add_argument("--no-throughput", action="store_true")
    args = parser.parse_args()
    _common.header("resolution: patch vs resize vs Otsu, held-out Dice")
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for style in ("fluorescence", "hard"):
            make_synthetic(root / style, n=args.n, seed=1, style=style, **STYLE)
            make_synthetic(root / f"{style}-new", n=6, seed=2, style=style, **STYLE)
            new = load_dataset(root / f"{style}-new", DataConfig())
            images = [new.image(i) for i in range(len(new))]
            truth = [new.mask(i) > 0 for i in range(len(new))]
            otsu = np.mean(
                [dice(otsu_mask(im) > 0, t) for im, t in zip(images, truth, strict=True)]
            )
            print(f"## {style}: {args.n} images 200-400 px, nuclei ~12 px; 6 held out")
            plan = make_plan(profile_data(load_dataset(root / style, DataConfig())), QUICK)
            print(f"plan (cpu-quick): {plan.lines()[-1]}")
            print(f"Otsu threshold: held-out Dice {otsu:.3f}", flush=True)
            for name, leaves in MODES.items():
                if args.only not in name:
                    continue
                model_dir, seconds = train(root / style, leaves, args.epochs, root / name)
                masks = load_model(model_dir).predict(images)
                score = np.mean([dice(m > 0, t) for m, t in zip(masks, truth, strict=True)])
                print(f"{name}: held-out Dice {score:.3f} ({args.epochs} epochs, {seconds:.0f} s)")
        if args.no_throughput:
            return
        print("## training throughput at equal pixels per batch (8 x 96 x 96)")
        data = root / "fluorescence"
        sides = {
            "patch": {"patch_size": 96},
            "resize": {"input_mode": "resize", "image_size": 96},
        }
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
        for _ in range(3):  # interleaved: a slow phase of the machine hits both
            for name, leaves in sides.items():
                runs[name].append(throughput(data, leaves))
        rates = {
            name: (float(np.median([r for r, _ in got])), float(np.median([w for _, w in got])))
            for name, got in runs.items()
        }
        for name, (rate, wait) in rates.items():
            print(f"{name}: {rate:.1f} images/s, {100 * wait:.0f}% of the time loading data")
        ratio = rates["patch"][0] / rates["resize"][0]
        _common.verdict("patch / resize images/s", ratio, ">= 0.9", ratio >= 0.9)


if __name__ == "__main__":
    main()
