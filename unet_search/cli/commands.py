"""The ``unet-search`` command line: thin subcommands over the package.

Exit codes: 0 success, 1 user error (bad data, bad config, impossible resources) with one
message and no traceback, 2 usage error (argparse).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unet_search.cli.checks import require_tracking, say_notes, warn_sizes
from unet_search.core.errors import UserError
from unet_search.core.files import written_whole
from unet_search.core.outcome import RunStatus

__all__ = [
    "cmd_make_data",
    "cmd_check_data",
    "cmd_export",
    "cmd_train",
    "cmd_plan",
    "cmd_models",
    "cmd_search",
    "cmd_resume",
    "cmd_submit",
    "cmd_jobs",
    "cmd_best",
    "cmd_report",
]


def cmd_make_data(args: argparse.Namespace) -> int:
    from unet_search.data.synthetic import make_synthetic

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
    with written_whole(out) as partial:  # a dataset whole or not at all
        ids = make_synthetic(
            partial,
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
    from unet_search.core.config import provisional_config, run_leaves
    from unet_search.core.env import work_dir
    from unet_search.data.dataset import load_dataset, materialize

    cfg = provisional_config(*run_leaves(args.config, args.overrides))
    arrays = load_dataset(
        materialize(args.data, work_dir() / "cache"), cfg.data, work_dir() / "cache"
    )
    summary = arrays.summary
    print(f"dataset      {args.data} ({summary.layout} layout)")
    print(f"images       {summary.count}")
    sizes = ", ".join(f"{k} x{v}" for k, v in summary.sizes[:8])
    print(f"sizes        {sizes}{' ...' if len(summary.sizes) > 8 else ''}")
    low, high = (f"{v:g}" for v in summary.values)
    print(f"pixels       {summary.pixels}, values {low}..{high} (kept as they are)")
    print(f"foreground   {summary.foreground_ratio:.3f} of pixels")
    if summary.instances_per_image is not None:
        print(f"instances    {summary.instances_per_image:.1f} per image")
    data = cfg.data
    print(
        f"fingerprint  {arrays.fingerprint} (num_classes={data.num_classes}, "
        f"val_fraction={data.val_fraction}, split_seed={data.split_seed})"
    )
    print("valid: every image decodes and every mask matches its image")
    warn_sizes(arrays)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from unet_search.core.config import (
        blame_override,
        provisional_config,
        run_leaves,
        typed_overrides,
    )
    from unet_search.core.env import work_dir
    from unet_search.core.errors import ConfigError
    from unet_search.data.dataset import load_dataset, materialize
    from unet_search.distributed.trainer import run_training
    from unet_search.models.build import validate_model_config
    from unet_search.plan.planner import parse_budget, plan_run
    from unet_search.tracking.client import resolve_tracking_uri, ui_hint

    leaves, source = run_leaves(
        args.config, args.overrides, num_workers=args.workers, gpus_per_worker=args.gpus_per_worker
    )
    if args.budget is not None:
        parse_budget(args.budget)
    try:  # a config error a --set caused names that --set
        provisional = provisional_config(leaves, source)  # `auto` stands in until planned
        validate_model_config(provisional.model)
        workdir = work_dir()
        require_tracking(workdir)
        data = materialize(args.data, workdir / "cache")
        arrays = load_dataset(data, provisional.data, workdir / "cache")
        cfg, plan = plan_run(leaves, source, arrays, args.budget)  # planned from the data
        validate_model_config(cfg.model)  # all checks before Ray
    except ConfigError as err:
        raise blame_override(err, typed_overrides(args.overrides), source) from None
    if plan is not None:
        print(plan.text(), flush=True)
    warn_sizes(arrays, cfg.data.scale)
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
    from unet_search.core.config import provisional_config, run_leaves
    from unet_search.core.env import work_dir
    from unet_search.data.dataset import load_dataset, materialize
    from unet_search.plan.planner import default_budget, make_plan, parse_budget
    from unet_search.plan.profile import profile_data

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
    plan = make_plan(profile_data(arrays, cfg.data), budget)
    print(f"dataset            {args.data} (fingerprint {arrays.fingerprint})")
    print(plan.text())
    warn_sizes(arrays, plan.scale)
    if out is not None:
        from unet_search.space.load import load_space_text
        from unet_search.space.validate import check_name

        name = check_name(out.stem, str(out), "the file name (it names the space)")
        text = plan.space_yaml(name)
        load_space_text(text, out.name)  # a valid space, before anything is written
        with written_whole(out) as partial:
            partial.write_text(text, encoding="utf-8")
        print(f"wrote {out}: search it with `unet-search search --space {out} --data {args.data}`")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from unet_search.core.config import PRESETS
    from unet_search.models.build import (
        ARCHITECTURES,
        REFERENCE_MODEL,
        option_parameter_counts,
        preset_parameter_count,
    )
    from unet_search.models.smp import smp_encoders

    print("architectures (model.arch):")
    for name, text in ARCHITECTURES.items():
        print(f"  {name:16s} {text}")
    ref = ", ".join(f"{k} {v}" for k, v in REFERENCE_MODEL.items())
    print(f"\nfrom-scratch options, trainable parameters on unet ({ref}, 3 channels, binary):")
    for field, value, count, text in option_parameter_counts():
        print(f"  {field + ':':12s}{value:12s}{count:>12,}  {text}")
    print("\npresets (--set preset=NAME), trainable parameters:")
    for name in PRESETS:
        print(f"  {name:16s} {preset_parameter_count(name):>12,}")
    encoders = smp_encoders()
    print(
        f"\nencoders (model.encoder): none (from scratch), tu-<a timm model> or one of "
        f"{len(encoders)} smp encoders:"
    )
    for i in range(0, len(encoders), 6):
        print("  " + "  ".join(encoders[i : i + 6]))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    workdir = _job_work_dir(args.storage)  # a bad --storage fails before the heavy imports
    from unet_search.data.dataset import load_dataset, materialize
    from unet_search.finish.run import run_search
    from unet_search.space.load import load_space
    from unet_search.space.validate import check_name

    spec = load_space(args.space, args.overrides)  # every check before Ray starts
    if args.name is not None:
        check_name(args.name, "search", "--name")
    require_tracking(workdir)
    say_notes(spec.notes)
    data = materialize(args.data, workdir / "cache")
    arrays = load_dataset(data, spec.base_config().data, workdir / "cache")
    warn_sizes(arrays)
    _leave_job_working_dir(workdir)
    out = run_search(
        spec,
        arrays,
        data,
        workdir,
        name=args.name,
        model_name=args.model_name,
        address=args.address,
        storage=args.storage,
        overrides=args.overrides,
    )
    _report(out, spec.settings.mode, workdir)
    return 0


def _job_work_dir(storage: str | None) -> Path:
    """The work dir of ``search`` / ``resume``: see :func:`unet_search.core.env.work_dir`; inside
    a Ray job it says where it is (it is not the job's current directory)."""
    from unet_search.core.env import code_version, in_ray_job, package_dir, work_dir

    workdir = work_dir(storage)
    if in_ray_job():
        where = package_dir()
        print(f"code         unet_search {code_version()} from {where}", flush=True)
        print(f"work dir     {workdir} (set UNET_SEARCH_HOME to choose another)", flush=True)
    return workdir


def _leave_job_working_dir(workdir: Path) -> None:
    """A Ray job's working_dir (the shipped space file) may be garbage-collected by Ray while
    the search runs; once everything is loaded, the driver works from the work dir."""
    from unet_search.core.env import in_ray_job

    if in_ray_job():
        workdir.mkdir(parents=True, exist_ok=True)
        os.chdir(workdir)


def _report(out: Any, mode: str, workdir: Path) -> None:
    from unet_search.core.env import in_ray_job
    from unet_search.core.names import REPORT_DIR, SEARCH_LOG_DIR
    from unet_search.tracking.client import resolve_tracking_uri, ui_hint
    from unet_search.tracking.read import rank_trials

    metric = out.metric
    counts = ", ".join(
        f"{sum(t.status == s for t in out.trials)} {s.lower()}"
        for s in (RunStatus.FINISHED, RunStatus.KILLED, RunStatus.FAILED)
    )
    print(f"\nsearch {out.search_id}: {len(out.trials)} trials {counts}")
    _print_trials(rank_trials(out.trials, mode)[:8], metric)
    if out.best and out.baseline and out.best.value is not None and out.baseline.value is not None:
        print(
            f"best {metric} {out.best.value:.4f} ({out.best.name}) vs seed baseline "
            f"{out.baseline.value:.4f}: {out.best.value - out.baseline.value:+.4f}"
        )
    _print_final_and_default(out)
    if out.front:
        shown = "; ".join(
            f"{t.name.split(' ')[0]} " + " ".join(f"{m} {v:.4g}" for m, v in t.values.items())
            for t in out.front
        )
        print(f"Pareto front ({len(out.front)} trials, pareto.json of the search's run): {shown}")
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
        # A first version that lost the gate (to Otsu) leaves the name without a champion.
        alias = "champion" if reg.alias == "champion" or reg.previous_version else reg.alias
        print(
            f"predict      unet-search predict --model models:/{reg.name}@{alias} "
            "--input IMAGES --output MASKS"
        )
    # Also artifacts of the search's MLflow run: a job's driver node (a KubeRay RayJob's
    # cluster) may be gone, or out of the user's reach, once the search has ended.
    where = "on the job's driver node; " if in_ray_job() else ""
    run = f"of run {out.parent_run_id}"
    if out.report is not None:
        print(f"report       {out.report}  ({where}also in MLflow: {REPORT_DIR}/ {run})")
    print(
        f"search log   {out.log}  ({where}also in MLflow: {SEARCH_LOG_DIR}/{out.log.name} {run})"
    )
    uri = resolve_tracking_uri(workdir)
    print(f"MLflow UI    {ui_hint(uri, out.experiment_id, out.parent_run_id)}")


def cmd_resume(args: argparse.Namespace) -> int:
    workdir = _job_work_dir(args.storage)  # a bad --storage fails before the heavy imports
    from unet_search.data.dataset import load_dataset
    from unet_search.finish.run import resume_search
    from unet_search.space.load import load_space_text
    from unet_search.space.validate import check_name
    from unet_search.tracking.client import resolve_tracking_uri
    from unet_search.tracking.outage import require_reachable
    from unet_search.tracking.state import read_search_state

    check_name(args.name, "resume", "NAME")
    uri = resolve_tracking_uri(workdir, create=False)
    require_reachable(uri)
    state = read_search_state(uri, args.name)
    spec = load_space_text(state.space_source, state.space_file, state.overrides)
    arrays = load_dataset(Path(state.data_dir), spec.base_config().data, workdir / "cache")
    _leave_job_working_dir(workdir)
    out = resume_search(state, spec, arrays, workdir, address=args.address, storage=args.storage)
    _report(out, spec.settings.mode, workdir)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from ray.job_submission import JobStatus

    from unet_search.cli.jobs import follow, submit_search
    from unet_search.space.load import load_space

    spec = load_space(args.space, args.overrides)  # a bad space fails here, not on the cluster
    say_notes(spec.notes)
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
    from unet_search.cli.jobs import client

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


def _print_final_and_default(out: Any) -> None:
    """The final fit (what it trained, against the trial it started from), a best that is
    the planned default configuration, and a search that trained nothing to register."""
    metric, final, fit = out.metric, out.final, out.final_fit
    if final is not None and fit is not None and fit.source is not None:
        source = fit.source
        print(
            f"final fit    {source.name}, {final.epochs} epochs in run {final.name!r}: "
            f"{metric} {source.value:.4f} -> {final.value:.4f}"
        )
        if fit.chosen:  # the incumbent rule's verdict
            print(f"its source   {fit.chosen}")
    chosen = fit.source if final is not None and fit is not None else out.best
    if chosen is not None and chosen.default and not (fit and fit.chosen):
        print("the best configuration is the planned default (search.default_trial)")
    if out.best is None:
        print(
            "no trial but the seed baseline trained to the end (every other trial failed or "
            "was stopped): nothing is registered"
        )


def _print_trials(trials: Sequence[Any], metric: str) -> None:
    print(f"  {'trial':32s} {'status':9s} {'best ' + metric:>14s} {'epochs':>6s}")
    for t in trials:
        value = "-" if t.value is None else f"{t.value:.4f}"
        print(f"  {t.name[:32]:32s} {t.status:9s} {value:>14s} {t.epochs:>6d}")


def cmd_best(args: argparse.Namespace) -> int:
    from unet_search.core.env import work_dir
    from unet_search.tracking.client import resolve_tracking_uri
    from unet_search.tracking.read import search_trials
    from unet_search.tracking.state import read_search_state

    if args.top < 1:
        raise UserError(f"--top must be at least 1, but got {args.top}.")
    uri = resolve_tracking_uri(work_dir(), create=False)
    metric, trials, held_out = search_trials(uri, args.name)
    _print_trials(trials[: args.top], metric)
    _print_held_out(held_out)
    try:
        name = read_search_state(uri, args.name).model_name
    except UserError:  # a search run before its state was saved: its trials only
        return 0
    _print_registered(uri, name)
    return 0


def _print_registered(uri: str, name: str, most: int = 5) -> None:
    """The registered versions of ``name``: aliases, scores and the gate's reason."""
    from unet_search.tracking.registry import registered_versions

    versions = registered_versions(uri, name)
    if not versions:
        print(f"registered   nothing yet under {name}")
        return
    print(f"registered   {name} (load with models:/{name}@ALIAS)")
    for v in versions[:most]:
        aliases = " ".join(f"@{a}" for a in v.aliases) or "-"
        value = "" if v.value is None else f" {v.metric} {v.value:.4f}"
        test = "".join(f" {k} {x:.4f}" for k, x in sorted(v.test.items()) if k == "test_dice")
        print(f"  v{v.version:<4s} {aliases:22s} {v.search_id}{value}{test}")
        if v.reason:
            print(f"        {v.reason}")
    if len(versions) > most:
        print(f"  ... {len(versions) - most} older version(s)")


def _print_held_out(scores: dict[str, float]) -> None:
    from unet_search.tracking.read import held_out_text

    text = held_out_text(scores)
    if text is not None:
        print(f"held-out test  {text}: the best trial's kept model, images no choice saw")


def cmd_report(args: argparse.Namespace) -> int:
    from unet_search.core.env import work_dir
    from unet_search.report.page import write_report
    from unet_search.space.validate import check_name
    from unet_search.tracking.client import resolve_tracking_uri
    from unet_search.tracking.read import find_search

    check_name(args.name, "report", "NAME")
    workdir = work_dir()
    uri = resolve_tracking_uri(workdir, create=False)
    find_search(uri, args.name)  # an unknown name fails here, before anything is written
    path = write_report(uri, args.name, workdir / "reports" / args.name, log=args.log)
    print(f"report       {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.format == "bioimageio":
        from unet_search.serve.bioimageio import DEFAULT_LICENSE, export_package

        license_id = args.license or DEFAULT_LICENSE
        out = export_package(args.model, args.out, license_id, args.authors, args.sample)
        print(f"wrote {out} (a BioImage.IO model package; test it with `bioimageio test {out}`)")
        return 0
    given = {"--license": args.license, "--author": args.authors, "--sample": args.sample}
    for flag in (flag for flag, value in given.items() if value):
        raise UserError(f"{flag}: only --format bioimageio takes it.")
    from unet_search.serve.onnx import export_model

    onnx_file, json_file = export_model(args.model, args.out)
    print(f"wrote {onnx_file} (ONNX) and {json_file} (its preprocessing)")
    return 0
