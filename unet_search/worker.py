"""Ray Train: the per-worker training function, the TorchTrainer that runs it, and Ray start-up.

The per-worker function is a recipe: data from the object store -> loaders (distributed
sampler) -> build_model -> prepare_model (DDP) -> resume from a checkpoint if any -> engine.fit,
where each epoch rank 0 logs to MLflow, writes the checkpoint, and every rank calls
``ray.train.report``. Every ``samples_every`` epochs rank 0 logs image | truth | prediction
overlays of a fixed set of validation samples (the same for every trial of a search); at the
end it logs the best model, the samples predicted by it and its inference time per image.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DataLoader

from unet_search import RAY_ENV, tags, tracking
from unet_search.config import RunConfig, TrainConfig, UserError, code_version
from unet_search.data import DatasetArrays
from unet_search.engine import (
    TrainingState,
    build_loaders,
    fit,
    new_training_state,
    seed_everything,
    val_indices,
)
from unet_search.losses import build_loss
from unet_search.metrics import logits_to_labels
from unet_search.models import build_model, count_parameters, save_model_dir
from unet_search.sliding import plan_of, predict_logits
from unet_search.transforms import (
    Normalization,
    normalization_for,
)
from unet_search.visualize import triptych

__all__ = [
    "ResourceError",
    "TrainOutcome",
    "build_trainer",
    "check_resources",
    "init_ray",
    "preprocessing_of",
    "WorkerContext",
    "run_recipe",
    "run_training",
    "train_loop_per_worker",
]

STATE_FILE = "state.pt"
UNSENT_FILE = "mlflow_unsent.json"  # in a checkpoint: logging the tracking server lacks
SAMPLES_KEY = "val_predictions"  # MLflow image key: the fixed samples every few epochs
FAULT_ENV = "UNET_SEARCH_FAULT"


class ResourceError(UserError):
    """The cluster can never provide what a run asks for."""


def preprocessing_of(cfg: RunConfig, norm: Normalization | None = None) -> dict[str, Any]:
    """What a downstream predictor must do to an image, saved next to the weights (read back
    by :func:`unet_search.sliding.plan_of_preprocessing`). ``norm``: the run's measured
    normalization (needed for ``dataset``)."""
    norm = norm or normalization_for(cfg)
    return {
        "input_mode": cfg.data.input_mode,
        "patch_size": list(cfg.data.patch_size),
        "scale": cfg.data.scale,
        "tile_overlap": cfg.train.tile_overlap,
        "tta": cfg.train.tta,
        "image_size": cfg.data.square,  # resize mode's square
        "resize": "bilinear",
        "normalization": norm.name,
        "mean": list(norm.mean),
        "std": list(norm.std),
        "in_channels": cfg.model.in_channels,
        "num_classes": cfg.data.num_classes,
        "threshold": cfg.train.threshold,
    }


def _node_ids(world: int) -> list[str]:
    """The Ray node ids the ranks of this run are on, each once, in rank order (a
    collective: every rank calls it)."""
    mine = ray.get_runtime_context().get_node_id()
    every: list[Any] = [mine]
    if world > 1 and dist.is_available() and dist.is_initialized():
        every = [None] * world
        dist.all_gather_object(every, mine)
    return list(dict.fromkeys(str(node) for node in every))


@dataclass(frozen=True)
class WorkerContext:
    """Where the recipe runs: a Ray Train worker (DDP) or a Tune trial process (one worker).

    ``report(metrics, checkpoint_dir)`` hands an epoch to Ray; ``checkpoint_dir()`` returns
    the directory of the checkpoint to resume from, if any (a context manager)."""

    rank: int
    world: int
    device: torch.device
    report: Callable[[dict[str, float], str | None], None]
    checkpoint_dir: Callable[[], contextlib.AbstractContextManager[str | None]]
    prepare_model: Callable[[torch.nn.Module], torch.nn.Module]
    prepare_loader: Callable[[DataLoader[Any]], DataLoader[Any]]


def _save_checkpoint(state: TrainingState, outbox: tracking.Outbox | None = None) -> str:
    """The training state and the MLflow logging not yet sent (a restarted trial sends it)."""
    directory = tempfile.mkdtemp(prefix="unet-search-ckpt-")
    torch.save(state.state_dict(), Path(directory) / STATE_FILE)
    unsent = outbox.pending() if outbox is not None else []
    if unsent:
        (Path(directory) / UNSENT_FILE).write_text(json.dumps(unsent), "utf-8")
    return directory


def _resume(
    state: TrainingState, ctx: WorkerContext, outbox: tracking.Outbox | None = None
) -> None:
    with ctx.checkpoint_dir() as directory:
        if directory is None:
            return
        saved = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
        unsent = Path(directory) / UNSENT_FILE
        if outbox is not None and unsent.is_file():
            outbox.restore(json.loads(unsent.read_text("utf-8")))
    state.load_state_dict(saved)


def _sample_indices(cfg: RunConfig, arrays: DatasetArrays) -> np.ndarray:
    """The fixed validation images every trial of a search shows."""
    return val_indices(cfg, arrays)[: cfg.train.num_sample_images]


def _predict_masks(
    module: torch.nn.Module,
    cfg: RunConfig,
    arrays: DatasetArrays,
    picks: np.ndarray,
    norm: Normalization,
) -> list[np.ndarray]:
    """Whole-image labels of ``picks``, as ``predict`` segments them."""
    plan = plan_of(cfg)
    device = next(module.parameters()).device
    out = []
    for i in picks:
        logits = predict_logits(
            module, arrays.image(int(i)), plan, norm, cfg.model.in_channels, device
        )
        out.append(logits_to_labels(logits[None], cfg.train.threshold)[0].cpu().numpy())
    return out


def _sample_image(
    module: torch.nn.Module,
    cfg: RunConfig,
    arrays: DatasetArrays,
    picks: np.ndarray,
    norm: Normalization,
) -> np.ndarray | None:
    """image | truth | prediction rows for the fixed ``picks``, or None without samples."""
    if not len(picks):
        return None
    pred = _predict_masks(module, cfg, arrays, picks, norm)
    return triptych(
        [arrays.image(int(i)) for i in picks], [arrays.mask(int(i)) for i in picks], pred
    )


def _samples_due(tc: TrainConfig, epoch: int, finished: bool) -> bool:
    return tc.num_sample_images > 0 and (
        finished or (tc.samples_every > 0 and epoch % tc.samples_every == 0)
    )


def _inference_ms_per_image(
    module: torch.nn.Module,
    cfg: RunConfig,
    arrays: DatasetArrays,
    picks: np.ndarray,
    norm: Normalization,
    repeats: int = 3,
) -> float:
    """Median wall time per image of predicting ``picks`` whole (as ``predict`` does), after a
    warm-up."""
    _predict_masks(module, cfg, arrays, picks[:1], norm)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _predict_masks(module, cfg, arrays, picks, norm)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times)) / len(picks)


def _log_final(
    cfg: RunConfig,
    arrays: DatasetArrays,
    state: TrainingState,
    outbox: tracking.Outbox,
    picks: np.ndarray,
    norm: Normalization,
) -> None:
    """Rank 0: the best weights as a model directory, image | truth | prediction overlays of
    the fixed samples ``picks`` by the best weights, and their inference time per image."""
    module = copy.deepcopy(state.module)  # the trained model stays as the checkpoint has it
    if state.best_state is not None:
        module.load_state_dict(state.best_state)
    metrics = {"best_epoch": float(state.early.best_epoch)}
    with tempfile.TemporaryDirectory() as tmp:
        save_model_dir(
            Path(tmp) / "best_model",
            module,
            cfg.model,
            cfg.data.num_classes,
            preprocessing_of(cfg, norm),
        )
        picture = _sample_image(module, cfg, arrays, picks, norm)
        if picture is not None:
            (Path(tmp) / "samples").mkdir()
            Image.fromarray(picture).save(Path(tmp) / "samples" / "predictions.png")
            metrics["inference_ms_per_image"] = _inference_ms_per_image(
                module, cfg, arrays, picks, norm
            )
        outbox.drain()  # every epoch's logging first, then the model
        uri, run_id = outbox.uri, outbox.run_id
        tracking.with_patience(
            uri,
            f"run {run_id}: the best model",
            lambda: tracking.log_artifacts(uri, run_id, Path(tmp)),
            outbox.patience_s,
        )
    outbox.log_metrics(metrics, step=state.epoch)
    outbox.drain()


def run_recipe(config: dict[str, Any], ctx: WorkerContext) -> None:
    """The training recipe every worker runs. ``config`` holds ``run_config`` (dict),
    ``dataset`` (ObjectRef of DatasetArrays, or the arrays), ``tracking_uri``, ``run_id``
    and optionally ``fault`` (a fault-injection spec, see :func:`_maybe_fail`) and
    ``tracking_patience_s`` (how long an unreachable tracking server is waited for).

    Rank 0's MLflow logging goes through an :class:`~unet_search.tracking.Outbox`: while the
    server is away training goes on, the unsent logging travels with each checkpoint, and
    the run fails (checkpoint kept, for ``resume``) only after the patience runs out."""
    cfg = RunConfig.from_dict(config["run_config"])
    uri, run_id, rank, world, device = (
        config["tracking_uri"],
        config["run_id"],
        ctx.rank,
        ctx.world,
        ctx.device,
    )
    torch.set_num_threads(cfg.train.cpus_per_worker)
    seed_everything(cfg.train.seed + rank)
    data = config["dataset"]
    arrays: DatasetArrays = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    train_loader, val = build_loaders(cfg, arrays, rank, world)
    model = build_model(cfg.model, cfg.data.num_classes).to(device)
    if device.type == "cuda" and cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_loader = ctx.prepare_loader(train_loader)  # this rank's share of each epoch
    # The schedule spans the steps this rank really takes.
    state = new_training_state(ctx.prepare_model(model), cfg, len(train_loader), device)
    patience = float(config.get("tracking_patience_s") or tracking.DEFAULT_PATIENCE_S)
    outbox = tracking.Outbox(uri, run_id, patience)
    _resume(state, ctx, outbox if rank == 0 else None)
    nodes = _node_ids(world) if state.epoch == 0 else []  # every rank takes part
    if rank == 0 and state.epoch == 0:
        # Queued, sent with the first epoch: the other ranks would wait at the first step
        # while rank 0 opens its MLflow connection (~2 s measured, bench/trial_cost.py).
        outbox.log_params({"num_parameters": count_parameters(model)}, now=False)
        outbox.set_tags(
            {
                "ray.world_size": world,
                "ray.node_ip": ray.util.get_node_ip_address(),
                "ray.node_id": ray.get_runtime_context().get_node_id(),
                "ray.node_ids": ",".join(nodes),  # the nodes of all ranks
            },
            now=False,
        )

    # Rank 0 logs the overlays: the same fixed samples every epoch (and in every trial).
    picks = _sample_indices(cfg, arrays) if rank == 0 else np.empty(0, np.int64)

    def report(metrics: dict[str, float], st: TrainingState) -> None:
        # Log before reporting: a failure between the two repeats an epoch's point in MLflow
        # at the same step instead of losing it.
        if rank == 0:
            epoch, finished = int(metrics["epoch"]), bool(metrics["finished"])
            outbox.log_metrics(metrics, step=epoch)
            if _samples_due(cfg.train, epoch, finished):
                picture = _sample_image(st.module, cfg, arrays, picks, val.normalization)
                if picture is not None:
                    outbox.log_image(picture, SAMPLES_KEY, epoch)
            if finished:
                # Before the last report: Tune may end a finished trial's process right
                # after it, so nothing after fit() is guaranteed to run.
                _log_final(cfg, arrays, st, outbox, picks, val.normalization)
        directory = _save_checkpoint(st, outbox) if rank == 0 else None
        try:
            ctx.report(metrics, directory)  # Ray persists the checkpoint before returning
        finally:
            if directory:
                shutil.rmtree(directory, ignore_errors=True)
        if rank == 0:
            outbox.check()  # after the checkpoint: nothing of this epoch is lost
        _maybe_fail(int(metrics["epoch"]), rank, world, cfg, config.get("fault"))

    fit(state, cfg, train_loader, val, build_loss(cfg.loss), device, report)


def ray_hooks(
    report: Callable[..., None], checkpoint_type: Any, get_checkpoint: Callable[[], Any]
) -> tuple[
    Callable[[dict[str, float], str | None], None],
    Callable[[], contextlib.AbstractContextManager[str | None]],
]:
    """A :class:`WorkerContext`'s ``report`` and ``checkpoint_dir`` over Ray Train's API
    (``ray.train.report``, ``ray.train.Checkpoint``, ``ray.train.get_checkpoint``) or Tune's
    (``tune.report``, ...): the same three calls under two names, written once."""

    def send(metrics: dict[str, float], directory: str | None) -> None:
        checkpoint = checkpoint_type.from_directory(directory) if directory else None
        report(metrics, checkpoint=checkpoint)

    @contextlib.contextmanager
    def checkpoint_dir() -> Iterator[str | None]:
        checkpoint = get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as directory:
            yield directory

    return send, checkpoint_dir


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train per-worker function: the recipe in a DDP worker group."""
    train_ctx = ray.train.get_context()
    report, checkpoint_dir = ray_hooks(
        ray.train.report, ray.train.Checkpoint, ray.train.get_checkpoint
    )
    ctx = WorkerContext(
        rank=train_ctx.get_world_rank(),
        world=train_ctx.get_world_size(),
        device=ray.train.torch.get_device(),
        report=report,
        checkpoint_dir=checkpoint_dir,
        prepare_model=lambda m: ray.train.torch.prepare_model(m, move_to_device=False),
        prepare_loader=lambda d: ray.train.torch.prepare_data_loader(d, move_to_device=False),
    )
    run_recipe(config, ctx)


def _maybe_fail(epoch: int, rank: int, world: int, cfg: RunConfig, spec: str | None) -> None:
    """Fault injection for tests, ``UNET_SEARCH_FAULT`` (read by the process that starts the
    run or search, and passed to its workers with their config):

    - ``"epoch=N,marker=PATH[,after_s=S]"`` kills the last rank once, S seconds (default 3)
      after epoch N's report, i.e. while the other ranks are inside epoch N+1. The marker
      file records that it happened.
    - ``"epoch=N,raise=oom[,when=KEY:VALUE]"`` raises a (simulated) out-of-memory error
      right after epoch N's report, in every run whose config has KEY = VALUE (e.g.
      ``when=base_filters:8``), or in every run without ``when``.

    Ray Train V2 registers a reported checkpoint when its controller next polls the workers
    (every 2 s), so a failure within 2 s of a report can lose that report: the epoch is then
    re-run from the previous checkpoint (and logged again at the same MLflow step)."""
    if not spec or rank != world - 1:
        return
    fields = dict(part.split("=", 1) for part in spec.split(","))
    if int(fields["epoch"]) != epoch:
        return
    if fields.get("raise") == "oom":
        key, _, value = fields.get("when", ":").partition(":")
        if not key or str(cfg.flat().get(key)) == value:
            raise torch.OutOfMemoryError(
                f"simulated out of memory after epoch {epoch} (fault injection {FAULT_ENV})"
            )
        return
    marker = Path(fields["marker"])
    if not marker.exists():
        time.sleep(float(fields.get("after_s", 3.0)))
        marker.write_text(f"worker rank {rank} killed after epoch {epoch}\n", encoding="utf-8")
        os._exit(1)


def init_ray(address: str | None = None, log_to_driver: bool = True) -> None:
    """Connect to ``address`` / ``$RAY_ADDRESS``, else start a new local Ray (never attach to
    a cluster by accident); tasks and actors run offline."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    # A local cluster gets "trial_slot" resources: a search's TorchTrainer trial drivers hold
    # one slot and no CPU (see search.py).
    resources = {"trial_slot": 1000.0} if address == "local" else None
    env = dict(RAY_ENV)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        env["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
    # Inside a Ray job (unet-search submit) the job's runtime env already carries these
    # variables, and Ray refuses a driver runtime env that repeats them.
    in_job = bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))
    ray.init(
        address=address,
        runtime_env=None if in_job else {"env_vars": env},
        log_to_driver=log_to_driver,
        logging_level=logging.WARNING,
        resources=resources,
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
    cfg: RunConfig,
    dataset_ref: ray.ObjectRef,
    tracking_uri: str,
    run_id: str,
    storage: Path,
    name: str,
    worker_env: dict[str, str] | None = None,
    callbacks: list[Any] | None = None,
    tracking_patience_s: float | None = None,
) -> ray.train.torch.TorchTrainer:
    """A TorchTrainer for one run: DDP over ``num_workers`` (gloo on CPU, NCCL on GPU).

    ``worker_env`` adds environment variables to the training workers only;
    ``tracking_patience_s`` defaults to this process's ``$UNET_SEARCH_TRACKING_PATIENCE_S``."""
    tc = cfg.train
    use_gpu = tc.gpus_per_worker > 0
    resources: dict[str, float] = {"CPU": tc.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = tc.gpus_per_worker
    return ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "run_config": cfg.to_dict(),
            "dataset": dataset_ref,
            "tracking_uri": tracking_uri,
            "run_id": run_id,
            "fault": (worker_env or {}).get(FAULT_ENV) or os.environ.get(FAULT_ENV),
            "tracking_patience_s": tracking_patience_s or tracking.tracking_patience(),
        },
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
    num_parameters = count_parameters(build_model(cfg.model, cfg.data.num_classes))
    init_ray()
    check_resources(cfg)
    uri = tracking.resolve_tracking_uri(workdir)
    tracking.require_reachable(uri)
    experiment_id = tracking.ensure_experiment(uri, experiment, workdir)
    name = run_name or (
        f"{cfg.model.arch} {cfg.model.encoder} d{cfg.model.depth} f{cfg.model.base_filters}"
    )
    run_id = tracking.create_run(
        uri,
        experiment_id,
        name,
        params={**cfg.flat(), "num_parameters": num_parameters, "data_dir": str(data_dir)},
        tags={
            tracking.TAG_FINGERPRINT: arrays.fingerprint,
            tracking.TAG_CODE_VERSION: code_version(),
            tags.TAG_DATA_LAYOUT: arrays.layout,
            "ray.num_workers": str(cfg.train.num_workers),
        },
    )
    trainer = build_trainer(
        cfg, ray.put(arrays), uri, run_id, workdir / "ray_results", f"train-{run_id}", worker_env
    )
    status = "FAILED"
    try:
        result = trainer.fit()
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if tracking.reachable(uri):  # else the run stays RUNNING: it did not end well
            tracking.end_run(uri, run_id, status)
    metrics = {
        k: float(v)
        for k, v in (result.metrics or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    return TrainOutcome(run_id, experiment_id, metrics, num_parameters)
