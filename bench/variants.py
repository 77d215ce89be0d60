"""Benchmark 11, UNet variants: each from-scratch option (REFERENCE.md 1d-1e) against the
plain UNet at equal base filters (depth 4, base filters 16, batch norm, 3 channels, binary):
trainable parameters, training images/s (forward + backward + Adam step, batch 8 of 128 px)
and inference ms per 256x256 image (batch 1, eval, no grad). The options run in turn, each
timing round over all of them, so a slow phase of the shared machine hits every side;
ratios to the plain UNet measured in the same rounds. CPU, 2 threads.

    python bench/variants.py [--rounds 3] [--also-pairs]

``--also-pairs`` adds a few combined variants (residual + ASPP + gate, ...).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import _common
import torch

from unet_search.core.sections import ModelConfig
from unet_search.models.build import REFERENCE_MODEL, build_model, count_parameters

OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "block residual": {"block": "residual"},
    "block separable": {"block": "separable"},
    "pooling avg": {"pooling": "avg"},
    "pooling strided": {"pooling": "strided"},
    "bottleneck dilated": {"bottleneck": "dilated"},
    "bottleneck aspp": {"bottleneck": "aspp"},
    "bottleneck transformer": {"bottleneck": "transformer"},
    "attention gate": {"attention": "gate"},
    "attention scse": {"attention": "scse"},
    "unet3plus (64 per skip)": {"arch": "unet3plus", "upsampling": "bilinear"},
    "unet3plus (16 per skip)": {
        "arch": "unet3plus",
        "upsampling": "bilinear",
        "unet3plus_channels": 16,
    },
}
PAIRS: dict[str, dict[str, Any]] = {
    "residual + aspp + gate": {"block": "residual", "bottleneck": "aspp", "attention": "gate"},
    "separable + transformer + scse": {
        "block": "separable",
        "bottleneck": "transformer",
        "attention": "scse",
    },
}
TRAIN_BATCH, TRAIN_SIDE, INFER_SIDE = 8, 128, 256


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    y = (x[:, :1] > 0).float()
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
    loss.backward()
    opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="training steps per round")
    parser.add_argument("--also-pairs", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    _common.header("bench 11: UNet variants against the plain UNet at equal base filters")
    cases = {**OPTIONS, **(PAIRS if args.also_pairs else {})}
    models, opts, params = {}, {}, {}
    for name, changes in cases.items():
        model = build_model(ModelConfig(**{**REFERENCE_MODEL, **changes}), 1)
        models[name] = model
        opts[name] = torch.optim.Adam(model.parameters(), lr=1e-3)
        params[name] = count_parameters(model)
    x_train = torch.randn(TRAIN_BATCH, 3, TRAIN_SIDE, TRAIN_SIDE)
    x_infer = torch.randn(1, 3, INFER_SIDE, INFER_SIDE)
    train_s: dict[str, list[float]] = {n: [] for n in cases}
    infer_s: dict[str, list[float]] = {n: [] for n in cases}
    for round_ in range(args.rounds + 1):  # round 0 warms up (allocator, oneDNN kernels)
        for name, model in models.items():
            model.train()
            start = time.perf_counter()
            for _ in range(args.steps):
                _train_step(model, opts[name], x_train)
            train = (time.perf_counter() - start) / args.steps
            model.eval()
            with torch.no_grad():
                start = time.perf_counter()
                model(x_infer)
                infer = time.perf_counter() - start
            if round_:
                train_s[name].append(train)
                infer_s[name].append(infer)
    base_train = statistics.median(train_s["plain"])
    base_infer = statistics.median(infer_s["plain"])
    print(
        f"\n{'variant':32s} {'params':>11s} {'x plain':>8s} {'train img/s':>12s} "
        f"{'x plain':>8s} {'infer ms':>9s} {'x plain':>8s}"
    )
    for name in cases:
        t, i = statistics.median(train_s[name]), statistics.median(infer_s[name])
        print(
            f"{name:32s} {params[name]:>11,} {params[name] / params['plain']:>8.2f} "
            f"{TRAIN_BATCH / t:>12.1f} {base_train / t:>8.2f} {1000 * i:>9.1f} "
            f"{i / base_infer:>8.2f}"
        )


if __name__ == "__main__":
    main()
