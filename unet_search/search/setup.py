"""What a search needs before its Tuner: the resources a trial may ask for, the trials at
once, the search's name, where Ray's results go and where Ray's own log goes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import ray

from unet_search.core.env import storage_setting
from unet_search.distributed.trainer import ResourceError
from unet_search.space.spec import RESOURCE_FIELDS, SearchSpec
from unet_search.tracking.read import find_parent_runs

__all__ = [
    "check_search_resources",
    "concurrency",
    "next_search_name",
    "route_ray_logs",
    "storage_root",
]


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


def concurrency(spec: SearchSpec, total_cpus: int) -> int:
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
    used = set(find_parent_runs(uri, experiment_id))
    i = 1
    while f"{base}-{i}" in used or (
        "://" not in storage and Path(storage, f"{base}-{i}").exists()
    ):
        i += 1
    return f"{base}-{i}"


def storage_root(workdir: Path, storage: str | None) -> str:
    """Where Ray results go: ``--storage`` / ``$UNET_SEARCH_STORAGE`` (a shared path or a
    URI every node can reach), else the work directory."""
    root = storage_setting(storage)
    if root and "://" in root:
        return root
    return str(Path(root).resolve()) if root else str(workdir / "ray_results")


_QUIETED = ("mlflow", "alembic", "optuna")  # their own log lines: the search's log


def route_ray_logs(workdir: Path, search_id: str) -> Path:
    """Ray's, Tune's, MLflow's and Optuna's own log output and Python's warnings (third-party
    ones a user can do nothing about) go to ``<work_dir>/logs/<search>.log`` (appended), not
    the terminal, with the progress lines the terminal shows; returns the path, which the
    CLI prints."""
    path = workdir / "logs" / f"{search_id}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.unet_search = True  # type: ignore[attr-defined]
    logging.getLogger("unet_search").setLevel(logging.INFO)
    logging.captureWarnings(True)  # third-party warnings: the log, not the terminal
    # Tune's own output engine prints a configuration box and where its results are at each
    # start, whatever the verbosity: its older one is silent at verbosity 0 (the live view
    # says what matters)
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    # with MLflow's store migrations and Optuna's "new study" lines: theirs, not news
    for name in ("ray", "ray.tune", "ray.train", "unet_search", "py.warnings", *_QUIETED):
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
