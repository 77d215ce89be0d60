"""The ``unet-search`` command line: thin subcommands over the package.

Exit codes: 0 success, 1 user error (bad data, bad config, impossible resources) with one
message and no traceback, 2 usage error (argparse).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from unet_search.config import UserError

__all__ = ["build_parser", "main"]

EXAMPLES = {
    "make-data": "example: unet-search make-data synthetic data/synth --n 200 --size 128",
    "check-data": "example: unet-search check-data data/stage1_train --set image_size=128",
    "train": (
        "example: unet-search train --data data/synth --set preset=seed_keras "
        "--set epochs=5 --workers 2"
    ),
    "models": "example: unet-search models",
}


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="run config YAML (sections or flat keys)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. epochs=2 or model.depth=3; "
        "preset=seed_keras applies a preset",
    )


def _load_config(args: argparse.Namespace, **leaves: object):  # type: ignore[no-untyped-def]
    from unet_search.config import load_run_config

    return load_run_config(args.config, args.overrides, **leaves)


def cmd_make_data(args: argparse.Namespace) -> int:
    from unet_search.synthetic import make_synthetic

    out: Path = args.out
    if out.exists() and any(out.iterdir()):
        raise UserError(
            f"{out}: already exists and is not empty; choose a new folder (nothing was written)."
        )
    ids = make_synthetic(out, n=args.n, size=args.size, seed=args.seed)
    print(f"wrote {len(ids)} synthetic images with instance masks to {out} (DSB2018 layout)")
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from unet_search.config import work_dir
    from unet_search.data import load_dataset

    cfg = _load_config(args)
    arrays = load_dataset(args.data, cfg.data, work_dir() / "cache")
    stats = arrays.stats
    print(f"dataset      {args.data} ({stats['layout']} layout)")
    print(f"images       {stats['count']}")
    sizes = ", ".join(f"{k} x{v}" for k, v in list(stats["sizes"].items())[:8])
    print(f"sizes        {sizes}{' ...' if len(stats['sizes']) > 8 else ''}")
    print(f"foreground   {stats['foreground_ratio']:.3f} of pixels")
    if stats.get("instances_per_image") is not None:
        print(f"instances    {stats['instances_per_image']:.1f} per image (after resizing)")
    print(
        f"fingerprint  {arrays.fingerprint} (image_size={cfg.data.image_size}, "
        f"num_classes={cfg.data.num_classes})"
    )
    print("valid: every image decodes and every mask matches its image")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from unet_search.config import work_dir
    from unet_search.data import load_dataset
    from unet_search.models import validate_model_config
    from unet_search.tracking import resolve_tracking_uri
    from unet_search.worker import run_training

    cfg = _load_config(args, num_workers=args.workers, gpus_per_worker=args.gpus_per_worker)
    validate_model_config(cfg.model)
    workdir = work_dir()
    arrays = load_dataset(args.data, cfg.data, workdir / "cache")  # all checks before Ray
    outcome = run_training(cfg, arrays, args.data, workdir, args.experiment, args.run_name)
    uri = resolve_tracking_uri(workdir)
    shown = {
        k: round(v, 4)
        for k, v in outcome.metrics.items()
        if k in ("epoch", "train_loss", "val_loss", "val_dice", "val_iou", "val_dsb_score")
    }
    print(f"run id       {outcome.run_id}")
    print(f"parameters   {outcome.num_parameters:,}")
    print(f"final        {json.dumps(shown)}")
    print(
        f"MLflow UI    mlflow ui --backend-store-uri {uri}  then open "
        f"http://127.0.0.1:5000/#/experiments/{outcome.experiment_id}/runs/{outcome.run_id}"
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from unet_search.config import PRESETS
    from unet_search.models import ARCHITECTURES, preset_parameter_count, smp_encoders

    print("architectures (model.arch):")
    for name, text in ARCHITECTURES.items():
        print(f"  {name:16s} {text}")
    print("\npresets (--set preset=NAME), trainable parameters:")
    for name in PRESETS:
        print(f"  {name:16s} {preset_parameter_count(name):>12,}")
    encoders = smp_encoders()
    print(
        f"\nencoders (model.encoder): none (from scratch) or one of {len(encoders)} smp encoders:"
    )
    for i in range(0, len(encoders), 6):
        print("  " + "  ".join(encoders[i : i + 6]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unet-search",
        description="Find the best UNet for your segmentation data with Ray, Optuna and MLflow.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES[name])

    p = add("make-data", "write a synthetic nuclei-like dataset (DSB2018 layout)")
    p.add_argument("kind", choices=["synthetic"])
    p.add_argument("out", type=Path)
    p.add_argument("--n", type=int, default=200, help="number of images (default 200)")
    p.add_argument("--size", type=int, default=128, help="image height in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_data)

    p = add("check-data", "validate a dataset and print its summary and fingerprint")
    p.add_argument("data", type=Path)
    _config_args(p)
    p.set_defaults(func=cmd_check_data)

    p = add("train", "train one configuration with Ray Train, tracked as one MLflow run")
    p.add_argument("--data", type=Path, required=True, help="dataset folder")
    _config_args(p)
    p.add_argument("--workers", type=int, help="Ray Train workers (DDP); sets num_workers")
    p.add_argument("--gpus-per-worker", type=float, help="GPUs per worker; sets gpus_per_worker")
    p.add_argument("--experiment", default="unet-search-train", help="MLflow experiment name")
    p.add_argument("--run-name", help="MLflow run name (default: from the architecture)")
    p.set_defaults(func=cmd_train)

    p = add("models", "list architectures, presets (with parameter counts) and encoders")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
