"""A whole search, start to end: :func:`run_search` (new) and :func:`resume_search` (an
interrupted one) set it up and explore it in :mod:`unet_search.search.driver`, then finish it
here: the best model scored on the held-out test split, the summary logged, the model
registered, the parent run ended, the search's log uploaded and the report written (both
also artifacts of the parent run: on a KubeRay RayJob the cluster, and its disks, are gone
after the search)."""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec

from unet_search.core.names import SEARCH_LOG_DIR
from unet_search.core.outcome import RunStatus
from unet_search.core.tags import TAG_ALIAS, TAG_DECISION, TAG_REGISTERED
from unet_search.data.dataset import DatasetArrays
from unet_search.finish.outcome import (
    SearchOutcome,
    download_best_model,
    log_summary,
    pareto_trials,
    register_best,
    test_scores,
)
from unet_search.report.page import write_report
from unet_search.search.context import SearchContext
from unet_search.search.driver import Explored, Started, explore, restart_search, start_search
from unet_search.tracking.client import end_run, log_artifact, set_tags
from unet_search.tracking.outage import TrackingUnavailable
from unet_search.tracking.registry import Registration

__all__ = ["resume_search", "run_search"]


P = ParamSpec("P")


def _to_the_end(start: Callable[P, Started], doc: str) -> Callable[P, SearchOutcome]:
    """``start`` (which sets a search up), then the search explored and finished."""

    @functools.wraps(start)
    def run(*args: P.args, **kwargs: P.kwargs) -> SearchOutcome:
        return _finish(start(*args, **kwargs))

    run.__doc__ = doc
    return run


run_search = _to_the_end(
    start_search,
    """Run a whole search: trials on Ray Tune, runs in MLflow, the best model registered.
    The arguments are :func:`~unet_search.search.driver.start_search`'s: the space, the
    arrays, the data folder, the work dir, and optionally its name, the model name, the Ray
    address, the storage, the ``--set`` overrides, more Tune callbacks and a Tune stopper
    (the benchmarks time trials and hold searches to an epoch budget with them).""",
)
run_search.__name__ = run_search.__qualname__ = "run_search"

resume_search = _to_the_end(
    restart_search,
    """Continue an interrupted search: finished trials are kept, unfinished ones continue from
    their last checkpoint (the final fit too), Optuna keeps its history, every trial keeps its
    one MLflow run and the parent run is continued. The arguments are
    :func:`~unet_search.search.driver.restart_search`'s (the saved state, the space, the
    arrays, the work dir, the Ray address and the storage).""",
)
resume_search.__name__ = resume_search.__qualname__ = "resume_search"


def _finish(started: Started) -> SearchOutcome:
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
    return SearchOutcome(
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
        explored.plan,
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
