"""Benchmark 13, instances: what each target gives as objects, and what decoding costs.

(a) Per synthetic style (touching nuclei in the fluorescence and hard styles, cells tiling the
    plane behind membranes one pixel thin), a small UNet trained with each target
    (``semantic``, ``boundary``, ``distance``, and ``boundary`` with the original UNet's
    border weight map, ``border_weight`` 10) at the same budget; held-out images scored
    through the predictor ``predict`` uses: Dice of the masks, DSB2018 score and AP50 of the
    instances (decoded as the run chose on its validation images, as a search's trial does).
(b) Decoding time per 512 x 512 image over the forward pass (the sliding-window logits) of
    the boundary model, interleaved (target: decoding under half the forward).
(c) With ``--data``, real sets built by ``shared/realdata`` (``mnfinder_nuclei``,
    ``scellseg_cells``; their own held-out images and instance labels) in place of the
    styles: the same variants, each at the plan's scale and normalization for the set
    (``+percentile``: each image by its percentiles instead).

    python bench/instances.py [--styles fluorescence hard epithelium] [--epochs 12]
        [--variants semantic boundary distance boundary+border boundary+percentile]
        [--data REAL_SET ...] [--seeds 0 1 2]

``--seeds``: each variant trained once per training seed (the patches drawn, the weights'
start), a row each: one seed's difference between two targets is often within the spread
of the seeds.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import _common
import numpy as np
import torch

from unet_search.core.config import RunConfig
from unet_search.core.sections import DataConfig
from unet_search.data.dataset import load_dataset
from unet_search.data.synthetic import STYLES, make_synthetic, render_scene
from unet_search.models.build import build_model, save_model_dir
from unet_search.models.card import ModelCard
from unet_search.serve.inference import Predictor
from unet_search.train.engine import (
    build_loaders,
    fit,
    new_training_state,
    seed_everything,
    val_indices,
)
from unet_search.train.instances import choose_decoding, decode_instances
from unet_search.train.losses import loss_of
from unet_search.train.metrics import instance_scores
from unet_search.train.sliding import predict_logits, preprocessing_of, tiling_of

CPU = torch.device("cpu")


# name -> the leaves that differ from the semantic target's run
VARIANTS: dict[str, dict[str, object]] = {
    "semantic": {"target": "semantic"},
    "boundary": {"target": "boundary"},
    "distance": {"target": "distance"},
    "boundary+border": {"target": "boundary", "border_weight": 10.0},
    "boundary+percentile": {"target": "boundary", "normalization": "percentile"},
}


def planned(data: Path) -> dict[str, object]:
    """The plan's scale and normalization for a real set (its objects' size, its bits)."""
    from unet_search.plan.planner import make_plan, parse_budget
    from unet_search.plan.profile import profile_data

    arrays = load_dataset(data, DataConfig(val_fraction=0.2))
    plan = make_plan(profile_data(arrays), parse_budget("cpu-quick"))
    return {"scale": plan.scale, "normalization": plan.normalization}


def train(
    data: Path,
    variant: str,
    epochs: int,
    out: Path,
    base: dict[str, object] | None = None,
    seed: int = 0,
) -> Path:
    """A depth-3, 16-filter UNet on 96-px patches, 128 an epoch (``base``: other leaves),
    training seed ``seed``; its kept weights saved with the decoding chosen on its
    validation images. Returns the model folder."""
    cfg = RunConfig.from_dict(
        {
            **{"depth": 3, "base_filters": 16, "batch_size": 8, "lr": 3e-3, "epochs": epochs},
            **{"patch_size": 96, "patches_per_epoch": 128, "val_fraction": 0.2},
            **{"dsb_every": 0, "aug_strength": 0.3, "seed": seed},
            **{**(base or {}), **VARIANTS[variant]},
        }
    )
    target = cfg.data.target
    arrays = load_dataset(data, cfg.data)
    seed_everything(seed)
    loader, val = build_loaders(cfg, arrays, rank=0, world=1)
    model = build_model(cfg.model, cfg.data.network_classes)
    state = new_training_state(model, cfg, len(loader), CPU)
    fit(state, cfg, loader, val, loss_of(cfg), CPU)
    module = state.module
    module.load_state_dict(state.best_state or module.state_dict())
    picks = [int(i) for i in val_indices(cfg, arrays)]
    logits = (
        predict_logits(module, arrays.image(i), tiling_of(cfg), val.normalization, 3, CPU)
        for i in picks
    )
    truths = [arrays.instances(i) for i in picks]
    decoding, _ = choose_decoding(logits, truths, target, cfg.train.threshold)  # type: ignore[arg-type]
    folder = out / f"model-{variant}-{seed}"
    pre = preprocessing_of(cfg, val.normalization, decoding)
    save_model_dir(folder, module, ModelCard(cfg.model, cfg.data.network_classes, pre))
    return folder


def score(folder: Path, held_out: Path) -> dict[str, float]:
    """Dice, DSB score and AP50 of a model on held-out images, through the predictor."""
    arrays = load_dataset(held_out, DataConfig(test_fraction=0.0))
    predictor = Predictor.from_dir(folder)
    images = [arrays.image(i) for i in range(len(arrays))]
    dices, dsb, ap50 = [], [], []
    for i, (mask, objects) in enumerate(predictor.predict_both(images)):
        truth = arrays.mask(i) > 0
        dices.append(2 * (mask.astype(bool) & truth).sum() / max(mask.sum() + truth.sum(), 1))
        true_objects = arrays.instances(i)
        assert true_objects is not None  # a binary DSB2018-layout set
        d, a = instance_scores(objects, true_objects)
        dsb.append(d)
        ap50.append(a)
    return {
        "dice": float(np.mean(dices)),
        "dsb": float(np.mean(dsb)),
        "ap50": float(np.mean(ap50)),
    }


def decoding_cost(folder: Path, image: np.ndarray) -> tuple[float, float]:
    """Median seconds of the forward pass and of decoding, interleaved, on ``image``."""
    predictor = Predictor.from_dir(folder)
    pre = predictor.pre
    logits = predictor.predict_logits([image])[0]
    times = _common.interleaved(
        {
            "forward": lambda: predictor.predict_logits([image]),
            "decode": lambda: decode_instances(logits, pre.target, pre.threshold, pre.decoding),
        },
        repeats=5,
    )
    return times["forward"], times["decode"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--styles", nargs="+", default=list(STYLES), choices=list(STYLES))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--data", type=Path, nargs="+", default=[], help="real sets instead")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.data:
        real(args.data, args.variants, args.epochs, args.seeds)
        return
    _common.header(f"instances: each target's objects, {args.epochs} epochs of 128 patches")
    print(
        "| style | variant | seed | Dice | DSB score | AP50 |\n|---|---|---:|---:|---:|---:|",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        boundary: tuple[str, Path] | None = None
        for style in args.styles:
            kind = {"size": 200, "max_size": 300, "object_px": 12, "style": style}
            make_synthetic(root / style / "data", n=20, seed=11, **kind)
            make_synthetic(root / style / "held_out", n=6, seed=12, **kind)
            for variant in args.variants:
                for seed in args.seeds:
                    data = root / style / "data"
                    folder = train(data, variant, args.epochs, root / style, seed=seed)
                    s = score(folder, root / style / "held_out")
                    print(
                        f"| {style} | {variant} | {seed} | {s['dice']:.4f} | {s['dsb']:.4f} | "
                        f"{s['ap50']:.4f} |",
                        flush=True,
                    )
                    boundary = (style, folder) if variant == "boundary" else boundary
        if boundary is not None:
            style, folder = boundary
            rgba, _ = render_scene(np.random.default_rng(0), 512, 512, 12, style)
            forward, decode = decoding_cost(folder, np.ascontiguousarray(rgba[..., :3]))
            print(
                f"\n512x512 {style}, boundary model: forward {forward * 1000:.0f} ms, decoding "
                f"{decode * 1000:.0f} ms, decoding / forward {decode / forward:.3f} "
                "(target < 0.5)"
            )


def real(sets: list[Path], variants: list[str], epochs: int, seeds: list[int]) -> None:
    """(c): each variant on each real set, scored on the set's own held-out images."""
    _common.header(f"instances on real sets: each target's objects, {epochs} epochs")
    print(
        "| set | variant | seed | plan | Dice | DSB score | Otsu Dice |\n"
        "|---|---|---:|---|---:|---:|---:|"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for folder in sets:
            train_dir, heldout = _common.real_set(folder)
            base = planned(train_dir)
            for variant, seed in ((v, s) for v in variants for s in seeds):
                model = train(train_dir, variant, epochs, Path(tmp) / folder.name, base, seed)
                s = _common.score_heldout(model, heldout)
                print(
                    f"| {folder.name} | {variant} | {seed} | scale {base['scale']:g}, "
                    f"{VARIANTS[variant].get('normalization', base['normalization'])} | "
                    f"{s['dice']:.4f} | {s.get('dsb', float('nan')):.4f} | {s['otsu']:.4f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
