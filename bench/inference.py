"""Benchmark 6, inference: ``load_model(...).predict`` on odd-sized images over the raw
model's forward pass on the same tensors (target >= 0.8), and the MLflow pyfunc path over the
direct one, for resize-mode models; for a patch-mode model, the sliding-window predict over
the raw forward on exactly the tiles it cuts (target >= 0.8), and flips. CPU, 2 threads.

    python bench/inference.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import _common
import cv2
import mlflow
import numpy as np
import torch

from unet_search.core.config import RunConfig
from unet_search.models.build import build_model, save_model_dir
from unet_search.models.card import ModelCard
from unet_search.models.unet import mirror_pad
from unet_search.serve.inference import load_model
from unet_search.serve.packaging import pyfunc_model
from unet_search.tracking.models import save_pyfunc
from unet_search.train.sliding import preprocessing_of, tile_starts
from unet_search.train.transforms import to_tensor

CASES = {  # name: run config
    "plain unet (seed_keras) @64": {"preset": "seed_keras", "image_size": 64},
    "smp unet resnet18 @128": {
        "encoder": "resnet18",
        "depth": 5,
        "upsampling": "nearest",
        "input_mode": "resize",
        "image_size": 128,
    },
}
N_IMAGES = 32


def odd_images(rng: np.random.Generator) -> list[np.ndarray]:
    """Images of odd, different sizes (as a downstream app sends them)."""
    sizes = [(int(rng.integers(97, 521)), int(rng.integers(97, 521))) for _ in range(N_IMAGES)]
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def measure(
    raw: dict[str, object], images: list[np.ndarray], same: np.ndarray
) -> dict[str, float]:
    """Median seconds of: raw forward, predict (odd sizes), direct and pyfunc (same size)."""
    cfg = RunConfig.from_dict(raw)
    model = build_model(cfg.model, cfg.data.num_classes).eval()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        save_model_dir(
            model_dir, model, ModelCard(cfg.model, cfg.data.num_classes, preprocessing_of(cfg))
        )
        predictor = load_model(model_dir)
        size, pre = cfg.data.image_size, predictor.pre
        # The raw side: the tensors predict builds, ready in memory; only model(batch).
        batches = [
            torch.stack(
                [
                    to_tensor(
                        cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA),
                        pre.normalization,
                        pre.in_channels,
                    )
                    for img in images[i : i + 16]
                ]
            )
            for i in range(0, len(images), 16)
        ]

        def raw_forward() -> None:
            with torch.no_grad():
                for batch in batches:
                    predictor.model(batch)

        pyfunc_dir = Path(tmp) / "pyfunc"
        save_pyfunc(pyfunc_model(model_dir), pyfunc_dir)
        pyfunc = mlflow.pyfunc.load_model(str(pyfunc_dir))
        return _common.interleaved(
            {
                "raw": raw_forward,
                "predict": lambda: predictor.predict(images),
                "direct_same": lambda: predictor.predict(same),
                "pyfunc_same": lambda: pyfunc.predict(same),
            },
            repeats=5,
        )


PATCH_CASE = {"depth": 4, "base_filters": 16, "patch_size": 128}


def measure_patch(images: list[np.ndarray]) -> dict[str, float]:
    """Median seconds of: the raw forward over exactly the tiles the sliding window cuts,
    predict (Gaussian-weighted sliding window), and predict with flips."""
    cfg = RunConfig.from_dict(PATCH_CASE)
    model = build_model(cfg.model, 1).eval()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        save_model_dir(model_dir, model, ModelCard(cfg.model, 1, preprocessing_of(cfg)))
        predictor = load_model(model_dir)
        flips = load_model(model_dir, tta="flips")
        tiling, tiles = predictor.tiling, []
        for img in images:
            x = to_tensor(img, "unit", 3)
            h, w = x.shape[-2:]
            th, tw = tiling.patch
            x = mirror_pad(x[None], 0, max(th - h, 0), 0, max(tw - w, 0))[0]
            for y in tile_starts(x.shape[-2], th, tiling.overlap):
                for xs in tile_starts(x.shape[-1], tw, tiling.overlap):
                    tiles.append(x[:, y : y + th, xs : xs + tw])
        batches = [torch.stack(tiles[i : i + 8]) for i in range(0, len(tiles), 8)]

        def raw_forward() -> None:
            with torch.no_grad():
                for batch in batches:
                    predictor.model(batch)

        print(f"{len(tiles)} tiles of {tiling.patch[0]} px for {len(images)} images", flush=True)
        return _common.interleaved(
            {
                "raw": raw_forward,
                "predict": lambda: predictor.predict(images),
                "flips": lambda: flips.predict(images),
            },
            repeats=3,
        )


def main() -> None:
    _common.header("inference: predict vs raw forward; pyfunc vs direct")
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    images = odd_images(rng)
    same = rng.integers(0, 256, (N_IMAGES, 333, 517, 3), dtype=np.uint8)
    for name, raw in CASES.items():
        t = measure(raw, images, same)
        print(f"## {name}")
        print(
            f"raw forward {N_IMAGES / t['raw']:.1f} img/s, predict (odd sizes) "
            f"{N_IMAGES / t['predict']:.1f} img/s"
        )
        ratio = t["raw"] / t["predict"]
        _common.verdict("predict / raw forward", ratio, ">= 0.8", ratio >= 0.8)
        ratio = t["direct_same"] / t["pyfunc_same"]
        print(f"pyfunc / direct (N={N_IMAGES}, 333x517): {ratio:.3f}", flush=True)
    print("## patch mode: plain UNet d4 f16, 128-px tiles, overlap 0.5")
    t = measure_patch(images[:8])
    ratio = t["raw"] / t["predict"]
    _common.verdict(
        "sliding-window predict / raw forward (same tiles)", ratio, ">= 0.8", ratio >= 0.8
    )
    print(f"predict with flips / without: {t['flips'] / t['predict']:.2f}x the time", flush=True)


if __name__ == "__main__":
    main()
