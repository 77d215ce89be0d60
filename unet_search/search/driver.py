"""Ray Tune driver: Optuna TPE (seeded, define-by-run) + ASHA over training trials.
``start_search`` and ``restart_search`` (``resume``) set a search up, sharing the tuner,
storage and log routing; ``explore`` runs its trials and the final fit. What ends a search
(test scoring, registration, the report) is the layer above, :mod:`unet_search.finish`.

A trial is a thin driver. With one CPU worker it runs the training recipe inside the trial
process (saving ~15 s of Train start-up); otherwise (several workers or a GPU) it builds a
``TorchTrainer`` and forwards the workers' reports with ``TuneReportCallback``, holding no CPU
itself. Every trial is an MLflow child run of the search's parent run, found again by its
trial id when a trial restarts. Tune, ASHA and Optuna follow each trial's best value so far;
trials stopped by ASHA reach Optuna as PRUNED (with their intermediate values), not as
completed with a truncated value.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Unpack

import optuna
import ray
from ray import tune

from unet_search.core.env import code_version
from unet_search.core.errors import UserError
from unet_search.core.names import PLAN_FILE, PLAN_TEXT_FILE, SPACE_FILE, SPLIT_FILE, TRIAL_SLOT
from unet_search.core.outcome import RunStatus
from unet_search.core.tags import (
    TAG_CODE_VERSION,
    TAG_FINAL_SOURCE,
    TAG_FINGERPRINT,
    TAG_KIND,
    TAG_SEARCH_ID,
)
from unet_search.data.dataset import DatasetArrays
from unet_search.data.split import split_names
from unet_search.distributed.faults import FAULT_ENV
from unet_search.distributed.trainer import init_ray
from unet_search.plan.planner import Plan
from unet_search.search.asha import make_scheduler
from unet_search.search.callbacks import TrialStatusCallback
from unet_search.search.context import ResumeOptions, SearchContext, SearchOptions
from unet_search.search.final import (
    FINAL_SUFFIX,
    FinalFit,
    choose_final_fit,
    final_source,
    run_final_fit,
)
from unet_search.search.live import LiveSettings, LiveView
from unet_search.search.panel import LivePanel
from unet_search.search.searcher import ExploreBudget, PruningAwareOptunaSearch
from unet_search.search.setup import (
    check_search_resources,
    concurrency,
    next_search_name,
    route_ray_logs,
    storage_root,
)
from unet_search.search.state import KEEP_CHECKPOINTS, SaveAfterCheckpoints, save_state
from unet_search.search.summaries import (
    TrialSummary,
    pick_best,
    summaries,
)
from unet_search.search.trial import trainable, trial_run_name
from unet_search.space.load import make_sampler, plan_space
from unet_search.space.spec import SearchSpec
from unet_search.space.validate import check_name
from unet_search.tracking.client import (
    create_run,
    ensure_experiment,
    log_text,
    read_text,
    reopen_run,
    resolve_tracking_uri,
    run_start_s,
    run_status,
    set_tags,
)
from unet_search.tracking.outage import require_reachable, tracking_patience
from unet_search.tracking.state import SearchState
from unet_search.train.engine import otsu_val_dice

__all__ = [
    "explore",
    "Explored",
    "restart_search",
    "start_search",
    "Started",
]


def _live_view(ctx: SearchContext, final: FinalFit | None = None) -> LiveView:
    """The search's live view (its final fit's with ``final``): a panel when stdout is a
    terminal, else lines; the bar counts the epochs of ``search.compute`` when it has them
    (a final fit's after those the exploring trials spent), else the trials."""
    spec, settings = ctx.spec, ctx.spec.settings

    def name_of(trial: Any) -> str:
        return trial_run_name(spec.trial(trial.config or {}), settings.baseline)

    epochs = settings.compute.epochs if settings.compute else None
    spent = final.explored_epochs if final else 0
    max_t = settings.scheduler.max_t or spec.base_config().train.epochs
    follows = LiveSettings(
        ctx.search_id,
        settings.metric,
        spec.tune_metric,
        settings.mode,
        max_t=final.epochs if final else max_t,
        budget=None if epochs is None else (spent, epochs),
        num_samples=1 if final else settings.num_samples,
        otsu=ctx.otsu_val_dice,
    )
    return LiveView(follows, name_of, LivePanel() if sys.stdout.isatty() else None)


def _tuner(
    ctx: SearchContext,
    trainable: Any,
    concurrency: int,
    searcher: PruningAwareOptunaSearch,
    callbacks: Sequence[tune.Callback] = (),
    stopper: tune.Stopper | None = None,
) -> tune.Tuner:
    spec, settings = ctx.spec, ctx.spec.settings
    scheduler = make_scheduler(spec, searcher)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=settings.num_samples,
            max_concurrent_trials=concurrency,
            time_budget_s=settings.time_budget_s,
            # A trial's process is started once and reused by the next trial with the same
            # resources: a fresh one costs ~3-5 s of imports (torch, MLflow, smp) per trial
            # (bench/bookkeeping.py, bench/trial_cost.py). Each trial sets its own seeds,
            # threads, model and MLflow run, so nothing carries over.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=ctx.search_id,
            storage_path=ctx.storage,
            callbacks=[
                TrialStatusCallback(ctx),
                _live_view(ctx),
                SaveAfterCheckpoints(scheduler),
                *callbacks,
            ],
            stop=stopper,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
            verbose=0,  # LiveView prints the concise view; Ray's detail goes to the log
        ),
    )


@dataclasses.dataclass(frozen=True)
class Started:
    """A search ready to explore (a new one, or one ``resume`` continues): its context, its
    Tuner and trial function (of a context: the final fit's trials get the final fit's), the
    model name it registers under, its Optuna study (read
    after the Tuner ran), its work dir and its log, and its data (for the test split)."""

    ctx: SearchContext
    arrays: DatasetArrays
    tuner: tune.Tuner
    trainable: Callable[[SearchContext], Any]  # the trial function of a context
    model_name: str
    study: Callable[[], optuna.Study]
    workdir: Path
    log: Path


@dataclasses.dataclass(frozen=True)
class Explored:
    """What exploring and the final fit left: every trial's summary, the best (the final
    fit, else the best finished exploring trial; None when nothing was trained), the
    baseline, what the final fit trained from and for, and its run."""

    trials: list[TrialSummary]
    best: TrialSummary | None
    baseline: TrialSummary | None
    final_fit: FinalFit | None
    final: TrialSummary | None

    @property
    def everything(self) -> list[TrialSummary]:
        """The exploring trials and the final fit."""
        return self.trials + ([self.final] if self.final else [])

    @property
    def compute(self) -> dict[str, float]:
        """The compute a search with ``search.compute`` spent, for its parent run."""
        if self.final_fit is None:
            return {}
        return {
            "explore_epochs": float(self.final_fit.explored_epochs),
            "final_fit_epochs": float(self.final.epochs if self.final else 0),
        }


def explore(started: Started) -> Explored:
    """Run (or continue) the Tuner, then the final fit. Raises TrackingUnavailable when
    MLflow stays away (TrialStatusCallback stops Tune; its last callback waited for the
    server, patience)."""
    ctx = started.ctx
    results = started.tuner.fit()
    trials = summaries(results, ctx)
    explored = pick_best(trials, ctx.spec.settings)
    began = run_start_s(ctx.tracking_uri, ctx.parent_run_id)
    source, chosen = final_source(trials, results, ctx.spec.settings)
    fit = choose_final_fit(ctx, trials, source, results, began, chosen)
    final = _final_fit(ctx, started.trainable, fit, results)
    baseline = next((t for t in trials if t.baseline), None)
    return Explored(trials, final or explored, baseline, fit, final)


def _final_fit(
    ctx: SearchContext,
    trainable: Callable[[SearchContext], Any],
    fit: FinalFit | None,
    results: tune.ResultGrid,
) -> TrialSummary | None:
    """Run the final fit ``fit`` asks for, saying what it trains; None without one (or when
    it failed: the best exploring trial is registered then, and the search says so)."""
    if fit is None:
        return None
    if not fit.runs:
        print(f"search {ctx.search_id}: no final fit: {fit.why}", flush=True)
        return None
    assert fit.source is not None
    start = {
        "continue": f"going on from where {fit.source.name} stopped",
        "kept": f"from {fit.source.name}'s kept weights",
        "scratch": "from scratch",
    }[ctx.spec.settings.final_fit_start]
    print(
        f"search {ctx.search_id}: final fit of {fit.source.name}, {fit.epochs} epochs {start} "
        f"(the exploring trials spent {fit.explored_epochs})"
        + (f": {fit.chosen}" if fit.chosen else ""),
        flush=True,
    )
    if fit.chosen:
        set_tags(ctx.tracking_uri, ctx.parent_run_id, {TAG_FINAL_SOURCE: fit.chosen})
    live = _live_view(dataclasses.replace(ctx, search_id=ctx.search_id + FINAL_SUFFIX), fit)
    final = run_final_fit(ctx, trainable, fit, results, live)
    if final is None:
        print(
            f"search {ctx.search_id}: the final fit failed (see its MLflow run); the best "
            "exploring trial that finished, if one did, is registered instead",
            flush=True,
        )
    return final


def _trial_function(dataset: ray.ObjectRef, slot: bool) -> Callable[[SearchContext], Any]:
    """The search's trial function for a context: the exploring trials get the search's,
    the final fit's trials the final fit's (they wait for *its* Tune state to name them)."""
    return lambda ctx: trainable(ctx, dataset, slot)


def _context(
    spec: SearchSpec,
    arrays: DatasetArrays,
    fingerprint: str,
    *,
    search_id: str,
    tracking_uri: str,
    experiment_id: str,
    parent_run_id: str,
    storage: str,
) -> SearchContext:
    """The context of a search, with this process's code version, fault setting and tracking
    patience, and the Otsu threshold's validation Dice."""
    return SearchContext(
        spec=spec,
        search_id=search_id,
        tracking_uri=tracking_uri,
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        storage=storage,
        fingerprint=fingerprint,
        code_version=code_version(),
        fault=os.environ.get(FAULT_ENV),
        patience_s=tracking_patience(),
        otsu_val_dice=otsu_val_dice(arrays, spec.base_config()),
        data_id=arrays.summary.data_id,
        split=arrays.summary.split,
    )


def _parent_run(
    spec: SearchSpec,
    arrays: DatasetArrays,
    data_dir: Path,
    uri: str,
    experiment_id: str,
    search_id: str,
    root: str,
) -> str:
    """The search's parent run, with its space, split and plan."""
    parent = create_run(
        uri,
        experiment_id,
        search_id,
        params={
            "space": spec.name,
            "num_samples": spec.settings.num_samples,
            "metric": spec.settings.metric,
            "baseline": spec.settings.baseline,
            "data_dir": str(data_dir),
            "seed": spec.settings.seed,
            "storage": root,
            **(spec.plan.params() if spec.plan is not None else {}),
        },
        tags={
            TAG_SEARCH_ID: search_id,
            TAG_KIND: "search",
            TAG_FINGERPRINT: arrays.fingerprint,
            TAG_CODE_VERSION: code_version(),
        },
    )
    log_text(uri, parent, spec.source, SPACE_FILE)
    parts = split_names(arrays.names, spec.base_config().data)  # image ids of each part
    log_text(uri, parent, json.dumps(parts, indent=1), SPLIT_FILE)
    if spec.plan is not None:
        log_text(uri, parent, spec.plan.text(), PLAN_TEXT_FILE)
        log_text(uri, parent, spec.plan.to_json(), PLAN_FILE)  # what `resume` reads back
    return parent


def _resumed_space(spec: SearchSpec, arrays: DatasetArrays, state: SearchState) -> SearchSpec:
    """The space with the plan the search started with: its parent run's ``plan.json``, read
    back, not planned again (a plan's rules may change between versions; the search's
    trials must not). A search started before plan.json is planned again from the same
    data and budget."""
    if not spec.auto:
        return spec
    uri, parent, search = state.tracking_uri, state.parent_run_id, state.search_id
    text = read_text(uri, parent, PLAN_FILE)
    if text is None:
        print(f"search {search}: planned again from the data (no {PLAN_FILE})", flush=True)
        return plan_space(spec, arrays, state.budget)
    print(f"search {search}: the plan it started with ({PLAN_FILE} of its run)", flush=True)
    return spec.with_plan(Plan.from_json(text, f"{PLAN_FILE} of search {search}"))


def _default_trial(spec: SearchSpec) -> dict[str, Any] | None:
    """The planned default configuration's Optuna parameters (``search.default_trial``), or
    None: turned off, or not a valid configuration of this space (said, not fatal)."""
    if not spec.settings.default_trial:
        return None
    params = spec.default_params()
    try:
        spec.trial(params)
    except UserError as err:
        print(f"space {spec.name}: no planned default trial: {err}", flush=True)
        return None
    return params


def _explore_budget(spec: SearchSpec) -> ExploreBudget | None:
    """What the exploring trials may spend of ``search.compute`` (None: no limit)."""
    settings = spec.settings
    if settings.compute is None:
        return None
    return ExploreBudget(settings.explore_epochs, settings.explore_seconds, time.time())


def start_search(
    spec: SearchSpec,
    arrays: DatasetArrays,
    data_dir: Path,
    workdir: Path,
    **options: Unpack[SearchOptions],
) -> Started:
    """Start a search: the plan, Ray, the parent run with its space, split and plan, the
    saved state and the Tuner (:func:`unet_search.finish.run.run_search` runs it through).
    ``options``: :class:`SearchOptions` (the benchmarks time trials and hold searches to an
    epoch budget with more Tune callbacks and a stopper)."""
    name, model_name = options.get("name"), options.get("model_name")
    address, storage = options.get("address"), options.get("storage")
    if name is not None:
        check_name(name, "search", "name")  # it names folders: never a path
    spec = plan_space(spec, arrays)  # `auto` settings, from the data
    if spec.plan is not None:
        print(spec.plan.text(), flush=True)
    init_ray(address, log_to_driver=False)
    total_cpus = check_search_resources(spec)
    slot = TRIAL_SLOT in ray.cluster_resources()
    uri = resolve_tracking_uri(workdir)
    require_reachable(uri)
    experiment_id = ensure_experiment(uri, spec.name, workdir)
    root = storage_root(workdir, storage)
    search_id = name or next_search_name(spec.name, root, uri, experiment_id)
    model_name = model_name or spec.model_name
    parent = _parent_run(spec, arrays, data_dir, uri, experiment_id, search_id, root)
    log = route_ray_logs(workdir, search_id)
    ctx = _context(
        spec,
        arrays,
        arrays.fingerprint,
        search_id=search_id,
        tracking_uri=uri,
        experiment_id=experiment_id,
        parent_run_id=parent,
        storage=root,
    )
    save_state(ctx, data_dir, model_name, options.get("overrides", ()))
    objectives = spec.tune_objectives
    multi = len(objectives) > 1  # a multi-objective study: one direction per objective
    searcher = PruningAwareOptunaSearch(
        space=spec.define_by_run,
        metric=[m for m, _ in objectives] if multi else spec.tune_metric,
        mode=[mode for _, mode in objectives] if multi else spec.settings.mode,
        sampler=make_sampler(spec.settings),
        enqueue_baseline=spec.settings.baseline is not None,
        enqueue_default=_default_trial(spec),
        budget=_explore_budget(spec),
        constraints=tuple((c.metric, c.max) for c in spec.settings.constraints),
    )
    run = _trial_function(ray.put(arrays), slot)
    callbacks, stopper = options.get("callbacks", ()), options.get("stopper")
    tuner = _tuner(ctx, run(ctx), concurrency(spec, total_cpus), searcher, callbacks, stopper)
    return Started(ctx, arrays, tuner, run, model_name, lambda: searcher.study, workdir, log)


def restart_search(
    state: SearchState,
    spec: SearchSpec,
    arrays: DatasetArrays,
    workdir: Path,
    **options: Unpack[ResumeOptions],
) -> Started:
    """An interrupted search, ready to continue: finished trials are kept, unfinished ones
    continue from their last checkpoint, Optuna keeps its history, every trial keeps its one
    MLflow run and the parent run is reopened."""
    address, storage = options.get("address"), options.get("storage")
    if arrays.fingerprint != state.fingerprint:
        raise UserError(
            f"{state.data_dir}: the data changed since search "
            f"{state.search_id} started (fingerprint {arrays.fingerprint} != "
            f"{state.fingerprint}); start a new search instead."
        )
    uri = state.tracking_uri
    require_reachable(uri)
    spec = _resumed_space(spec, arrays, state)  # the plan the search started with
    init_ray(address, log_to_driver=False)
    check_search_resources(spec)
    slot = TRIAL_SLOT in ray.cluster_resources()
    root = storage_root(workdir, storage) if storage else state.storage
    if run_status(uri, state.parent_run_id) == RunStatus.FINISHED:
        raise UserError(f"search {state.search_id} already finished; nothing to resume.")
    reopen_run(uri, state.parent_run_id)
    log = route_ray_logs(workdir, state.search_id)
    ctx = _context(
        spec,
        arrays,
        state.fingerprint,
        search_id=state.search_id,
        tracking_uri=uri,
        experiment_id=state.experiment_id,
        parent_run_id=state.parent_run_id,
        storage=root,
    )
    path = root.rstrip("/") + "/" + ctx.search_id
    run = _trial_function(ray.put(arrays), slot)
    tuner = tune.Tuner.restore(
        path, trainable=run(ctx), resume_unfinished=True, resume_errored=True
    )

    def study() -> optuna.Study:  # the searcher as Tune saved it at the end
        searcher = PruningAwareOptunaSearch(
            space=spec.define_by_run, metric=spec.tune_metric, mode=spec.settings.mode
        )
        searcher.restore_from_dir(path)
        return searcher.study

    return Started(ctx, arrays, tuner, run, state.model_name, study, workdir, log)
