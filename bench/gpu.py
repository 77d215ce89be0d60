"""Benchmark 7, on a GPU: training-step throughput of a resnet34 UNet at 256 px in bf16 +
channels_last over fp32 (target >= 2x); torch.compile on over off; and an epoch fed by the real
data pipeline (decoded arrays, albumentations augmentation, DataLoader workers) over the same
epoch fed by synthetic tensors already on the GPU (target <= 1.1, the nnU-Net method).

Without CUDA it says so and measures nothing; ``--smoke`` runs the same code on the CPU at a
tiny size (to check the script, not to measure).

    python bench/gpu.py [--batch 16] [--steps 30]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
import torch

from unet_search.core.config import RunConfig
from unet_search.data.dataset import load_dataset
from unet_search.models.build import build_model
from unet_search.train.engine import build_loaders
from unet_search.train.losses import build_loss


def steps_per_s(
    model: torch.nn.Module,
    batches: Any,
    device: torch.device,
    steps: int,
    bf16: bool,
    channels_last: bool,
) -> float:
    """Training steps per second over ``steps`` steps (after 5 warm-up steps)."""
    loss_fn = build_loss(RunConfig().loss)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    cast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    it = iter(batches)
    start = 0.0
    for i in range(steps + 5):
        if i == 5:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        image, mask = next(it)
        image = image.to(device, non_blocking=True).contiguous(memory_format=fmt)
        mask = mask.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with cast:
            loss = loss_fn(model(image), mask)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def synthetic_batches(batch: int, size: int, device: torch.device) -> Any:
    image = torch.randn(batch, 3, size, size, device=device)
    mask = (torch.rand(batch, size, size, device=device) > 0.5).long()  # as the loaders give
    while True:
        yield image, mask


def real_batches(loader: Any) -> Any:
    while True:
        for batch in loader:
            yield batch["image"], batch["mask"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run (checks the script)")
    args = parser.parse_args()
    _common.header("GPU: bf16 + channels_last, torch.compile, data loading")
    if not torch.cuda.is_available() and not args.smoke:
        print("no GPU here: nothing measured")
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size, steps, batch = (256, args.steps, args.batch) if not args.smoke else (64, 2, 2)
    raw = {
        "encoder": "resnet34",
        "depth": 5,
        "upsampling": "nearest",
        "patch_size": size,
        "patches_per_epoch": steps * batch,
        "batch_size": batch,
        "loader_workers": 0 if args.smoke else 8,
        "val_fraction": 0.1,
    }
    cfg = RunConfig.from_dict(raw)

    def fresh(channels_last: bool) -> torch.nn.Module:
        torch.manual_seed(0)
        model = build_model(cfg.model, cfg.data.num_classes).to(device)
        return model.to(memory_format=torch.channels_last) if channels_last else model

    synth = synthetic_batches(batch, size, device)
    fp32 = steps_per_s(fresh(False), synth, device, steps, False, False)
    fast = steps_per_s(fresh(True), synth, device, steps, True, True)
    print(f"fp32 {fp32 * batch:.1f} img/s, bf16 + channels_last {fast * batch:.1f} img/s")
    _common.verdict("bf16 + channels_last / fp32", fast / fp32, ">= 2", fast >= 2 * fp32)

    compiled = torch.compile(fresh(True))
    on = steps_per_s(compiled, synth, device, steps, True, True)
    print(f"torch.compile on / off (bf16 + channels_last): {on / fast:.3f}")

    with tempfile.TemporaryDirectory() as tmp:
        data = _common.synthetic(Path(tmp), 64 if args.smoke else 512, size + size // 2)
        loader, _ = build_loaders(cfg, load_dataset(data, cfg.data), 0, 1)
        real = steps_per_s(fresh(True), real_batches(loader), device, steps, True, True)
    ratio = fast / real
    print(f"real pipeline {real * batch:.1f} img/s vs synthetic tensors {fast * batch:.1f} img/s")
    _common.verdict("epoch time real data / synthetic tensors", ratio, "<= 1.1", ratio <= 1.1)


if __name__ == "__main__":
    main()
