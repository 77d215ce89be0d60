"""The ``unet-search`` command line: thin subcommands over the package.

Exit codes: 0 success, 1 user error (bad data, bad config, impossible resources) with one
message and no traceback, 2 usage error (argparse).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unet_search.config import UserError

__all__ = ["build_parser", "main"]

EXAMPLES = {
    "make-data": "example: unet-search make-data synthetic data/synth --n 200 --size 128",
    "check-data": "example: unet-search check-data data/stage1_train --set val_fraction=0.2",
    "train": (
        "example: unet-search train --data data/synth --set preset=seed_keras "
        "--set epochs=5 --workers 2"
    ),
    "models": "example: unet-search models",
    "search": (
        "example: unet-search search --space search_spaces/quick.yaml --data data/synth "
        "--set epochs=2 --set search.num_samples=4"
    ),
    "best": "example: unet-search best quick-1 --top 5",
    "report": "example: unet-search report quick-1   (then open the printed index.html)",
    "submit": (
        "example: unet-search submit --address http://127.0.0.1:8265 --space "
        "search_spaces/quick.yaml --data /shared/data --wait"
    ),
    "jobs": "example: unet-search jobs logs raysubmit_XYZ",
    "resume": "example: unet-search resume quick-3",
    "plan": "example: unet-search plan data/nuclei --out search_spaces/nuclei.yaml",
    "predict": (
        "example: unet-search predict --model models:/unet-quick@champion "
        "--input data/new_images --output masks/"
    ),
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


def _budget_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--budget",
        help="compute budget of the plan that fills `auto` settings: cpu-quick | cpu | "
        "gpu-<GiB> (default: cpu-quick without a GPU, else the GPU's memory)",
    )


def cmd_make_data(args: argparse.Namespace) -> int:
    from unet_search.synthetic import make_synthetic

    out: Path = args.out
    if out.exists() and any(out.iterdir()):
        raise UserError(
            f"{out}: already exists and is not empty; choose a new folder (nothing was written)."
        )
    for flag, value in (("--n", args.n), ("--size", args.size), ("--max-size", args.max_size)):
        if value is not None and value < (16 if flag != "--n" else 1):
            raise UserError(
                f"{flag} must be at least {16 if flag != '--n' else 1}, but got {value}."
            )
    if args.max_size is not None and args.max_size < args.size:
        raise UserError(f"--max-size ({args.max_size}) must be at least --size ({args.size}).")
    if args.object_px is not None and not 3 <= args.object_px <= 200:
        raise UserError(f"--object-px must be in [3, 200], but got {args.object_px}.")
    ids = make_synthetic(
        out,
        n=args.n,
        size=args.size,
        seed=args.seed,
        max_size=args.max_size,
        object_px=args.object_px,
        style=args.style,
        classes=args.classes,
    )
    if args.classes > 2:
        print(
            f"wrote {len(ids)} synthetic images with {args.classes}-class masks to {out} "
            f"(images/masks layout; train with --set num_classes={args.classes})"
        )
    else:
        print(f"wrote {len(ids)} synthetic images with instance masks to {out} (DSB2018 layout)")
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from unet_search.config import provisional_config, run_leaves, work_dir
    from unet_search.data import load_dataset, materialize

    cfg = provisional_config(*run_leaves(args.config, args.overrides))
    arrays = load_dataset(
        materialize(args.data, work_dir() / "cache"), cfg.data, work_dir() / "cache"
    )
    stats = arrays.stats
    print(f"dataset      {args.data} ({stats['layout']} layout)")
    print(f"images       {stats['count']}")
    sizes = ", ".join(f"{k} x{v}" for k, v in list(stats["sizes"].items())[:8])
    print(f"sizes        {sizes}{' ...' if len(stats['sizes']) > 8 else ''}")
    print(f"foreground   {stats['foreground_ratio']:.3f} of pixels")
    if stats.get("instances_per_image") is not None:
        print(f"instances    {stats['instances_per_image']:.1f} per image")
    data = cfg.data
    print(
        f"fingerprint  {arrays.fingerprint} (num_classes={data.num_classes}, "
        f"val_fraction={data.val_fraction}, split_seed={data.split_seed})"
    )
    print("valid: every image decodes and every mask matches its image")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from unet_search.config import provisional_config, run_leaves, work_dir
    from unet_search.data import load_dataset, materialize
    from unet_search.models import validate_model_config
    from unet_search.plan import parse_budget, plan_run
    from unet_search.tracking import resolve_tracking_uri, ui_hint
    from unet_search.worker import run_training

    leaves, source = run_leaves(
        args.config, args.overrides, num_workers=args.workers, gpus_per_worker=args.gpus_per_worker
    )
    if args.budget is not None:
        parse_budget(args.budget)
    provisional = provisional_config(leaves, source)  # `auto` values stand in until planned
    validate_model_config(provisional.model)
    workdir = work_dir()
    data = materialize(args.data, workdir / "cache")
    arrays = load_dataset(data, provisional.data, workdir / "cache")
    cfg, plan = plan_run(leaves, source, arrays, args.budget)  # `auto` values, from the data
    validate_model_config(cfg.model)  # all checks before Ray
    if plan is not None:
        print(plan.text(), flush=True)
    outcome = run_training(cfg, arrays, data, workdir, args.experiment, args.run_name)
    uri = resolve_tracking_uri(workdir)
    shown = {
        k: round(v, 4)
        for k, v in outcome.metrics.items()
        if k in ("epoch", "train_loss", "val_loss", "val_dice", "val_iou", "val_dsb_score")
        or k.startswith("val_dice_c")
    }
    print(f"run id       {outcome.run_id}")
    print(f"parameters   {outcome.num_parameters:,}")
    print(f"final        {json.dumps(shown)}")
    print(f"MLflow UI    {ui_hint(uri, outcome.experiment_id, outcome.run_id)}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from unet_search.config import provisional_config, run_leaves, work_dir
    from unet_search.data import load_dataset, materialize
    from unet_search.plan import data_stats, default_budget, make_plan, parse_budget

    budget = parse_budget(args.budget) if args.budget else default_budget()
    out: Path | None = args.out
    if out is not None:
        if out.exists():
            raise UserError(f"{out}: already exists; choose a new file (nothing was written).")
        if out.suffix not in (".yaml", ".yml"):
            raise UserError(f"{out}: --out must be a .yaml file (a search space).")
        if not out.parent.is_dir():
            raise UserError(f"{out.parent}: folder does not exist (nothing was written).")
    cfg = provisional_config(*run_leaves(args.config, args.overrides))
    cache = work_dir() / "cache"
    arrays = load_dataset(materialize(args.data, cache), cfg.data, cache)
    plan = make_plan(data_stats(arrays, cfg.data), budget)
    print(f"dataset            {args.data} (fingerprint {arrays.fingerprint})")
    print(plan.text())
    if out is not None:
        from unet_search.spaces import check_name, load_space_text

        name = check_name(out.stem, str(out), "the file name (it names the space)")
        text = plan.space_yaml(name)
        load_space_text(text, out.name)  # a valid space, before anything is written
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}: search it with `unet-search search --space {out} --data {args.data}`")
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


def cmd_search(args: argparse.Namespace) -> int:
    workdir = _job_work_dir(args.storage)  # a bad --storage fails before the heavy imports
    from unet_search.data import load_dataset, materialize
    from unet_search.search import run_search
    from unet_search.spaces import check_name, load_space

    spec = load_space(args.space, args.overrides)  # every check before Ray starts
    if args.name is not None:
        check_name(args.name, "search", "--name")
    data = materialize(args.data, workdir / "cache")
    arrays = load_dataset(data, spec.base_config().data, workdir / "cache")
    _leave_job_working_dir(workdir)
    out = run_search(
        spec,
        arrays,
        data,
        workdir,
        args.name,
        args.model_name,
        args.address,
        args.storage,
        args.overrides,
    )
    _report(out, spec.settings.mode, workdir)
    return 0


def _job_work_dir(storage: str | None) -> Path:
    """The work dir of ``search`` / ``resume``: see :func:`unet_search.config.work_dir`; inside
    a Ray job it says where it is (it is not the job's current directory)."""
    from unet_search.config import in_ray_job, work_dir

    workdir = work_dir(storage)
    if in_ray_job():
        print(f"work dir     {workdir} (set UNET_SEARCH_HOME to choose another)", flush=True)
    return workdir


def _leave_job_working_dir(workdir: Path) -> None:
    """A Ray job's working_dir (the shipped space file) may be garbage-collected by Ray while
    the search runs; once everything is loaded, the driver works from the work dir."""
    from unet_search.config import in_ray_job

    if in_ray_job():
        workdir.mkdir(parents=True, exist_ok=True)
        os.chdir(workdir)


def _report(out: Any, mode: str, workdir: Path) -> None:
    from unet_search.config import in_ray_job
    from unet_search.report import REPORT_ARTIFACT_DIR
    from unet_search.tracking import SEARCH_LOG_DIR, rank_trials, resolve_tracking_uri, ui_hint

    metric = out.metric
    counts = ", ".join(
        f"{sum(t.status == s for t in out.trials)} {s.lower()}"
        for s in ("FINISHED", "KILLED", "FAILED")
    )
    print(f"\nsearch {out.search_id}: {len(out.trials)} trials {counts}")
    _print_trials(rank_trials(out.trials, mode)[:8], metric)
    if out.best and out.baseline and out.best.value is not None and out.baseline.value is not None:
        print(
            f"best {metric} {out.best.value:.4f} ({out.best.name}) vs seed baseline "
            f"{out.baseline.value:.4f}: {out.best.value - out.baseline.value:+.4f}"
        )
    if out.otsu_val_dice is not None:
        versus = ""
        if out.best and out.best.value is not None and metric == "val_dice":
            versus = f": best {out.best.value - out.otsu_val_dice:+.4f}"
        print(f"Otsu threshold val_dice {out.otsu_val_dice:.4f} on the same images{versus}")
    _print_held_out(out.test)
    reg = out.registration
    if reg is not None:
        verb = "is the new champion" if reg.alias == "champion" else "registered as challenger"
        print(f"model {reg.name} v{reg.version} {verb}: {reg.reason}")
        print(
            f"predict      unet-search predict --model models:/{reg.name}@champion "
            "--input IMAGES --output MASKS"
        )
    # Also artifacts of the search's MLflow run: a job's driver node (a KubeRay RayJob's
    # cluster) may be gone, or out of the user's reach, once the search has ended.
    where = "on the job's driver node; " if in_ray_job() else ""
    run = f"of run {out.parent_run_id}"
    if out.report is not None:
        print(f"report       {out.report}  ({where}also in MLflow: {REPORT_ARTIFACT_DIR}/ {run})")
    print(
        f"search log   {out.log}  ({where}also in MLflow: {SEARCH_LOG_DIR}/{out.log.name} {run})"
    )
    uri = resolve_tracking_uri(workdir)
    print(f"MLflow UI    {ui_hint(uri, out.experiment_id, out.parent_run_id)}")


def cmd_resume(args: argparse.Namespace) -> int:
    workdir = _job_work_dir(args.storage)  # a bad --storage fails before the heavy imports
    from unet_search.data import load_dataset
    from unet_search.search import resume_search
    from unet_search.spaces import check_name, load_space_text
    from unet_search.tracking import read_search_state, require_reachable, resolve_tracking_uri

    check_name(args.name, "resume", "NAME")
    uri = resolve_tracking_uri(workdir, create=False)
    require_reachable(uri)
    state = read_search_state(uri, args.name)
    spec = load_space_text(state["space_source"], state["space_file"], state["overrides"])
    arrays = load_dataset(Path(state["data_dir"]), spec.base_config().data, workdir / "cache")
    _leave_job_working_dir(workdir)
    out = resume_search(state, spec, arrays, workdir, args.address, args.storage)
    _report(out, spec.settings.mode, workdir)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from ray.job_submission import JobStatus

    from unet_search.jobs import follow, submit_search
    from unet_search.spaces import load_space

    load_space(args.space, args.overrides)  # a bad space fails here, not on the cluster
    job_id = submit_search(
        args.address,
        args.space,
        args.data,
        name=args.name,
        model_name=args.model_name,
        storage=args.storage,
        overrides=args.overrides,
    )
    print(f"submitted job {job_id}", flush=True)
    if not args.wait:
        print(f"follow it   unet-search jobs logs {job_id}")
        return 0
    status = follow(args.address, job_id)
    print(f"job {job_id} {status.value}")
    return 0 if status == JobStatus.SUCCEEDED else 1


def cmd_jobs(args: argparse.Namespace) -> int:
    from unet_search.jobs import client

    jobs = client(args.address)
    try:
        if args.action == "status":
            print(jobs.get_job_status(args.job_id).value)
        elif args.action == "logs":
            print(jobs.get_job_logs(args.job_id), end="")
        else:
            print("stopped" if jobs.stop_job(args.job_id) else "already ended")
    except RuntimeError as err:  # an unknown job id and the like
        raise UserError(f"job {args.job_id}: {err}") from None
    return 0


def _print_trials(trials: Sequence[Any], metric: str) -> None:
    print(f"  {'trial':32s} {'status':9s} {'best ' + metric:>14s} {'epochs':>6s}")
    for t in trials:
        value = "-" if t.value is None else f"{t.value:.4f}"
        print(f"  {t.name[:32]:32s} {t.status:9s} {value:>14s} {t.epochs:>6d}")


def cmd_best(args: argparse.Namespace) -> int:
    from unet_search.config import work_dir
    from unet_search.tracking import resolve_tracking_uri, search_trials

    uri = resolve_tracking_uri(work_dir(), create=False)
    metric, trials, held_out = search_trials(uri, args.name)
    _print_trials(trials[: args.top], metric)
    _print_held_out(held_out)
    return 0


def _print_held_out(scores: dict[str, float]) -> None:
    from unet_search.tracking import held_out_text

    text = held_out_text(scores)
    if text is not None:
        print(f"held-out test  {text}: the best trial's kept model, images no choice saw")


def cmd_report(args: argparse.Namespace) -> int:
    from unet_search.config import work_dir
    from unet_search.report import write_report
    from unet_search.spaces import check_name
    from unet_search.tracking import find_search, resolve_tracking_uri

    check_name(args.name, "report", "NAME")
    workdir = work_dir()
    uri = resolve_tracking_uri(workdir, create=False)
    find_search(uri, args.name)  # an unknown name fails here, before anything is written
    path = write_report(uri, args.name, workdir / "reports" / args.name, log=args.log)
    print(f"report       {path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from unet_search.data import IMAGE_SUFFIXES
    from unet_search.inference import load_model

    source: Path = args.input
    if not source.exists():
        raise UserError(f"{source}: input does not exist.")
    files = (
        [source]
        if source.is_file()
        else sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    )
    if not files:
        raise UserError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) found.")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible to this process.")
    predictor = load_model(args.model, device=device, tta=args.tta)
    binary = int(predictor.pre["num_classes"]) == 1
    args.output.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(files), 16):
        chunk = files[start : start + 16]
        for path, mask in zip(chunk, predictor.predict(chunk), strict=True):
            Image.fromarray((mask * 255 if binary else mask).astype(np.uint8)).save(
                args.output / f"{path.stem}.png"
            )
    print(f"wrote {len(files)} mask(s) to {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unet-search",
        description="Find the best UNet for your segmentation data with Ray, Optuna and MLflow.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES[name])

    p = add("make-data", "write a synthetic nuclei-like dataset (DSB2018 layout, or multi-class)")
    p.add_argument("kind", choices=["synthetic"])
    p.add_argument("out", type=Path)
    p.add_argument("--n", type=int, default=200, help="number of images (default 200)")
    p.add_argument("--size", type=int, default=128, help="image height in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-size",
        type=int,
        help="draw each image's height and width from [--size, --max-size] (large, non-square)",
    )
    p.add_argument(
        "--object-px",
        type=float,
        help="nuclei about this many pixels across, whatever the image size "
        "(default: they grow with the image)",
    )
    p.add_argument(
        "--style",
        choices=["hard", "fluorescence"],
        default="hard",
        help="hard: built to defeat a plain threshold (default); fluorescence: bright nuclei "
        "on a dark, uneven background, where Otsu is strong",
    )
    p.add_argument(
        "--classes",
        type=int,
        choices=[2, 3, 4],
        default=2,
        help="2: binary, one mask per nucleus (DSB2018 layout, default); 3 or 4: each nucleus "
        "one of the foreground classes, stained apart, class-index masks (images/masks layout)",
    )
    p.set_defaults(func=cmd_make_data)

    p = add("check-data", "validate a dataset and print its summary and fingerprint")
    p.add_argument("data", help="dataset folder, or an s3:// / gs:// URI")
    _config_args(p)
    p.set_defaults(func=cmd_check_data)

    p = add("train", "train one configuration with Ray Train, tracked as one MLflow run")
    p.add_argument("--data", required=True, help="dataset folder, or an s3:// / gs:// URI")
    _config_args(p)
    p.add_argument("--workers", type=int, help="Ray Train workers (DDP); sets num_workers")
    p.add_argument("--gpus-per-worker", type=float, help="GPUs per worker; sets gpus_per_worker")
    p.add_argument("--experiment", default="unet-search-train", help="MLflow experiment name")
    p.add_argument("--run-name", help="MLflow run name (default: from the architecture)")
    _budget_arg(p)
    p.set_defaults(func=cmd_train)

    p = add("plan", "plan patch size, scale, depth, batch and normalization from a dataset")
    p.add_argument("data", help="dataset folder, or an s3:// / gs:// URI")
    _budget_arg(p)
    p.add_argument("--out", type=Path, help="also write a search space with the plan (YAML)")
    _config_args(p)
    p.set_defaults(func=cmd_plan)

    p = add("models", "list architectures, presets (with parameter counts) and encoders")
    p.set_defaults(func=cmd_models)

    p = add("search", "search architectures and hyperparameters (Ray Tune, Optuna TPE, ASHA)")
    p.add_argument("--space", type=Path, required=True, help="search space YAML")
    p.add_argument("--data", required=True, help="dataset folder, or an s3:// / gs:// URI")
    p.add_argument("--name", help="search name (default: <space name>-<n>, the first unused)")
    p.add_argument("--model-name", help="registered model name (default: from the space)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a fixed setting (epochs=2) or a search setting (search.num_samples=4)",
    )
    p.add_argument(
        "--storage",
        help="Ray results path or URI every node can reach (default: "
        "$UNET_SEARCH_STORAGE or the work dir)",
    )
    p.set_defaults(func=cmd_search)

    p = add("resume", "continue an interrupted search where it stopped")
    p.add_argument("name", help="search name, e.g. quick-3")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
    p.add_argument("--storage", help="the storage the search ran with")
    p.set_defaults(func=cmd_resume)

    p = add("submit", "submit a search to a Ray cluster as a Ray job")
    p.add_argument(
        "--address",
        help="Ray dashboard / Jobs API URL (default: "
        "$UNET_SEARCH_DASHBOARD or http://127.0.0.1:8265)",
    )
    p.add_argument("--space", type=Path, required=True, help="search space YAML (shipped)")
    p.add_argument("--data", required=True, help="dataset path on the cluster")
    p.add_argument("--name", help="search name")
    p.add_argument("--model-name", help="registered model name")
    p.add_argument("--storage", help="Ray results path or URI every node can reach")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--wait", action="store_true", help="follow the logs; exit with the job")
    p.set_defaults(func=cmd_submit)

    p = add("jobs", "status, logs or stop of a submitted job")
    p.add_argument("action", choices=["status", "logs", "stop"])
    p.add_argument("job_id")
    p.add_argument("--address", help="Ray dashboard / Jobs API URL")
    p.set_defaults(func=cmd_jobs)

    p = add("best", "print the best trials of a search")
    p.add_argument("name", help="search name, e.g. quick-1")
    p.add_argument("--top", type=int, default=10)
    p.set_defaults(func=cmd_best)

    p = add("report", "write the HTML report (and PNGs) of a search to <work dir>/reports/NAME")
    p.add_argument("name", help="search name, e.g. quick-1")
    p.add_argument("--log", action="store_true", help="also upload it to the search's MLflow run")
    p.set_defaults(func=cmd_report)

    p = add("predict", "write one mask PNG per input image with a registered model")
    p.add_argument("--model", required=True, help="models:/NAME@champion, runs:/..., or a dir")
    p.add_argument("--input", type=Path, required=True, help="an image file or a folder")
    p.add_argument("--output", type=Path, required=True, help="folder for the mask PNGs")
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        help="where the model runs (default: cuda when a GPU is visible, else cpu)",
    )
    p.add_argument(
        "--tta",
        choices=["none", "flips"],
        help="test-time flips: average the logits of the image and its mirror images "
        "(default: as the model was validated)",
    )
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    for noisy in ("mlflow", "alembic"):  # their INFO lines (DB migrations...) are not news
        logging.getLogger(noisy).setLevel(logging.WARNING)
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
