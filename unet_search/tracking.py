"""Every MLflow call for runs: experiments, run creation, params, per-epoch metrics, artifacts.

Uses ``MlflowClient`` with an explicit tracking URI everywhere (no global "active run"), so
the same functions work in the CLI process and inside Ray workers. MLflow is imported on
first use: of a trial's Ray Train workers only rank 0 logs, and the others need not spend
MLflow's import (~0.7 s of CPU each) while a trial starts. Default store: SQLite
under the work directory, artifacts in ``<work_dir>/mlartifacts``; ``MLFLOW_TRACKING_URI``
is honoured.
"""

from __future__ import annotations

import base64
import io
import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from unet_search.config import METRICS, UserError
from unet_search.tags import (
    TAG_ALIAS,
    TAG_BASELINE,
    TAG_CODE_VERSION,
    TAG_DECISION,
    TAG_ERROR,
    TAG_FINGERPRINT,
    TAG_KIND,
    TAG_OUTCOME,
    TAG_PARENT,
    TAG_REGISTERED,
    TAG_SEARCH_ID,
    TAG_TRIAL_ID,
    TAG_TRIAL_NUMBER,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = [
    "TAG_CODE_VERSION",
    "TAG_FINGERPRINT",
    "SEARCH_LOG_DIR",
    "SEARCH_STATE_FILE",
    "held_out_text",
    "TAG_ALIAS",
    "TAG_BASELINE",
    "TAG_DECISION",
    "TAG_ERROR",
    "TAG_REGISTERED",
    "read_search_state",
    "TAG_KIND",
    "TAG_OUTCOME",
    "TAG_TRIAL_NUMBER",
    "PATIENCE_ENV",
    "Outage",
    "Outbox",
    "TrackingUnavailable",
    "reachable",
    "require_reachable",
    "tracking_patience",
    "with_patience",
    "SearchRecord",
    "TrialRecord",
    "search_record",
    "TAG_SEARCH_ID",
    "TAG_TRIAL_ID",
    "download_artifacts",
    "find_child_runs",
    "find_parent_runs",
    "log_text",
    "open_child_run",
    "rank_trials",
    "child_run_names",
    "search_trials",
    "create_run",
    "end_run",
    "ensure_experiment",
    "log_artifact",
    "log_artifacts",
    "log_image",
    "log_metrics",
    "log_params",
    "resolve_tracking_uri",
    "set_tags",
    "ui_hint",
]

SEARCH_STATE_FILE = "search_state.json"  # parent-run artifact: what resume and report need
SEARCH_LOG_DIR = "logs"  # parent-run artifact folder: the search's log (<search>.log)
_BATCH = 100  # MLflow's per-request limit on params


def resolve_tracking_uri(workdir: Path, *, create: bool = True) -> str:
    """``$MLFLOW_TRACKING_URI`` or ``sqlite:///<workdir>/mlflow.db``. With ``create=False``
    (read-only commands) a missing local store is a UserError, and nothing is created."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    db = workdir / "mlflow.db"
    if not create and not db.exists():
        raise UserError(
            f"{db}: no MLflow store here yet; run a search first, or set "
            "UNET_SEARCH_HOME / MLFLOW_TRACKING_URI."
        )
    workdir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def ensure_experiment(uri: str, name: str, workdir: Path) -> str:
    """The id of experiment ``name``, created if missing (artifacts under the work dir when
    the store is a local SQLite file, else where the server puts them)."""
    client = _client(uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = (
        str((workdir / "mlartifacts").resolve().as_uri()) if uri.startswith("sqlite:") else None
    )
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except Exception:  # created concurrently by another process: read it back
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def _param_value(value: Any) -> str:
    return "None" if value is None else str(value)


def _client(uri: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def create_run(
    uri: str, experiment_id: str, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]
) -> str:
    """Create a run (status RUNNING) with its params and tags; returns the run id."""
    from mlflow.entities import Param

    client = _client(uri)
    run = client.create_run(
        experiment_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()}
    )
    items = [Param(k, _param_value(v)) for k, v in sorted(params.items())]
    for i in range(0, len(items), _BATCH):
        client.log_batch(run.info.run_id, params=items[i : i + _BATCH])
    return str(run.info.run_id)


def log_metrics(
    uri: str, run_id: str, metrics: Mapping[str, float], step: int, timestamp: int | None = None
) -> None:
    """Log a set of metrics at one step (epoch) in one request, stamped ``timestamp`` (ms;
    default now)."""
    from mlflow.entities import Metric

    stamp = _now_ms() if timestamp is None else timestamp
    batch = [Metric(k, float(v), stamp, step) for k, v in sorted(metrics.items())]
    _client(uri).log_batch(run_id, metrics=batch)


def log_params(uri: str, run_id: str, params: Mapping[str, Any]) -> None:
    """Add params to a run (an existing param may only be logged again with the same value)."""
    from mlflow.entities import Param

    items = [Param(k, _param_value(v)) for k, v in sorted(params.items())]
    _client(uri).log_batch(run_id, params=items)


def log_image(
    uri: str, run_id: str, image: Any, key: str, step: int, timestamp: int | None = None
) -> None:
    """A step-indexed image (MLflow's image charts: one slider per key, runs side by side).

    ``image``: (H, W, 3) uint8 array or PIL image. Logged synchronously: a trial's process
    may end right after its last report."""
    _client(uri).log_image(
        run_id, image, key=key, step=step, timestamp=timestamp, synchronous=True
    )


def set_tags(uri: str, run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    _client(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_artifacts(
    uri: str, run_id: str, local_dir: Path, artifact_path: str | None = None
) -> None:
    """Upload a directory's files under ``artifact_path`` of the run."""
    _client(uri).log_artifacts(run_id, str(local_dir), artifact_path)


def log_artifact(uri: str, run_id: str, local_file: Path, artifact_path: str) -> None:
    """Upload one file into folder ``artifact_path`` of the run."""
    _client(uri).log_artifact(run_id, str(local_file), artifact_path)


def ui_hint(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """How to see ``run_id`` (or the experiment) in the MLflow UI: a tracking server's own
    address, or the ``mlflow ui`` command that serves a local store."""
    page = f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {uri}  then open http://127.0.0.1:5000/{page}"


def end_run(uri: str, run_id: str, status: str) -> None:
    """Mark the run FINISHED, KILLED or FAILED."""
    from mlflow.entities import RunStatus

    RunStatus.from_string(status)  # raises on an unknown status
    _client(uri).set_terminated(run_id, status)


def _search_filter(search_id: str) -> str:
    return f"tags.`{TAG_SEARCH_ID}` = '{search_id}'"


def open_child_run(
    uri: str,
    experiment_id: str,
    parent_run_id: str,
    name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
) -> str:
    """The trial's run under the parent, found by (search id, trial id) if it exists (a
    restarted trial continues its run: no duplicates), else created RUNNING."""
    client = _client(uri)
    query = (
        f"{_search_filter(tags[TAG_SEARCH_ID])} and tags.`{TAG_TRIAL_ID}` = '{tags[TAG_TRIAL_ID]}'"
    )
    found = client.search_runs([experiment_id], filter_string=query, max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return str(run_id)
    return create_run(uri, experiment_id, name, params, {**tags, TAG_PARENT: parent_run_id})


def _child_runs(client: MlflowClient, experiment_id: str, search_id: str) -> list[Any]:
    """Every trial run of a search (the one query behind the helpers below)."""
    return list(
        client.search_runs(
            [experiment_id],
            filter_string=f"{_search_filter(search_id)} and tags.`{TAG_TRIAL_ID}` != ''",
            max_results=50_000,
        )
    )


def find_child_runs(uri: str, experiment_id: str, search_id: str) -> dict[str, str]:
    """trial id -> run id for the trials of a search."""
    runs = _child_runs(_client(uri), experiment_id, search_id)
    return {r.data.tags[TAG_TRIAL_ID]: r.info.run_id for r in runs}


def child_run_names(uri: str, experiment_id: str, search_id: str) -> dict[str, tuple[str, str]]:
    """trial id -> (run id, run name) for the trials of a search, in one query."""
    runs = _child_runs(_client(uri), experiment_id, search_id)
    return {
        r.data.tags[TAG_TRIAL_ID]: (r.info.run_id, r.info.run_name or r.info.run_id) for r in runs
    }


def find_parent_runs(uri: str, experiment_id: str) -> dict[str, str]:
    """search id -> parent run id for the searches of an experiment."""
    runs = _client(uri).search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_KIND}` = 'search'", max_results=50_000
    )
    return {r.data.tags[TAG_SEARCH_ID]: r.info.run_id for r in runs}


def log_text(uri: str, run_id: str, text: str, artifact_file: str) -> None:
    _client(uri).log_text(run_id, text, artifact_file)


def download_artifacts(uri: str, run_id: str, path: str, dst: Path) -> Path:
    """Download a run's artifact folder to ``dst``; returns the local path."""
    return Path(_client(uri).download_artifacts(run_id, path, str(dst)))


@dataclass(frozen=True)
class TrialRow:
    name: str
    status: str
    value: float | None
    epochs: int


def rank_trials(trials: Sequence[Any], mode: str) -> list[Any]:
    """Best first by ``.value`` (``mode`` max or min); trials without a value last."""
    sign = -1.0 if mode == "max" else 1.0
    return sorted(trials, key=lambda t: (t.value is None, sign * (t.value or 0.0)))


def find_search(uri: str, search_id: str) -> str:
    """The parent run id of search ``search_id`` (any experiment); a UserError if none."""
    client = _client(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(
        experiments,
        filter_string=f"{_search_filter(search_id)} and tags.`{TAG_KIND}` = 'search'",
        max_results=1,
    )
    if not parents:
        raise UserError(f"no search named {search_id!r} in {uri}.")
    return str(parents[0].info.run_id)


def read_text(uri: str, run_id: str, artifact_file: str) -> str:
    """A text artifact of a run."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = _client(uri).download_artifacts(run_id, artifact_file, tmp)
        except MlflowException:
            raise UserError(f"run {run_id} has no {artifact_file} artifact.") from None
        return Path(path).read_text(encoding="utf-8")


def read_search_state(uri: str, search_id: str) -> dict[str, Any]:
    """The saved state of a search (its parent run's ``search_state.json``); a UserError if
    there is no such search."""
    parent = find_search(uri, search_id)
    return dict(json.loads(read_text(uri, parent, SEARCH_STATE_FILE)))


def search_trials(uri: str, search_id: str) -> tuple[str, list[TrialRow], dict[str, float]]:
    """(metric, trials ranked best first, the held-out test scores) of a search, read back
    from MLflow."""
    client = _client(uri)
    parent = client.get_run(find_search(uri, search_id))
    metric = parent.data.params.get("metric", "val_dice")
    children = _child_runs(client, parent.info.experiment_id, search_id)
    rows = [
        TrialRow(
            r.info.run_name or r.info.run_id,
            r.info.status,
            r.data.metrics.get(f"best_{metric}"),
            int(r.data.metrics.get("epoch", 0)),
        )
        for r in children
    ]
    held_out = {k: v for k, v in parent.data.metrics.items() if "test_" in k}
    mode = METRICS[metric].mode if metric in METRICS else "max"
    return metric, rank_trials(rows, mode), held_out


def run_status(uri: str, run_id: str) -> str:
    return str(_client(uri).get_run(run_id).info.status)


def reopen_run(uri: str, run_id: str) -> None:
    """Mark a run RUNNING again (a resumed search continues its parent run)."""
    _client(uri).update_run(run_id, status="RUNNING")


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
    return {"FINISHED": "finished", "KILLED": "stopped_early", "FAILED": "failed"}.get(
        status, "running"
    )


def _history(client: MlflowClient, run_id: str, key: str) -> tuple[tuple[int, int, float], ...]:
    """One point per epoch (a re-run epoch after a restart keeps its last value)."""
    points = client.get_metric_history(run_id, key)
    by_step = {m.step: (m.timestamp, m.step, m.value) for m in points}
    return tuple(sorted(by_step.values(), key=lambda p: (p[0], p[1])))


def search_record(uri: str, search_id: str, metric: str | None = None) -> SearchRecord:
    """The parent run and every trial run of a search, with each trial's per-epoch history of
    ``metric`` (default: the search's metric)."""
    client = _client(uri)
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


# --- A tracking server that goes away -------------------------------------------------------
# A search can outlive its MLflow server's restarts. Every call first asks whether the server
# answers at all (one cheap GET): while it does not, a trial's logging is queued (training goes
# on) and a blocking call waits; only after PATIENCE_ENV seconds of silence does anything give
# up, with TrackingUnavailable. Errors while the server answers are real errors and raised.

PATIENCE_ENV = "UNET_SEARCH_TRACKING_PATIENCE_S"
DEFAULT_PATIENCE_S = 600.0
_PROBE_TIMEOUT_S = 5.0


class TrackingUnavailable(UserError):
    """The MLflow tracking server stayed unreachable for longer than the patience."""


def tracking_patience() -> float:
    """Seconds an unreachable tracking server is waited for (``$UNET_SEARCH_TRACKING_PATIENCE_S``,
    default 600), read by the process that starts a run or search and carried to its workers."""
    raw = os.environ.get(PATIENCE_ENV, "").strip()
    if not raw:
        return DEFAULT_PATIENCE_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise UserError(f"{PATIENCE_ENV}={raw!r}: must be a positive number of seconds.")
    return value


def reachable(uri: str, timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """Whether the tracking store answers at all. Any HTTP answer counts (401 and 404 too:
    the server is there); a local store (SQLite, files) always does."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout)
    except requests.RequestException:
        return False
    return True


def _gave_up(uri: str, what: str, down_s: float, patience_s: float) -> TrackingUnavailable:
    return TrackingUnavailable(
        f"MLflow tracking server {uri} unreachable for {down_s:.0f} s ({what}; "
        f"{PATIENCE_ENV}={patience_s:g})"
    )


class Outage:
    """When the tracking server at ``uri`` stopped answering (one per Outbox, one for the
    search driver), what is said when it goes and comes back, and when to give up."""

    def __init__(self, uri: str, patience_s: float) -> None:
        self.uri, self.patience_s = uri, patience_s
        self.since: float | None = None  # time.time() when it was first found away

    def away(self, doing: str) -> None:
        if self.since is None:
            self.since = time.time()
            print(
                f"MLflow tracking server {self.uri} unreachable; {doing} (waiting up to "
                f"{self.patience_s:.0f} s)",
                flush=True,
            )

    def back(self, done: str) -> None:
        if self.since is not None:
            print(
                f"MLflow tracking server {self.uri} is back after "
                f"{time.time() - self.since:.0f} s; {done}",
                flush=True,
            )
            self.since = None

    def down_for(self) -> float:
        """Seconds since the server stopped answering (0 while it answers)."""
        return 0.0 if self.since is None else time.time() - self.since

    def check(self, what: str) -> None:
        """TrackingUnavailable once the server has been away for the patience."""
        down = self.down_for()
        if down >= self.patience_s:
            raise _gave_up(self.uri, what, down, self.patience_s)


def _try(uri: str, call: Any) -> tuple[bool, Any]:
    """(True, ``call()``), or (False, None) when it failed because the server went away;
    a failure while the server answers is a real error and raised."""
    try:
        return True, call()
    except Exception:
        if reachable(uri):
            raise
        return False, None


def require_reachable(uri: str) -> None:
    """At a command's start: a clear error at once when the server is not there."""
    if not reachable(uri):
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) does not answer; start it "
            "or point MLFLOW_TRACKING_URI at a running one."
        )


def with_patience(uri: str, what: str, call: Any, patience_s: float) -> Any:
    """``call()``, waited for while the tracking server is unreachable (up to ``patience_s``
    seconds of silence, then TrackingUnavailable)."""
    start = time.monotonic()
    delay = 1.0
    warned = False
    while True:
        if reachable(uri):
            sent, result = _try(uri, call)
            if sent:
                return result
        down = time.monotonic() - start
        if down >= patience_s:
            raise _gave_up(uri, what, down, patience_s)
        if not warned:
            print(
                f"MLflow tracking server {uri} unreachable ({what}); waiting up to "
                f"{patience_s:.0f} s for it",
                flush=True,
            )
            warned = True
        time.sleep(min(delay, patience_s - down))
        delay = min(2 * delay, 15.0)


class Outbox:
    """One run's logging, kept in order until the tracking server has it.

    ``log_*`` queue and then send what they can: while the server is unreachable nothing
    blocks (a trial keeps training) and the queue grows. :meth:`pending` / :meth:`restore`
    carry the queue through a checkpoint, so a trial restarted from one sends what its
    predecessor could not. :meth:`drain` waits until everything is sent, and :meth:`check`
    raises TrackingUnavailable once the server has been silent for ``patience_s``. A metric
    keeps the timestamp of its epoch, so a late or repeated send stores the same point."""

    def __init__(self, uri: str, run_id: str, patience_s: float = DEFAULT_PATIENCE_S) -> None:
        self.uri, self.run_id, self.patience_s = uri, run_id, patience_s
        self._queue: list[dict[str, Any]] = []
        self._outage = Outage(uri, patience_s)

    def pending(self) -> list[dict[str, Any]]:
        """The unsent items (JSON-serializable)."""
        return list(self._queue)

    def restore(self, items: Sequence[Mapping[str, Any]]) -> None:
        """Put items saved by :meth:`pending` (in an earlier process) first in the queue."""
        self._queue[:0] = [dict(item) for item in items]

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        values = {k: float(v) for k, v in metrics.items()}
        self._put({"kind": "metrics", "step": step, "ts": _now_ms(), "values": values})

    def log_params(self, params: Mapping[str, Any], now: bool = True) -> None:
        """``now=False``: queue only (sent with the next call that sends)."""
        values = {k: _param_value(v) for k, v in params.items()}
        self._put({"kind": "params", "values": values}, now)

    def set_tags(self, tags: Mapping[str, Any], now: bool = True) -> None:
        self._put({"kind": "tags", "values": {k: str(v) for k, v in tags.items()}}, now)

    def log_image(self, image: Any, key: str, step: int) -> None:
        """``image``: (H, W, 3) uint8 array, kept as PNG until sent."""
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        png = base64.b64encode(buffer.getvalue()).decode("ascii")
        self._put({"kind": "image", "key": key, "step": step, "ts": _now_ms(), "png": png})

    def _put(self, item: dict[str, Any], now: bool = True) -> None:
        self._queue.append(item)
        if now:
            self.flush()

    def _send(self, item: Mapping[str, Any]) -> None:
        kind, values = item["kind"], item.get("values", {})
        if kind == "metrics":
            log_metrics(self.uri, self.run_id, values, item["step"], item["ts"])
        elif kind == "params":
            log_params(self.uri, self.run_id, values)
        elif kind == "tags":
            set_tags(self.uri, self.run_id, values)
        elif kind == "image":
            from PIL import Image

            picture = Image.open(io.BytesIO(base64.b64decode(item["png"])))
            log_image(self.uri, self.run_id, picture, item["key"], item["step"], item["ts"])
        else:
            raise ValueError(f"unknown outbox item {kind!r}")

    def flush(self) -> bool:
        """Send what is queued, in order; False (nothing lost) while the server is away."""
        if not self._queue:
            return True
        doing = f"run {self.run_id} queues its logging and keeps training"
        if not reachable(self.uri):
            self._outage.away(doing)
            return False
        while self._queue:
            sent, _ = _try(self.uri, lambda: self._send(self._queue[0]))
            if not sent:
                self._outage.away(doing)
                return False
            self._queue.pop(0)
        self._outage.back("the queued logging was sent")
        return True

    def check(self) -> None:
        """TrackingUnavailable once the server has been away for longer than the patience."""
        self._outage.check(f"run {self.run_id}, {len(self._queue)} items unsent")

    def drain(self) -> None:
        """Block until everything queued is sent, or TrackingUnavailable."""
        while not self.flush():
            self.check()
            time.sleep(min(5.0, max(0.5, self.patience_s - self._outage.down_for())))


def _now_ms() -> int:
    return int(time.time() * 1000)


TEST_KEYS = ("test_dice", "test_iou", "test_dsb_score")


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
