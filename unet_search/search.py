"""Ray Tune driver: Optuna TPE (seeded, define-by-run) + ASHA over training trials.

A trial is a thin driver. With one CPU worker it runs the training recipe inside the trial
process (saving ~15 s of Train start-up); otherwise (several workers or a GPU) it builds a
``TorchTrainer`` and forwards the workers' reports with ``TuneReportCallback``, holding no CPU
itself. Every trial is an MLflow child run of the search's parent run, found again by its
trial id when a trial restarts. Tune, ASHA and Optuna follow each trial's best value so far;
trials stopped by ASHA reach Optuna as PRUNED (with their intermediate values), not as
completed with a truncated value.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
import torch
from optuna.trial import TrialState
from ray import tune
from ray.air.constants import TRAINING_ITERATION
from ray.tune.execution.placement_groups import PlacementGroupFactory
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search.optuna import OptunaSearch

from unet_search import registry, tags, tracking
from unet_search.asha import KEEP_CHECKPOINTS, SaveAfterCheckpoints, make_scheduler
from unet_search.config import RunConfig, UserError, code_version, storage_setting
from unet_search.data import DatasetArrays, split_indices, split_names
from unet_search.engine import otsu_val_dice
from unet_search.inference import Predictor, find_model_dir, score_images
from unet_search.live import LiveView
from unet_search.spaces import (
    BASELINE_ATTR,
    NUMBER_KEY,
    RESOURCE_FIELDS,
    SearchSpec,
    check_name,
    make_sampler,
    plan_space,
)
from unet_search.worker import (
    FAULT_ENV,
    ResourceError,
    WorkerContext,
    build_trainer,
    init_ray,
    ray_hooks,
    run_recipe,
)

__all__ = [
    "PruningAwareOptunaSearch",
    "SearchContext",
    "SearchOutcome",
    "TrialSummary",
    "check_search_resources",
    "next_search_name",
    "run_search",
]

TRIAL_SLOT = "trial_slot"
ARCH_SHORT = {"unet": "unet", "unetplusplus": "unet++", "attention_unet": "att-unet"}


class PruningAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna the truth about how a trial ended.

    Ray's OptunaSearch tells every trial that ended without error as COMPLETE with its last
    (truncated) value, so TPE learns from numbers that were cut short. Here a trial whose
    last result lacks ``finished`` (it was stopped from outside, by ASHA) is PRUNED; Optuna
    keeps its intermediate values (reported every epoch by ``on_trial_result``). A baseline
    trial, if asked for, is enqueued first and samples nothing.

    Under a scheduler that pauses trials (:func:`unet_search.asha.make_scheduler` calls
    :meth:`track_pauses`) it limits its concurrent trials itself, Tune's ``ConcurrencyLimiter``
    deferring to it: a trial paused at a rung holds no resources and does not count, or paused
    trials would keep new ones from starting. A paused trial that ASHA never
    promotes is stopped with no result and is PRUNED at its last reported value.
    """

    def __init__(self, *args: Any, enqueue_baseline: bool = False, **kwargs: Any) -> None:
        self._enqueue_baseline = enqueue_baseline
        self._pause_aware = False  # see track_pauses
        self._max_concurrent = 0  # 0: no limit
        self._live: set[str] = set()
        self._paused: set[str] = set()
        self._reported: set[str] = set()  # trials that reported an intermediate value
        super().__init__(*args, **kwargs)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        if not self._pause_aware:
            return False  # Tune's ConcurrencyLimiter does it
        self._max_concurrent = max_concurrent
        return True

    def track_pauses(self) -> None:
        """The scheduler pauses trials and reports them to trial_paused / trial_resumed."""
        self._pause_aware = True

    def trial_paused(self, trial_id: str) -> None:
        self._paused.add(trial_id)

    def trial_resumed(self, trial_id: str) -> None:
        self._paused.discard(trial_id)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        super().on_trial_result(trial_id, result)
        if result.get(self.metric) is not None:
            self._reported.add(trial_id)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self._max_concurrent and len(self._live - self._paused) >= self._max_concurrent:
            return None
        suggestion = super().suggest(trial_id)
        if suggestion is not None:
            self._live.add(trial_id)
        return suggestion

    def _setup_study(self, mode: str | list[str]) -> None:
        super()._setup_study(mode)
        if self._enqueue_baseline:
            self.study.enqueue_trial({}, user_attrs={BASELINE_ATTR: True})
            self._enqueue_baseline = False

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        self._live.discard(trial_id)
        self._paused.discard(trial_id)
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        value = None if result is None else result.get(self.metric)
        if not error and result is None and trial_id in self._reported:
            # Stopped while paused at a rung (Tune passes no result): pruned there.
            state, value = TrialState.PRUNED, None
        elif error or value is None:
            state, value = TrialState.FAIL, None
        elif result and result.get("finished"):
            state = TrialState.COMPLETE
        else:
            # The result that made ASHA stop the trial never went through on_trial_result:
            # record it, so Optuna holds every intermediate value up to the stop.
            step = int(result.get(TRAINING_ITERATION, 0)) if result else 0
            if step and value is not None:
                with warnings.catch_warnings():  # Optuna ignores a step reported twice
                    warnings.simplefilter("ignore")
                    self._ot_trials[trial_id].report(float(value), step)
            state, value = TrialState.PRUNED, None
        self.study.tell(self._ot_trials[trial_id], value, state=state)
        self._completed_trials.add(trial_id)

    @property
    def study(self) -> optuna.Study:
        study = self._ot_study
        assert study is not None, "the study is created in __init__ (define-by-run space)"
        return study


@dataclass(frozen=True)
class SearchContext:
    """What every trial driver needs besides its config and the data."""

    spec: SearchSpec
    search_id: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    storage: str
    fingerprint: str
    code_version: str
    fault: str | None = None  # fault injection for tests ($UNET_SEARCH_FAULT of the driver)
    # How long an unreachable MLflow server is waited for ($UNET_SEARCH_TRACKING_PATIENCE_S).
    patience_s: float = tracking.DEFAULT_PATIENCE_S
    # The plain Otsu threshold's Dice on the validation images (None: multi-class).
    otsu_val_dice: float | None = None
    data_id: str = ""  # the data alone, and the split (unet_search.data.split_text)
    split: str = ""


SPLIT_FILE = "split.json"  # the parent run's {"train": [...], "val": [...], "test": [...]}
RECORD_TIMEOUT_S = 30.0  # see await_recorded: normally the state is there at once


def trial_run_name(index: int, cfg: RunConfig, baseline: str | None) -> str:
    """A name a person can read, e.g. ``t007 unet++ resnet34 d4 f32``."""
    if baseline:
        return f"t{index:03d} baseline {baseline}"
    m = cfg.model
    encoder = "scratch" if m.encoder == "none" else m.encoder
    workers = f" x{cfg.train.num_workers}" if cfg.train.num_workers > 1 else ""
    return f"t{index:03d} {ARCH_SHORT[m.arch]} {encoder} d{m.depth} f{m.base_filters}{workers}"


def _in_process(cfg: RunConfig) -> bool:
    return cfg.train.num_workers == 1 and cfg.train.gpus_per_worker == 0


def saved_trials(experiment_dir: Path) -> list[dict[str, Any]]:
    """The trials (``trial_id``, ``status``, ``config``, ..., and ``last_result``: the
    result ``resume`` continues from) of Tune's saved experiment state in
    ``experiment_dir``, one entry per trial and state file (each driver session writes
    one). A file being written is skipped."""
    out: list[dict[str, Any]] = []
    for path in experiment_dir.glob("experiment_state-*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(path.read_text(encoding="utf-8"))["trial_data"]
            out.extend(
                {**json.loads(state), "last_result": json.loads(meta).get("last_result") or {}}
                for state, meta in data
            )
    return out


def await_recorded(experiment_dir: Path, trial_id: str, timeout_s: float) -> bool:
    """Wait until Tune's saved experiment state in ``experiment_dir`` names ``trial_id``;
    False if it does not within ``timeout_s``.

    The scheduler saves the state as trials are added, before any can start
    (:class:`unet_search.asha.SavesNewTrials`), and Tune copies it to the storage in the
    background: a trial checks it is there before it opens its MLflow run, or a driver killed
    in between would leave a run that ``resume`` never hears of."""
    deadline = time.monotonic() + timeout_s
    while not any(t.get("trial_id") == trial_id for t in saved_trials(experiment_dir)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def trial_main(config: dict[str, Any], ctx: SearchContext, dataset: list[ray.ObjectRef]) -> None:
    """One trial: open (or reopen) its MLflow run, then train in-process or on Ray Train."""
    spec = ctx.spec
    cfg = spec.trial_run_config(config)
    trial_id = tune.get_context().get_trial_id()
    # A shared folder can be read here; a storage URI (s3://...) is not checked.
    if "://" not in ctx.storage and not await_recorded(
        Path(ctx.storage) / ctx.search_id, trial_id, RECORD_TIMEOUT_S
    ):
        logging.getLogger(__name__).warning(
            "trial %s: not in the search's saved state after %.0f s; `resume` after a killed "
            "driver may not know it",
            trial_id,
            RECORD_TIMEOUT_S,
        )
    baseline = spec.settings.baseline if spec.is_baseline(config) else None
    run_id = tracking.with_patience(
        ctx.tracking_uri,
        f"trial {trial_id}: its run",
        lambda: tracking.open_child_run(
            ctx.tracking_uri,
            ctx.experiment_id,
            ctx.parent_run_id,
            name=trial_run_name(int(config.get(NUMBER_KEY, 0)), cfg, baseline),
            params={
                **cfg.flat(),
                "baseline": baseline or "no",
                "planned": ",".join(spec.auto) or "none",
            },
            tags={
                tracking.TAG_SEARCH_ID: ctx.search_id,
                tracking.TAG_TRIAL_ID: trial_id,
                tracking.TAG_TRIAL_NUMBER: str(int(config.get(NUMBER_KEY, 0))),
                tracking.TAG_FINGERPRINT: ctx.fingerprint,
                tracking.TAG_CODE_VERSION: ctx.code_version,
                **({tracking.TAG_BASELINE: baseline} if baseline else {}),
            },
        ),
        ctx.patience_s,
    )
    recipe_config = {
        "run_config": cfg.to_dict(),
        "dataset": dataset[0],
        "tracking_uri": ctx.tracking_uri,
        "run_id": run_id,
        "fault": ctx.fault,
        "tracking_patience_s": ctx.patience_s,
    }
    if _in_process(cfg):
        report, checkpoint_dir = ray_hooks(tune.report, tune.Checkpoint, tune.get_checkpoint)
        run_recipe(
            recipe_config,
            WorkerContext(
                rank=0,
                world=1,
                device=torch.device("cpu"),
                report=report,
                checkpoint_dir=checkpoint_dir,
                prepare_model=lambda m: m,
                prepare_loader=lambda d: d,
            ),
        )
        return
    trainer = build_trainer(
        cfg,
        dataset[0],
        ctx.tracking_uri,
        run_id,
        Path(ctx.storage) / "train",
        f"{ctx.search_id}-{trial_id}",
        worker_env={FAULT_ENV: ctx.fault} if ctx.fault else None,
        callbacks=[TuneReportCallback()],
        tracking_patience_s=ctx.patience_s,
    )
    trainer.fit()


def _resources(spec: SearchSpec, slot: bool) -> Callable[[dict[Any, Any]], PlacementGroupFactory]:
    def resources(config: dict[Any, Any]) -> PlacementGroupFactory:
        cfg = spec.trial_run_config(config)
        if _in_process(cfg):
            return PlacementGroupFactory([{"CPU": float(cfg.train.cpus_per_worker)}])
        # The driver holds no CPU, or a trial plus its workers can deadlock on small nodes.
        return PlacementGroupFactory([{"CPU": 0.0, TRIAL_SLOT: 1.0} if slot else {"CPU": 0.0}])

    return resources


class TrialStatusCallback(tune.Callback):
    """Driver side: end each trial's MLflow run FINISHED, KILLED (ASHA) or FAILED, and watch
    the tracking server.

    Run endings wait in a queue while the server is unreachable (the search goes on: the
    trials queue their own logging). When it has been away for the patience, the callback
    stops the search with :class:`~unet_search.tracking.TrackingUnavailable` (kept in
    ``gave_up``): Ray's results and the trials' checkpoints, unsent logging included, stay
    for ``unet-search resume``."""

    PROBE_EVERY_S = 5.0

    def __init__(self, ctx: SearchContext) -> None:
        self.ctx = ctx
        self.queue: list[tuple[str, str, dict[str, str], str | None]] = []
        self.outage = tracking.Outage(ctx.tracking_uri, ctx.patience_s)
        self.last_probe = 0.0
        self.gave_up: tracking.TrackingUnavailable | None = None

    def _end(self, trial: Any, status: str, outcome: str, error: str | None = None) -> None:
        ending = {tracking.TAG_OUTCOME: outcome}
        if error:
            ending[tracking.TAG_ERROR] = _last_line(error)[:4000]
        self.queue.append((trial.trial_id, status, ending, error))
        self._flush()

    def _flush(self) -> bool:
        """Send the queued run endings; False while the server is away."""
        self.last_probe = time.monotonic()
        if not tracking.reachable(self.ctx.tracking_uri):
            self.outage.away("trials keep training and queue their logging")
            return False
        self.outage.back("the search goes on")
        self._send_endings()
        return True

    def _send_endings(self) -> None:
        if not self.queue:
            return
        uri = self.ctx.tracking_uri
        runs = tracking.find_child_runs(uri, self.ctx.experiment_id, self.ctx.search_id)
        while self.queue:
            trial_id, status, tags, error = self.queue[0]
            run_id = runs.get(trial_id)
            if run_id is not None:
                if error:
                    tracking.log_text(uri, run_id, error, "error.txt")  # the traceback
                tracking.set_tags(uri, run_id, tags)
                tracking.end_run(uri, run_id, status)
            self.queue.pop(0)

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if time.monotonic() - self.last_probe < self.PROBE_EVERY_S or self._flush():
            return
        try:
            self.outage.check("the search driver")
        except tracking.TrackingUnavailable as err:
            self.gave_up = err
            raise

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        if self.gave_up is not None:
            return
        # Also waits for the server before the search's summary and registration.
        tracking.with_patience(
            self.ctx.tracking_uri,
            f"search {self.ctx.search_id}: the trials' run endings",
            self._send_endings,
            self.ctx.patience_s,
        )

    def on_trial_complete(
        self, iteration: int, trials: list[Any], trial: Any, **info: Any
    ) -> None:
        if (trial.last_result or {}).get("finished"):
            self._end(trial, "FINISHED", "finished")
        else:
            self._end(trial, "KILLED", "stopped_early")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._end(trial, "FAILED", "failed", _trial_error(trial))


def _trial_error(trial: Any) -> str:
    """The error a failed trial raised, as Tune recorded it (its error file)."""
    path = trial.error_file
    if path and Path(path).is_file():
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    else:
        text = str(trial.get_error() or "the trial failed (Tune recorded no error text)")
    return re.sub(r"\x1b\[[0-9;]*m", "", text)  # Ray colours its traces


def _last_line(text: str) -> str:
    """The last non-empty line of a traceback: the exception and its message."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def check_search_resources(spec: SearchSpec) -> int:
    """Fail at once when a trial could never be placed; return the CPUs of the cluster."""
    total = ray.cluster_resources()
    cpus, gpus_per_worker, gpus = spec.max_workers_cpus_gpus()
    per_node_gpus = max(
        (n.get("Resources", {}).get("GPU", 0.0) for n in ray.nodes() if n.get("Alive")),
        default=0.0,
    )
    if cpus > total.get("CPU", 0):
        raise ResourceError(
            f"space {spec.name}: a trial can ask for {cpus} CPUs (num_workers x "
            f"cpus_per_worker), but the Ray cluster has {total.get('CPU', 0):g}."
        )
    if gpus_per_worker > per_node_gpus:
        raise ResourceError(
            f"space {spec.name}: `gpus_per_worker` = {gpus_per_worker:g}, but no "
            f"node of the Ray cluster has more than {per_node_gpus:g} GPUs."
        )
    if gpus > total.get("GPU", 0):
        raise ResourceError(
            f"space {spec.name}: a trial can ask for {gpus:g} GPUs, but the Ray "
            f"cluster has {total.get('GPU', 0):g}."
        )
    return int(total.get("CPU", 1))


def _concurrency(spec: SearchSpec, total_cpus: int) -> int:
    """Trials at once: as many as the smallest trial fits into the cluster's CPUs."""
    if spec.settings.max_concurrent_trials:
        return spec.settings.max_concurrent_trials
    smallest = min(
        (spec.base_config().replace(**c).train for c in spec.combinations(RESOURCE_FIELDS)),
        key=lambda t: t.num_workers * t.cpus_per_worker,
    )
    return max(1, total_cpus // (smallest.num_workers * smallest.cpus_per_worker))


def next_search_name(base: str, storage: str, uri: str, experiment_id: str) -> str:
    """``<space>-1``, ``<space>-2``, ...: the first name no earlier search used."""
    used = set(tracking.find_parent_runs(uri, experiment_id))
    i = 1
    while f"{base}-{i}" in used or (
        "://" not in storage and Path(storage, f"{base}-{i}").exists()
    ):
        i += 1
    return f"{base}-{i}"


@dataclass(frozen=True)
class TrialSummary:
    index: int
    trial_id: str
    name: str
    status: str
    value: float | None
    epochs: int
    baseline: bool
    run_id: str | None
    params: dict[str, Any]


@dataclass(frozen=True)
class SearchOutcome:
    search_id: str
    experiment_id: str
    parent_run_id: str
    metric: str
    trials: tuple[TrialSummary, ...]
    best: TrialSummary | None
    baseline: TrialSummary | None
    registration: registry.Registration | None
    study: optuna.Study
    otsu_val_dice: float | None  # a plain Otsu threshold's Dice on the validation images
    # The best model's scores on the held-out test images (test_dice, ..., otsu_test_dice);
    # empty without a test split
    test: dict[str, float]
    report: Path | None  # the HTML report, when it could be written
    log: Path  # the progress lines plus Ray's and Tune's log (also a parent-run artifact)


def _summaries(results: tune.ResultGrid, ctx: SearchContext) -> list[TrialSummary]:
    runs = tracking.child_run_names(ctx.tracking_uri, ctx.experiment_id, ctx.search_id)
    out = []
    for result in results:  # type: ignore[attr-defined]  # ResultGrid is iterable
        metrics = result.metrics or {}
        trial_id = str(metrics.get("trial_id") or Path(result.path).name)
        status = "FAILED" if result.error else "FINISHED" if metrics.get("finished") else "KILLED"
        value = metrics.get(ctx.spec.tune_metric)
        run_id, name = runs.get(trial_id, (None, trial_id))
        out.append(
            TrialSummary(
                int((result.config or {}).get(NUMBER_KEY, 0)),
                trial_id,
                name,
                status,
                None if value is None or result.error else float(value),
                int(metrics.get("epoch", 0)),
                ctx.spec.is_baseline(result.config or {}),
                run_id,
                ctx.spec.assignments(result.config or {}),
            )
        )
    return sorted(out, key=lambda t: t.index)


def _pick_best(trials: list[TrialSummary], mode: str) -> TrialSummary | None:
    # Only finished trials logged their best model (ASHA ends the others mid-way).
    scored = [t for t in trials if t.value is not None and t.run_id and t.status == "FINISHED"]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda t: t.value or 0.0)


def _log_summary(
    ctx: SearchContext,
    trials: list[TrialSummary],
    best: TrialSummary | None,
    baseline: TrialSummary | None,
    test: dict[str, float],
) -> None:
    metric = ctx.spec.settings.metric
    with tempfile.TemporaryDirectory() as tmp:
        rows = [asdict(t) for t in trials]
        (Path(tmp) / "summary.json").write_text(json.dumps(rows, indent=2, default=str))
        header = "trial,name,status,best_" + metric + ",epochs,baseline,params\n"
        lines = [
            f"{t.index},{t.name},{t.status},{'' if t.value is None else f'{t.value:.6f}'},"
            f'{t.epochs},{t.baseline},"{json.dumps(t.params)}"'
            for t in trials
        ]
        (Path(tmp) / "summary.csv").write_text(header + "\n".join(lines) + "\n")
        tracking.log_artifacts(ctx.tracking_uri, ctx.parent_run_id, Path(tmp))
    metrics: dict[str, float] = {"num_trials": float(len(trials)), **test}
    if ctx.otsu_val_dice is not None:  # a plain threshold on the same images
        metrics["otsu_val_dice"] = ctx.otsu_val_dice
    for status in ("FINISHED", "KILLED", "FAILED"):
        metrics[f"trials_{status.lower()}"] = float(sum(t.status == status for t in trials))
    if best and best.value is not None:
        metrics[f"best_{metric}"] = best.value
    if baseline and baseline.value is not None:
        metrics[f"baseline_{metric}"] = baseline.value
        if best and best.value is not None:
            metrics[f"gain_over_baseline_{metric}"] = best.value - baseline.value
    tracking.log_metrics(ctx.tracking_uri, ctx.parent_run_id, metrics, step=0)
    if best:
        tracking.set_tags(
            ctx.tracking_uri,
            ctx.parent_run_id,
            {
                tags.TAG_BEST_TRIAL: best.trial_id,
                tags.TAG_BEST_RUN: best.run_id or "",
            },
        )


def _best_model(ctx: SearchContext, best: TrialSummary, tmp: Path) -> Path:
    """The best trial's kept model (its ``best_model`` artifact), downloaded under ``tmp``."""
    assert best.run_id is not None
    return tracking.download_artifacts(ctx.tracking_uri, best.run_id, "best_model", tmp)


def _test_scores(ctx: SearchContext, model: Path, arrays: DatasetArrays) -> dict[str, float]:
    """The kept model's scores on the held-out test images, segmented as ``unet-search
    predict`` does (whole images at their original sizes), and Otsu's on the same images;
    empty without a test split. Nothing in the search saw these images: this is the number
    the registered version carries."""
    test = split_indices(len(arrays), ctx.spec.base_config().data).test
    if not len(test):
        return {}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    predictor = Predictor.from_dir(find_model_dir(model), device)
    scores = score_images(predictor, arrays, [int(i) for i in test], "test_")
    return {**scores, "test_images": float(len(test))}


def _register(
    ctx: SearchContext,
    best: TrialSummary,
    model_name: str,
    model: Path,
    test: dict[str, float],
) -> registry.Registration:
    assert best.run_id is not None and best.value is not None
    return registry.log_and_register(
        ctx.tracking_uri,
        ctx.parent_run_id,
        model,
        model_name,
        ctx.spec.settings.metric,
        best.value,
        ctx.spec.settings.mode,
        tags={
            tracking.TAG_FINGERPRINT: ctx.fingerprint,
            tags.TAG_DATA: ctx.data_id,
            tags.TAG_SPLIT: ctx.split,
            tracking.TAG_SEARCH_ID: ctx.search_id,
            tracking.TAG_TRIAL_ID: best.trial_id,
            tags.TAG_RUN_ID: best.run_id,
            tracking.TAG_CODE_VERSION: ctx.code_version,
        },
        test=test,
    )


def _trainable(ctx: SearchContext, dataset_ref: ray.ObjectRef, slot: bool) -> Any:
    return tune.with_resources(
        tune.with_parameters(trial_main, ctx=ctx, dataset=[dataset_ref]),
        _resources(ctx.spec, slot),
    )


def _live_view(ctx: SearchContext) -> LiveView:
    spec = ctx.spec

    def name_of(trial: Any) -> str:
        config = trial.config or {}
        baseline = spec.settings.baseline if spec.is_baseline(config) else None
        return trial_run_name(
            int(config.get(NUMBER_KEY, 0)), spec.trial_run_config(config), baseline
        )

    return LiveView(
        ctx.search_id, spec.settings.metric, spec.tune_metric, spec.settings.mode, name_of
    )


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


def _execute(
    ctx: SearchContext,
    tuner: tune.Tuner,
    arrays: DatasetArrays,
    model_name: str,
    study: Callable[[], optuna.Study],
    workdir: Path,
    log: Path,
) -> SearchOutcome:
    """Run (or continue) the Tuner, then summarize, register, end the parent run, upload the
    search's log and write the report (both also artifacts of the parent run: on a KubeRay
    RayJob the cluster, and its disks, are gone after the search)."""
    status: str | None = "FAILED"
    try:
        # TrialStatusCallback stops Tune with TrackingUnavailable when MLflow stays away.
        results = tuner.fit()  # its last callback waited for the server (patience)
        trials = _summaries(results, ctx)
        best = _pick_best(trials, ctx.spec.settings.mode)
        baseline = next((t for t in trials if t.baseline), None)
        with tempfile.TemporaryDirectory() as tmp:
            model = _best_model(ctx, best, Path(tmp)) if best else None
            test = _test_scores(ctx, model, arrays) if model else {}
            _log_summary(ctx, trials, best, baseline, test)
            registration = (
                _register(ctx, best, model_name, model, test) if best and model else None
            )
        if registration:
            tracking.set_tags(
                ctx.tracking_uri,
                ctx.parent_run_id,
                {
                    tracking.TAG_REGISTERED: registration.version,
                    tracking.TAG_ALIAS: registration.alias,
                    tracking.TAG_DECISION: registration.reason,
                },
            )
        status = "FINISHED"
    except tracking.TrackingUnavailable as err:
        status = None  # the parent run stays RUNNING: `resume` finishes the search
        raise tracking.TrackingUnavailable(
            f"search {ctx.search_id} stopped: {err}. Ray storage keeps the trials' checkpoints "
            f"and the logging MLflow did not get: run `unet-search resume {ctx.search_id}` "
            "once the server is back."
        ) from None
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if status is not None:
            tracking.end_run(ctx.tracking_uri, ctx.parent_run_id, status)
            _upload_log(ctx, log)
    return SearchOutcome(
        ctx.search_id,
        ctx.experiment_id,
        ctx.parent_run_id,
        ctx.spec.settings.metric,
        tuple(trials),
        best,
        baseline,
        registration,
        study(),
        ctx.otsu_val_dice,
        test,
        _auto_report(ctx, workdir),
        log,
    )


def _upload_log(ctx: SearchContext, log: Path) -> None:
    """The search's log as artifact ``logs/<search>.log`` of the parent run; a failed upload
    only says so (the log stays on disk)."""
    try:
        tracking.log_artifact(ctx.tracking_uri, ctx.parent_run_id, log, tracking.SEARCH_LOG_DIR)
    except Exception as err:  # the search's own outcome stands
        print(
            f"search {ctx.search_id}: its log could not be uploaded to MLflow "
            f"({type(err).__name__}: {err}); it stays at {log}",
            flush=True,
        )


def _auto_report(ctx: SearchContext, workdir: Path) -> Path | None:
    """The search report, written to ``<work_dir>/reports/<search>/`` and logged to the parent
    run. A report that cannot be drawn does not undo a finished search: it says so and how to
    draw it again."""
    from unet_search.report import write_report

    try:
        return write_report(
            ctx.tracking_uri, ctx.search_id, workdir / "reports" / ctx.search_id, log=True
        )
    except Exception as err:  # the search itself has finished and is recorded
        print(
            f"search {ctx.search_id}: the report could not be written ({type(err).__name__}: "
            f"{err}); run `unet-search report {ctx.search_id}` to try again",
            flush=True,
        )
        return None


def _storage_root(workdir: Path, storage: str | None) -> str:
    """Where Ray results go: ``--storage`` / ``$UNET_SEARCH_STORAGE`` (a shared path or a
    URI every node can reach), else the work directory."""
    root = storage_setting(storage)
    if root and "://" in root:
        return root
    return str(Path(root).resolve()) if root else str(workdir / "ray_results")


def _route_ray_logs(workdir: Path, search_id: str) -> Path:
    """Ray's and Tune's own log output goes to ``<work_dir>/logs/<search>.log`` (appended),
    not the terminal, with the progress lines the terminal shows; returns the path, which
    the CLI prints."""
    path = workdir / "logs" / f"{search_id}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.unet_search = True  # type: ignore[attr-defined]
    logging.getLogger("unet_search").setLevel(logging.INFO)
    for name in ("ray", "ray.tune", "ray.train", "unet_search"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):  # Ray's console handler, or an earlier search's file
            if type(old) is logging.StreamHandler or getattr(old, "unet_search", False):
                logger.removeHandler(old)
        logger.addHandler(handler)
        logger.propagate = False
    print(
        f"search {search_id}: Ray's own log is {path}; the trials' worker logs are in the "
        "Ray session logs (`ray logs cluster`, or the dashboard)",
        flush=True,
    )
    return path


def run_search(
    spec: SearchSpec,
    arrays: DatasetArrays,
    data_dir: Path,
    workdir: Path,
    name: str | None = None,
    model_name: str | None = None,
    address: str | None = None,
    storage: str | None = None,
    overrides: Sequence[str] = (),
    callbacks: Sequence[tune.Callback] = (),
    stopper: tune.Stopper | None = None,
) -> SearchOutcome:
    """Run a whole search: trials on Ray Tune, runs in MLflow, the best model registered.
    ``callbacks`` / ``stopper``: more Tune callbacks and a Tune stopper (the benchmarks time
    trials and hold searches to an epoch budget with them)."""
    if name is not None:
        check_name(name, "search", "name")  # it names folders: never a path
    spec = plan_space(spec, arrays)  # `auto` settings, from the data
    if spec.plan is not None:
        print(spec.plan.text(), flush=True)
    init_ray(address, log_to_driver=False)
    total_cpus = check_search_resources(spec)
    slot = TRIAL_SLOT in ray.cluster_resources()
    uri = tracking.resolve_tracking_uri(workdir)
    tracking.require_reachable(uri)
    experiment_id = tracking.ensure_experiment(uri, spec.name, workdir)
    root = _storage_root(workdir, storage)
    search_id = name or next_search_name(spec.name, root, uri, experiment_id)
    model_name = model_name or spec.model_name
    parent = tracking.create_run(
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
            tracking.TAG_SEARCH_ID: search_id,
            tracking.TAG_KIND: "search",
            tracking.TAG_FINGERPRINT: arrays.fingerprint,
            tracking.TAG_CODE_VERSION: code_version(),
        },
    )
    tracking.log_text(uri, parent, spec.source, "space.yaml")
    parts = split_names(arrays.names, spec.base_config().data)  # image ids of each part
    tracking.log_text(uri, parent, json.dumps(parts, indent=1), SPLIT_FILE)
    if spec.plan is not None:
        tracking.log_text(uri, parent, spec.plan.text(), "plan.txt")
    log = _route_ray_logs(workdir, search_id)
    ctx = SearchContext(
        spec,
        search_id,
        uri,
        experiment_id,
        parent,
        root,
        arrays.fingerprint,
        code_version(),
        os.environ.get(FAULT_ENV),
        tracking.tracking_patience(),
        otsu_val_dice(arrays, spec.base_config()),
        arrays.stats.get("data_id", ""),
        arrays.stats.get("split", ""),
    )
    _save_state(ctx, data_dir, model_name, overrides)
    searcher = PruningAwareOptunaSearch(
        space=spec.define_by_run,
        metric=spec.tune_metric,
        mode=spec.settings.mode,
        sampler=make_sampler(spec.settings),
        enqueue_baseline=spec.settings.baseline is not None,
    )
    tuner = _tuner(
        ctx,
        _trainable(ctx, ray.put(arrays), slot),
        _concurrency(spec, total_cpus),
        searcher,
        callbacks,
        stopper,
    )
    return _execute(ctx, tuner, arrays, model_name, lambda: searcher.study, workdir, log)


def _save_state(
    ctx: SearchContext, data_dir: Path, model_name: str, overrides: Sequence[str]
) -> None:
    """What `resume` needs, as an artifact of the search's parent run."""
    state = {
        "search_id": ctx.search_id,
        "space_file": f"{ctx.spec.name}.yaml",
        "space_source": ctx.spec.source,
        "overrides": list(overrides),
        "data_dir": str(data_dir),
        "model_name": model_name,
        "storage": ctx.storage,
        "tracking_uri": ctx.tracking_uri,
        "experiment_id": ctx.experiment_id,
        "parent_run_id": ctx.parent_run_id,
        "fingerprint": ctx.fingerprint,
        "budget": ctx.spec.plan.budget if ctx.spec.plan is not None else None,
    }
    text = json.dumps(state, indent=2)
    tracking.log_text(ctx.tracking_uri, ctx.parent_run_id, text, tracking.SEARCH_STATE_FILE)


def resume_search(
    state: dict[str, Any],
    spec: SearchSpec,
    arrays: DatasetArrays,
    workdir: Path,
    address: str | None = None,
    storage: str | None = None,
) -> SearchOutcome:
    """Continue an interrupted search: finished trials are kept, unfinished ones continue from
    their last checkpoint, Optuna keeps its history, every trial keeps its one MLflow run and
    the parent run is continued."""
    if arrays.fingerprint != state["fingerprint"]:
        raise UserError(
            f"{state['data_dir']}: the data changed since search "
            f"{state['search_id']} started (fingerprint {arrays.fingerprint} != "
            f"{state['fingerprint']}); start a new search instead."
        )
    spec = plan_space(spec, arrays, state.get("budget"))  # the plan the search started with
    init_ray(address, log_to_driver=False)
    check_search_resources(spec)
    slot = TRIAL_SLOT in ray.cluster_resources()
    root = _storage_root(workdir, storage) if storage else str(state["storage"])
    uri = state["tracking_uri"]
    tracking.require_reachable(uri)
    if tracking.run_status(uri, state["parent_run_id"]) == "FINISHED":
        raise UserError(f"search {state['search_id']} already finished; nothing to resume.")
    tracking.reopen_run(uri, state["parent_run_id"])
    log = _route_ray_logs(workdir, state["search_id"])
    ctx = SearchContext(
        spec,
        state["search_id"],
        uri,
        state["experiment_id"],
        state["parent_run_id"],
        root,
        state["fingerprint"],
        code_version(),
        os.environ.get(FAULT_ENV),
        tracking.tracking_patience(),
        otsu_val_dice(arrays, spec.base_config()),
        arrays.stats.get("data_id", ""),
        arrays.stats.get("split", ""),
    )
    path = root.rstrip("/") + "/" + ctx.search_id
    tuner = tune.Tuner.restore(
        path,
        trainable=_trainable(ctx, ray.put(arrays), slot),
        resume_unfinished=True,
        resume_errored=True,
    )

    def study() -> optuna.Study:  # the searcher as Tune saved it at the end
        searcher = PruningAwareOptunaSearch(
            space=spec.define_by_run, metric=spec.tune_metric, mode=spec.settings.mode
        )
        searcher.restore_from_dir(path)
        return searcher.study

    return _execute(ctx, tuner, arrays, state["model_name"], study, workdir, log)
