"""Benchmark 14, ONNX: ``predict`` through onnxruntime over the same predict through
PyTorch (the same tiles, TTA and decoding; only the network's runtime differs), for the
from-scratch UNet and an smp resnet18 UNet in patch mode, on odd-sized images; both at the
same thread count, in interleaved rounds. Reported as PyTorch seconds / onnxruntime seconds
(target >= 1.0: onnxruntime no slower), with the export's time and largest logit difference.

    python bench/onnx_runtime.py [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import _common
import numpy as np
import torch

from unet_search.core.config import RunConfig
from unet_search.models.build import build_model, save_model_dir
from unet_search.models.card import ModelCard
from unet_search.serve.inference import Predictor
from unet_search.serve.onnx import export_onnx
from unet_search.train.sliding import preprocessing_of

CASES = {  # name: run config (patch mode, the planned default's shape)
    "scratch unet d4 f16 @128": {"depth": 4, "base_filters": 16, "patch_size": 128},
    "smp unet resnet18 d4 @128": {"encoder": "resnet18", "depth": 4, "patch_size": 128},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _common.header(f"bench 14: onnxruntime / PyTorch predict, {args.threads} threads")
    rng = np.random.default_rng(0)
    sizes = [(int(rng.integers(200, 520)), int(rng.integers(200, 520))) for _ in range(8)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    print("| model | export s | max logit diff | PyTorch s | onnxruntime s | PyTorch / ORT |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, raw in CASES.items():
        cfg = RunConfig.from_dict(raw)
        torch.manual_seed(0)
        model = build_model(cfg.model, cfg.data.network_classes).eval()
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "model"
            classes = cfg.data.network_classes
            save_model_dir(folder, model, ModelCard(cfg.model, classes, preprocessing_of(cfg)))
            start = time.perf_counter()
            diff = export_onnx(folder, folder / "onnx", images[0])
            exported = time.perf_counter() - start
            sides = {
                "torch": Predictor.from_dir(folder),
                "onnx": Predictor.from_dir(folder, runtime="onnx"),
            }
            for predictor in sides.values():
                predictor.predict(images[:1])  # warm-up
            times: dict[str, list[float]] = {"torch": [], "onnx": []}
            for _ in range(args.rounds):
                for side, predictor in sides.items():
                    start = time.perf_counter()
                    predictor.predict(images)
                    times[side].append(time.perf_counter() - start)
        t, o = statistics.median(times["torch"]), statistics.median(times["onnx"])
        print(f"| {name} | {exported:.1f} | {diff:.1e} | {t:.2f} | {o:.2f} | **{t / o:.3f}** |")


if __name__ == "__main__":
    main()
