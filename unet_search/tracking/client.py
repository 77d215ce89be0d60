"""Every MLflow call for runs: experiments, run creation, params, per-epoch metrics, artifacts.

Uses ``MlflowClient`` with an explicit tracking URI everywhere (no global "active run"), so
the same functions work in the CLI process and inside Ray workers. MLflow is imported on
first use: of a trial's Ray Train workers only rank 0 logs, and the others need not spend
MLflow's import (~0.7 s of CPU each) while a trial starts. Default store: SQLite
under the work directory, artifacts in ``<work_dir>/mlartifacts``; ``MLFLOW_TRACKING_URI``
is honoured.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unet_search.core.errors import UserError
from unet_search.core.outcome import RunStatus
from unet_search.core.tags import (
    TAG_PARENT,
    TAG_SEARCH_ID,
    TAG_TRIAL_ID,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


__all__ = [
    "create_run",
    "download_artifacts",
    "end_run",
    "ensure_experiment",
    "log_artifact",
    "log_artifacts",
    "log_image",
    "log_metrics",
    "log_params",
    "log_text",
    "mlflow_client",
    "now_ms",
    "open_child_run",
    "param_value",
    "read_text",
    "reopen_run",
    "resolve_tracking_uri",
    "run_start_s",
    "run_status",
    "search_filter",
    "set_tags",
    "tracking_uri_of",
    "ui_hint",
]


_BATCH = 100  # MLflow's per-request limit on params


def tracking_uri_of(workdir: Path) -> str:
    """Where the commands track: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<workdir>/mlflow.db``
    (said, not checked, created or resolved: :func:`resolve_tracking_uri` does those)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workdir / 'mlflow.db'}"


def resolve_tracking_uri(workdir: Path, *, create: bool = True) -> str:
    """:func:`tracking_uri_of` ``workdir``. With ``create=False`` (read-only commands) a
    missing local store is a UserError, and nothing is created."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return tracking_uri_of(workdir)
    db = workdir / "mlflow.db"
    if not create and not db.exists():
        raise UserError(
            f"{db}: no MLflow store here yet; run a search first, or set "
            "UNET_SEARCH_HOME / MLFLOW_TRACKING_URI."
        )
    workdir.mkdir(parents=True, exist_ok=True)
    return tracking_uri_of(workdir)


def ensure_experiment(uri: str, name: str, workdir: Path) -> str:
    """The id of experiment ``name``, created if missing (artifacts under the work dir when
    the store is a local SQLite file, else where the server puts them)."""
    client = mlflow_client(uri)
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


def param_value(value: Any) -> str:
    return "None" if value is None else str(value)


def mlflow_client(uri: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def create_run(
    uri: str, experiment_id: str, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]
) -> str:
    """Create a run (status RUNNING) with its params and tags; returns the run id."""
    from mlflow.entities import Param

    client = mlflow_client(uri)
    run = client.create_run(
        experiment_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()}
    )
    items = [Param(k, param_value(v)) for k, v in sorted(params.items())]
    for i in range(0, len(items), _BATCH):
        client.log_batch(run.info.run_id, params=items[i : i + _BATCH])
    return str(run.info.run_id)


def log_metrics(
    uri: str, run_id: str, metrics: Mapping[str, float], step: int, timestamp: int | None = None
) -> None:
    """Log a set of metrics at one step (epoch) in one request, stamped ``timestamp`` (ms;
    default now)."""
    from mlflow.entities import Metric

    stamp = now_ms() if timestamp is None else timestamp
    batch = [Metric(k, float(v), stamp, step) for k, v in sorted(metrics.items())]
    mlflow_client(uri).log_batch(run_id, metrics=batch)


def log_params(uri: str, run_id: str, params: Mapping[str, Any]) -> None:
    """Add params to a run (an existing param may only be logged again with the same value)."""
    from mlflow.entities import Param

    items = [Param(k, param_value(v)) for k, v in sorted(params.items())]
    mlflow_client(uri).log_batch(run_id, params=items)


def log_image(
    uri: str, run_id: str, image: Any, key: str, step: int, timestamp: int | None = None
) -> None:
    """A step-indexed image (MLflow's image charts: one slider per key, runs side by side).

    ``image``: (H, W, 3) uint8 array or PIL image. Logged synchronously: a trial's process
    may end right after its last report."""
    mlflow_client(uri).log_image(
        run_id, image, key=key, step=step, timestamp=timestamp, synchronous=True
    )


def set_tags(uri: str, run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    mlflow_client(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_artifacts(
    uri: str, run_id: str, local_dir: Path, artifact_path: str | None = None
) -> None:
    """Upload a directory's files under ``artifact_path`` of the run."""
    mlflow_client(uri).log_artifacts(run_id, str(local_dir), artifact_path)


def log_artifact(uri: str, run_id: str, local_file: Path, artifact_path: str) -> None:
    """Upload one file into folder ``artifact_path`` of the run."""
    mlflow_client(uri).log_artifact(run_id, str(local_file), artifact_path)


def ui_hint(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """How to see ``run_id`` (or the experiment) in the MLflow UI: a tracking server's own
    address, or the ``mlflow ui`` command that serves a local store."""
    page = f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {uri}  then open http://127.0.0.1:5000/{page}"


def end_run(uri: str, run_id: str, status: str) -> None:
    """Mark the run FINISHED, KILLED or FAILED."""
    from mlflow.entities import RunStatus as MlflowStatus

    MlflowStatus.from_string(str(status))  # raises on an unknown status
    mlflow_client(uri).set_terminated(run_id, str(status))


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
    client = mlflow_client(uri)
    query = (
        f"{search_filter(tags[TAG_SEARCH_ID])} and tags.`{TAG_TRIAL_ID}` = '{tags[TAG_TRIAL_ID]}'"
    )
    found = client.search_runs([experiment_id], filter_string=query, max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status=RunStatus.RUNNING)
        return str(run_id)
    return create_run(uri, experiment_id, name, params, {**tags, TAG_PARENT: parent_run_id})


def log_text(uri: str, run_id: str, text: str, artifact_file: str) -> None:
    mlflow_client(uri).log_text(run_id, text, artifact_file)


def read_text(uri: str, run_id: str, artifact_file: str) -> str | None:
    """A run's text artifact (``log_text``'s), or None when the run has none of that name."""
    client = mlflow_client(uri)
    folder, _, name = artifact_file.rpartition("/")
    if name not in {Path(f.path).name for f in client.list_artifacts(run_id, folder or None)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(run_id, artifact_file, tmp)).read_text("utf-8")


def download_artifacts(uri: str, run_id: str, path: str, dst: Path) -> Path:
    """Download a run's artifact folder to ``dst``; returns the local path."""
    return Path(mlflow_client(uri).download_artifacts(run_id, path, str(dst)))


def run_start_s(uri: str, run_id: str) -> float:
    """When a run started (Unix seconds)."""
    return float(mlflow_client(uri).get_run(run_id).info.start_time) / 1000.0


def run_status(uri: str, run_id: str) -> str:
    return str(mlflow_client(uri).get_run(run_id).info.status)


def reopen_run(uri: str, run_id: str) -> None:
    """Mark a run RUNNING again (a resumed search continues its parent run)."""
    mlflow_client(uri).update_run(run_id, status=RunStatus.RUNNING)


def now_ms() -> int:
    return int(time.time() * 1000)


def search_filter(search_id: str) -> str:
    return f"tags.`{TAG_SEARCH_ID}` = '{search_id}'"
