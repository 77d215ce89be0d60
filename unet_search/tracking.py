"""Every MLflow call for runs: experiments, run creation, params, per-epoch metrics, artifacts.

Uses ``MlflowClient`` with an explicit tracking URI everywhere (no global "active run"), so
the same functions work in the CLI process and inside Ray workers. Default store: SQLite
under the work directory, artifacts in ``<work_dir>/mlartifacts``; ``MLFLOW_TRACKING_URI``
is honoured.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

__all__ = [
    "TAG_CODE_VERSION",
    "TAG_FINGERPRINT",
    "create_run",
    "end_run",
    "ensure_experiment",
    "log_artifacts",
    "log_metrics",
    "resolve_tracking_uri",
    "set_tags",
]

TAG_FINGERPRINT = "unet_search.data_fingerprint"
TAG_CODE_VERSION = "unet_search.code_version"
_BATCH = 100  # MLflow's per-request limit on params


def resolve_tracking_uri(workdir: Path) -> str:
    """``$MLFLOW_TRACKING_URI`` or ``sqlite:///<workdir>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    workdir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{workdir / 'mlflow.db'}"


def ensure_experiment(uri: str, name: str, workdir: Path) -> str:
    """The id of experiment ``name``, created if missing (artifacts under the work dir when
    the store is a local SQLite file, else where the server puts them)."""
    client = MlflowClient(uri)
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


def create_run(
    uri: str, experiment_id: str, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]
) -> str:
    """Create a run (status RUNNING) with its params and tags; returns the run id."""
    client = MlflowClient(uri)
    run = client.create_run(
        experiment_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()}
    )
    items = [Param(k, _param_value(v)) for k, v in sorted(params.items())]
    for i in range(0, len(items), _BATCH):
        client.log_batch(run.info.run_id, params=items[i : i + _BATCH])
    return str(run.info.run_id)


def log_metrics(uri: str, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    """Log a set of metrics at one step (epoch) in one request."""
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in sorted(metrics.items())]
    MlflowClient(uri).log_batch(run_id, metrics=batch)


def set_tags(uri: str, run_id: str, tags: Mapping[str, Any]) -> None:
    MlflowClient(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_artifacts(
    uri: str, run_id: str, local_dir: Path, artifact_path: str | None = None
) -> None:
    """Upload a directory's files under ``artifact_path`` of the run."""
    MlflowClient(uri).log_artifacts(run_id, str(local_dir), artifact_path)


def end_run(uri: str, run_id: str, status: str) -> None:
    """Mark the run FINISHED, KILLED or FAILED."""
    RunStatus.from_string(status)  # raises on an unknown status
    MlflowClient(uri).set_terminated(run_id, status)
