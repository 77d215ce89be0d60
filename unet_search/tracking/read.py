"""Read models over MLflow: a search's parent run, its trials ranked, its saved state and
log, everything the report and ``unet-search best`` show."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from unet_search.core.errors import UserError
from unet_search.core.metrics import METRICS, best_key, sign
from unet_search.core.outcome import Outcome
from unet_search.core.tags import (
    TAG_DEFAULT,
    TAG_FINAL_FIT,
    TAG_KIND,
    TAG_OUTCOME,
    TAG_SEARCH_ID,
    TAG_TRIAL_ID,
    TAG_TRIAL_NUMBER,
)
from unet_search.tracking.client import mlflow_client, read_text, search_filter

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


__all__ = [
    "find_child_runs",
    "child_run_names",
    "find_parent_runs",
    "TrialRow",
    "rank_trials",
    "find_search",
    "require_text",
    "search_trials",
    "TrialRecord",
    "SearchRecord",
    "search_record",
    "TEST_KEYS",
    "held_out_text",
]


def _child_runs(client: MlflowClient, experiment_id: str, search_id: str) -> list[Any]:
    """Every trial run of a search (the one query behind the helpers below)."""
    return list(
        client.search_runs(
            [experiment_id],
            filter_string=f"{search_filter(search_id)} and tags.`{TAG_TRIAL_ID}` != ''",
            max_results=50_000,
        )
    )


def find_child_runs(uri: str, experiment_id: str, search_id: str) -> dict[str, str]:
    """trial id -> run id for the trials of a search."""
    runs = _child_runs(mlflow_client(uri), experiment_id, search_id)
    return {r.data.tags[TAG_TRIAL_ID]: r.info.run_id for r in runs}


def child_run_names(uri: str, experiment_id: str, search_id: str) -> dict[str, tuple[str, str]]:
    """trial id -> (run id, run name) for the trials of a search, in one query."""
    runs = _child_runs(mlflow_client(uri), experiment_id, search_id)
    return {
        r.data.tags[TAG_TRIAL_ID]: (r.info.run_id, r.info.run_name or r.info.run_id) for r in runs
    }


def find_parent_runs(uri: str, experiment_id: str) -> dict[str, str]:
    """search id -> parent run id for the searches of an experiment."""
    runs = mlflow_client(uri).search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_KIND}` = 'search'", max_results=50_000
    )
    return {r.data.tags[TAG_SEARCH_ID]: r.info.run_id for r in runs}


@dataclass(frozen=True)
class TrialRow:
    name: str
    status: str
    value: float | None
    epochs: int


def rank_trials(trials: Sequence[Any], mode: str) -> list[Any]:
    """Best first by ``.value`` (``mode`` max or min); trials without a value last."""
    down = -sign(mode)
    return sorted(trials, key=lambda t: (t.value is None, down * (t.value or 0.0)))


def find_search(uri: str, search_id: str) -> str:
    """The parent run id of search ``search_id`` (any experiment); a UserError if none."""
    client = mlflow_client(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(
        experiments,
        filter_string=f"{search_filter(search_id)} and tags.`{TAG_KIND}` = 'search'",
        max_results=1,
    )
    if not parents:
        raise UserError(f"no search named {search_id!r} in {uri}.")
    return str(parents[0].info.run_id)


def require_text(uri: str, run_id: str, artifact_file: str) -> str:
    """A text artifact of a run; a UserError when the run has none of that name."""
    text = read_text(uri, run_id, artifact_file)
    if text is None:
        raise UserError(f"run {run_id} has no {artifact_file} artifact.")
    return text


def search_trials(uri: str, search_id: str) -> tuple[str, list[TrialRow], dict[str, float]]:
    """(metric, trials ranked best first, the held-out test scores) of a search, read back
    from MLflow."""
    client = mlflow_client(uri)
    parent = client.get_run(find_search(uri, search_id))
    metric = parent.data.params.get("metric", "val_dice")
    children = _child_runs(client, parent.info.experiment_id, search_id)
    rows = [
        TrialRow(
            r.info.run_name or r.info.run_id,
            r.info.status,
            r.data.metrics.get(best_key(metric)),
            int(r.data.metrics.get("epoch", 0)),
        )
        for r in children
    ]
    held_out = {k: v for k, v in parent.data.metrics.items() if "test_" in k}
    mode = METRICS[metric].mode if metric in METRICS else "max"
    return metric, rank_trials(rows, mode), held_out


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a search as MLflow holds it (what the report is drawn from)."""

    run_id: str
    name: str
    number: int  # Optuna's trial number
    status: str  # MLflow run status
    outcome: str  # finished | stopped_early | failed | running
    baseline: bool
    params: dict[str, str]
    metrics: dict[str, float]  # latest value of each metric
    history: tuple[tuple[int, int, float], ...]  # (timestamp ms, epoch, value), one per epoch
    default: bool = False  # the planned default configuration (unet_search.default)
    final: bool = False  # the search's final fit (unet_search.final_fit)


@dataclass(frozen=True)
class SearchRecord:
    search_id: str
    parent_run_id: str
    experiment_id: str
    params: dict[str, str]
    tags: dict[str, str]
    start_ms: int
    end_ms: int | None
    status: str
    trials: tuple[TrialRecord, ...]  # by trial number
    metrics: dict[str, float] = field(default_factory=dict)  # the parent run's


def _outcome(status: str, tags: Mapping[str, str]) -> str:
    if tags.get(TAG_OUTCOME):
        return tags[TAG_OUTCOME]
    return str(Outcome.of_run_status(status))


def _history(client: MlflowClient, run_id: str, key: str) -> tuple[tuple[int, int, float], ...]:
    """One point per epoch (a re-run epoch after a restart keeps its last value)."""
    points = client.get_metric_history(run_id, key)
    by_step = {m.step: (m.timestamp, m.step, m.value) for m in points}
    return tuple(sorted(by_step.values(), key=lambda p: (p[0], p[1])))


def search_record(uri: str, search_id: str, metric: str | None = None) -> SearchRecord:
    """The parent run and every trial run of a search, with each trial's per-epoch history of
    ``metric`` (default: the search's metric)."""
    client = mlflow_client(uri)
    parent = client.get_run(find_search(uri, search_id))
    metric = metric or parent.data.params.get("metric", "val_dice")
    trials = []
    for r in _child_runs(client, parent.info.experiment_id, search_id):
        name = r.info.run_name or r.info.run_id
        number = r.data.tags.get(TAG_TRIAL_NUMBER) or name[1:4]
        trials.append(
            TrialRecord(
                r.info.run_id,
                name,
                int(number) if str(number).isdigit() else -1,
                r.info.status,
                _outcome(r.info.status, r.data.tags),
                r.data.params.get("baseline", "no") != "no",
                dict(r.data.params),
                dict(r.data.metrics),
                _history(client, r.info.run_id, metric),
                r.data.tags.get(TAG_DEFAULT) == "true",
                r.data.tags.get(TAG_FINAL_FIT) == "true",
            )
        )
    return SearchRecord(
        search_id,
        parent.info.run_id,
        parent.info.experiment_id,
        dict(parent.data.params),
        dict(parent.data.tags),
        int(parent.info.start_time or 0),
        parent.info.end_time,
        parent.info.status,
        tuple(sorted(trials, key=lambda t: (t.number, t.name))),
        dict(parent.data.metrics),
    )


TEST_KEYS = ("test_dice", "test_iou", "test_dsb_score", "test_ap50")


def held_out_text(scores: dict[str, float]) -> str | None:
    """One line of a search's held-out test scores (its parent run's ``test_*`` metrics),
    e.g. ``test_dice 0.9012  test_iou 0.8311  (Otsu test_dice 0.7710) on 6 images``; None
    without a test split."""
    shown = [f"{key} {scores[key]:.4f}" for key in TEST_KEYS if key in scores]
    if not shown:
        return None
    otsu = scores.get("otsu_test_dice")
    text = "  ".join(shown) + ("" if otsu is None else f"  (Otsu test_dice {otsu:.4f})")
    images = scores.get("test_images")
    return text + ("" if images is None else f" on {int(images)} images")
