"""Ray Train: start or join Ray, check that the cluster can ever give what a run asks for,
build the ``TorchTrainer`` (gloo on CPUs, NCCL on GPUs) and run ``unet-search train``."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch

from unet_search import RAY_ENV
from unet_search.core.config import RunConfig
from unet_search.core.env import code_version
from unet_search.core.errors import UserError
from unet_search.core.names import TRIAL_SLOT
from unet_search.core.outcome import RunStatus
from unet_search.core.tags import (
    TAG_CODE_VERSION,
    TAG_DATA_LAYOUT,
    TAG_FINGERPRINT,
    TAG_RAY_NUM_WORKERS,
)
from unet_search.data.dataset import DatasetArrays
from unet_search.distributed.context import RECIPE_KEY, RecipeInput
from unet_search.distributed.faults import FAULT_ENV
from unet_search.distributed.recipe import train_loop_per_worker
from unet_search.models.build import build_model, count_parameters
from unet_search.tracking.client import (
    create_run,
    end_run,
    ensure_experiment,
    resolve_tracking_uri,
)
from unet_search.tracking.outage import reachable, require_reachable, tracking_patience

__all__ = [
    "API_SERVER_ENV",
    "ResourceError",
    "init_ray",
    "check_resources",
    "build_trainer",
    "TrainOutcome",
    "run_training",
]


class ResourceError(UserError):
    """The cluster can never provide what a run asks for."""


# Ray's State API finds its cluster, when no address is set, by looking for GCS processes on
# the machine: with another local Ray running (another unet-search, a notebook) it finds two
# and raises "Found multiple active Ray instances". Ray Train V2's PlacementGroupCleaner asks
# it whether the run's controller lives, so there it died with a traceback in the run's
# output, and nothing was left to free the run's placement groups. A local Ray started here
# serves its dashboard (the State API's server) on a port chosen here, and every process of
# it is told that address.
API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def init_ray(address: str | None = None, log_to_driver: bool = True) -> None:
    """Connect to ``address`` / ``$RAY_ADDRESS``, else start a new local Ray (never attach to
    a cluster by accident) whose processes all talk to it alone, another local Ray running or
    not; tasks and actors run offline."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    env = dict(RAY_ENV)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        env["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
    local: dict[str, Any] = {}
    if address == "local":
        # A local cluster gets TRIAL_SLOT resources: a search's TorchTrainer trial drivers
        # hold one slot and no CPU (see search/trial.py, _resources).
        port = _free_port()
        # In the job's runtime env, not this process's: a process this one starts later (a
        # `ray start` cluster, another command) must not inherit this cluster's address.
        env[API_SERVER_ENV] = f"http://127.0.0.1:{port}"
        local = {
            "resources": {TRIAL_SLOT: 1000.0},
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": port,
        }
    # Inside a Ray job (unet-search submit) the job's runtime env already carries these
    # variables, and Ray refuses a driver runtime env that repeats them.
    in_job = bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))
    ray.init(
        address=address,
        runtime_env=None if in_job else {"env_vars": env},
        log_to_driver=log_to_driver,
        logging_level=logging.WARNING,
        **local,
    )


def check_resources(cfg: RunConfig) -> None:
    """Fail at once, not after waiting forever, when the cluster cannot fit the workers."""
    total = ray.cluster_resources()
    tc = cfg.train
    need = {"CPU": tc.num_workers * tc.cpus_per_worker, "GPU": tc.num_workers * tc.gpus_per_worker}
    for resource, amount in need.items():
        if amount > total.get(resource, 0):
            raise ResourceError(
                f"`train.num_workers` x `train.{resource.lower()}s_per_worker` = {amount:g} "
                f"{resource}s, but the Ray cluster has {total.get(resource, 0):g}; lower them "
                "or add nodes."
            )


def build_trainer(
    recipe: RecipeInput,
    storage: Path,
    name: str,
    worker_env: dict[str, str] | None = None,
    callbacks: list[Any] | None = None,
) -> ray.train.torch.TorchTrainer:
    """A TorchTrainer for one run: DDP over ``num_workers`` (gloo on CPU, NCCL on GPU), each
    worker running the recipe on ``recipe``. ``worker_env`` adds environment variables to
    the training workers only; a fault-injection spec there (or in this process's
    environment) reaches the recipe."""
    tc = recipe.run_config.train
    use_gpu = tc.gpus_per_worker > 0
    resources: dict[str, float] = {"CPU": tc.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = tc.gpus_per_worker
    fault = recipe.fault or (worker_env or {}).get(FAULT_ENV) or os.environ.get(FAULT_ENV)
    return ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={RECIPE_KEY: dataclasses.replace(recipe, fault=fault)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=tc.num_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        torch_config=ray.train.torch.TorchConfig(backend="nccl" if use_gpu else "gloo"),
        # Train V2's RunConfig at run time; mypy sees the V1 class, which lacks worker_runtime_env.
        run_config=ray.train.RunConfig(  # type: ignore[call-arg]
            name=name,
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=tc.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            worker_runtime_env={"env_vars": worker_env} if worker_env else None,
            callbacks=callbacks,
        ),
    )


@dataclass(frozen=True)
class TrainOutcome:
    run_id: str
    experiment_id: str
    metrics: dict[str, float]
    num_parameters: int


def run_training(
    cfg: RunConfig,
    arrays: DatasetArrays,
    data_dir: Path,
    workdir: Path,
    experiment: str,
    run_name: str | None = None,
    worker_env: dict[str, str] | None = None,
) -> TrainOutcome:
    """One training run on Ray Train, tracked as one MLflow run (FINISHED/FAILED/KILLED)."""
    num_parameters = count_parameters(build_model(cfg.model, cfg.data.network_classes))
    init_ray()
    check_resources(cfg)
    uri = resolve_tracking_uri(workdir)
    require_reachable(uri)
    experiment_id = ensure_experiment(uri, experiment, workdir)
    name = run_name or (
        f"{cfg.model.arch} {cfg.model.encoder} d{cfg.model.depth} f{cfg.model.base_filters}"
    )
    run_id = create_run(
        uri,
        experiment_id,
        name,
        params={**cfg.flat(), "num_parameters": num_parameters, "data_dir": str(data_dir)},
        tags={
            TAG_FINGERPRINT: arrays.fingerprint,
            TAG_CODE_VERSION: code_version(),
            TAG_DATA_LAYOUT: arrays.layout,
            TAG_RAY_NUM_WORKERS: str(cfg.train.num_workers),
        },
    )
    recipe = RecipeInput(
        cfg, ray.put(arrays), uri, run_id, tracking_patience_s=tracking_patience()
    )
    trainer = build_trainer(recipe, workdir / "ray_results", f"train-{run_id}", worker_env)
    status = RunStatus.FAILED
    try:
        result = trainer.fit()
        status = RunStatus.FINISHED
    except KeyboardInterrupt:
        status = RunStatus.KILLED
        raise
    finally:
        if reachable(uri):  # else the run stays RUNNING: it did not end well
            end_run(uri, run_id, status)
    metrics = {
        k: float(v)
        for k, v in (result.metrics or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    return TrainOutcome(run_id, experiment_id, metrics, num_parameters)
