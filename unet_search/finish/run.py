"""A whole search, start to end: :func:`run_search` (new) and :func:`resume_search` (an
interrupted one) set it up and explore it in :mod:`unet_search.search.driver`, then finish it
here: the best model scored on the held-out test split, the summary logged, the model
registered, the parent run ended, the search's log uploaded and the report written (both
also artifacts of the parent run: on a KubeRay RayJob the cluster, and its disks, are gone
after the search)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Unpack

import optuna

from unet_search.core.names import SEARCH_LOG_DIR
from unet_search.core.outcome import RunStatus
from unet_search.core.tags import TAG_ALIAS, TAG_DECISION, TAG_REGISTERED
from unet_search.data.dataset import DatasetArrays
from unet_search.finish.registration import register_best
from unet_search.finish.scoring import download_best_model, test_scores
from unet_search.finish.summary import log_summary, pareto_trials
from unet_search.report.page import write_report
from unet_search.search.context import ResumeOptions, SearchContext, SearchOptions
from unet_search.search.driver import (
    Explored,
    Started,
    explore,
    restart_search,
    start_search,
)
from unet_search.search.final import FinalFit
from unet_search.search.summaries import TrialSummary
from unet_search.space.spec import SearchSpec
from unet_search.tracking.client import end_run, log_artifact, set_tags
from unet_search.tracking.outage import TrackingUnavailable
from unet_search.tracking.registry import Registration
from unet_search.tracking.state import SearchState

__all__ = ["resume_search", "run_search", "SearchResult"]


@dataclass(frozen=True)
class SearchResult:
    """What a whole search leaves: its trials and their best, the registered version, the
    held-out test scores, the report and the log."""

    search_id: str
    experiment_id: str
    parent_run_id: str
    metric: str
    trials: tuple[TrialSummary, ...]
    best: TrialSummary | None
    baseline: TrialSummary | None
    registration: Registration | None
    study: optuna.Study
    otsu_val_dice: float | None  # a plain Otsu threshold's Dice on the validation images
    # The best model's scores on the held-out test images (test_dice, ..., otsu_test_dice);
    # empty without a test split
    test: dict[str, float]
    report: Path | None  # the HTML report, when it could be written
    log: Path  # the progress lines plus Ray's and Tune's log (also a parent-run artifact)
    # The final fit (search.compute): what it trained from and for, and its run (None: none
    # ran, or it failed: `best` is then the best exploring trial)
    final_fit: FinalFit | None = None
    final: TrialSummary | None = None
    front: tuple[TrialSummary, ...] = ()  # several objectives: the finished trials' front


def run_search(
    spec: SearchSpec,
    arrays: DatasetArrays,
    data_dir: Path,
    workdir: Path,
    **options: Unpack[SearchOptions],
) -> SearchResult:
    """Run a whole search: trials on Ray Tune, runs in MLflow, the best model registered.
    ``spec``: the space; ``arrays``: the decoded data of ``data_dir``; ``workdir``: where the
    search keeps its files; ``options``: its name, the model name, the Ray address, the
    storage, the ``--set`` overrides, more Tune callbacks and a Tune stopper
    (:class:`~unet_search.search.context.SearchOptions`; the benchmarks time trials and hold
    searches to an epoch budget with the last two)."""
    return _finish(start_search(spec, arrays, data_dir, workdir, **options))


def resume_search(
    state: SearchState,
    spec: SearchSpec,
    arrays: DatasetArrays,
    workdir: Path,
    **options: Unpack[ResumeOptions],
) -> SearchResult:
    """Continue an interrupted search: finished trials are kept, unfinished ones continue from
    their last checkpoint (the final fit too), Optuna keeps its history, every trial keeps its
    one MLflow run and the parent run is continued. ``state``: what the search saved when it
    started (:func:`unet_search.tracking.state.read_search_state`)."""
    return _finish(restart_search(state, spec, arrays, workdir, **options))


def _finish(started: Started) -> SearchResult:
    """Explore, then score, log and register the best; end the parent run and upload the
    log whatever happened (it stays RUNNING only when MLflow went away, for ``resume``)."""
    ctx = started.ctx
    status: RunStatus | None = RunStatus.FAILED
    try:
        explored = explore(started)
        test, registration = _register(ctx, explored, started.model_name, started.arrays)
        status = RunStatus.FINISHED
    except TrackingUnavailable as err:
        status = None  # the parent run stays RUNNING: `resume` finishes the search
        raise TrackingUnavailable(
            f"search {ctx.search_id} stopped: {err}. Ray storage keeps the trials' checkpoints "
            f"and the logging MLflow did not get: run `unet-search resume {ctx.search_id}` "
            "once the server is back."
        ) from None
    except KeyboardInterrupt:
        status = RunStatus.KILLED
        raise
    finally:
        if status is not None:
            end_run(ctx.tracking_uri, ctx.parent_run_id, status)
            _upload_log(ctx, started.log)
    return SearchResult(
        ctx.search_id,
        ctx.experiment_id,
        ctx.parent_run_id,
        ctx.spec.settings.metric,
        tuple(explored.trials),
        explored.best,
        explored.baseline,
        registration,
        started.study(),
        ctx.otsu_val_dice,
        test,
        _auto_report(ctx, started.workdir),
        started.log,
        explored.final_fit,
        explored.final,
        tuple(pareto_trials(explored.everything, ctx.spec.settings)),
    )


def _register(
    ctx: SearchContext, explored: Explored, model_name: str, arrays: DatasetArrays
) -> tuple[dict[str, float], Registration | None]:
    """The best model's test scores, the summary on the parent run and the registration
    (None: nothing was trained), with the parent run tagged by its outcome."""
    best = explored.best
    with tempfile.TemporaryDirectory() as tmp:
        model = download_best_model(ctx, best, Path(tmp)) if best else None
        test = test_scores(ctx, model, arrays) if model else {}
        log_summary(ctx, explored.everything, best, explored.baseline, test, explored.compute)
        registration = (
            register_best(ctx, best, model_name, model, test, arrays) if best and model else None
        )
    if registration:
        set_tags(
            ctx.tracking_uri,
            ctx.parent_run_id,
            {
                TAG_REGISTERED: registration.version,
                TAG_ALIAS: registration.alias,
                TAG_DECISION: registration.reason,
            },
        )
    return test, registration


def _upload_log(ctx: SearchContext, log: Path) -> None:
    """The search's log as artifact ``logs/<search>.log`` of the parent run; a failed upload
    only says so (the log stays on disk)."""
    try:
        log_artifact(ctx.tracking_uri, ctx.parent_run_id, log, SEARCH_LOG_DIR)
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
