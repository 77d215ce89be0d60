"""One worker's training run, the same in a trial process and in a Ray Train worker (the
``TorchTrainer`` that starts the workers is :mod:`unet_search.distributed.trainer`).

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
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from unet_search.core.config import RunConfig
from unet_search.core.names import (
    BEST_MODEL_DIR,
    MEASURED_FILE,
    MODEL_FILE,
    SAMPLES_KEY,
    STATE_FILE,
    UNSENT_FILE,
)
from unet_search.core.outcome import trained_to_the_end
from unet_search.core.sections import TrainConfig
from unet_search.core.tags import (
    TAG_RAY_NODE_ID,
    TAG_RAY_NODE_IDS,
    TAG_RAY_NODE_IP,
    TAG_RAY_WORLD_SIZE,
)
from unet_search.data.dataset import DatasetArrays
from unet_search.distributed.faults import maybe_fail
from unet_search.distributed.limits import Limits, infeasible_result, measure
from unet_search.models.build import build_model, count_parameters, save_model_dir
from unet_search.tracking.client import download_artifacts, log_artifacts
from unet_search.tracking.outage import DEFAULT_PATIENCE_S, Outbox, with_patience
from unet_search.train.engine import (
    TrainingState,
    build_loaders,
    fit,
    keep_the_start,
    new_training_state,
    seed_everything,
    val_indices,
)
from unet_search.train.instances import Decoding, choose_decoding, foreground_labels
from unet_search.train.latency import median_ms
from unet_search.train.losses import loss_of
from unet_search.train.sliding import predict_logits, preprocessing_of, tiling_of
from unet_search.train.transforms import Normalization
from unet_search.train.visualize import triptych

__all__ = [
    "WorkerContext",
    "RECIPE_KEY",
    "RecipeInput",
    "run_recipe",
    "ray_hooks",
    "train_loop_per_worker",
]


RECIPE_KEY = "recipe"  # a TorchTrainer's train_loop_config: {RECIPE_KEY: RecipeInput}


@dataclass(frozen=True)
class RecipeInput:
    """What the training recipe of every worker gets, built once by whoever starts the run
    (a search's trial, in process or through a TorchTrainer, or ``unet-search train``).

    ``dataset``: the ObjectRef of the DatasetArrays (or the arrays); ``fault``: a
    fault-injection spec (:func:`maybe_fail`); ``tracking_patience_s``: how long an
    unreachable tracking server is waited for; ``init_run`` / ``init_checkpoint``: a run, or
    a trial checkpoint's path or URI, whose kept weights training starts from (a search's
    final fit); ``init_optimizer``: from the checkpoint's last weights and its optimizer
    instead, going on where that run left off (``final_fit_start: continue``); ``limits``:
    what a search's trial measures and must keep before it trains."""

    run_config: RunConfig
    dataset: Any
    tracking_uri: str
    run_id: str
    fault: str | None = None
    tracking_patience_s: float = DEFAULT_PATIENCE_S
    init_run: str | None = None
    init_checkpoint: str | None = None
    init_optimizer: bool = False
    limits: Limits | None = None


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


def _save_checkpoint(
    state: TrainingState, outbox: Outbox | None = None, measured: dict[str, float] | None = None
) -> str:
    """The training state, the MLflow logging not yet sent (a restarted trial sends it) and
    what the trial measured before training."""
    directory = tempfile.mkdtemp(prefix="unet-search-ckpt-")
    torch.save(state.state_dict(), Path(directory) / STATE_FILE)
    unsent = outbox.pending() if outbox is not None else []
    if unsent:
        (Path(directory) / UNSENT_FILE).write_text(json.dumps(unsent), "utf-8")
    if measured:
        (Path(directory) / MEASURED_FILE).write_text(json.dumps(measured), "utf-8")
    return directory


def _resume(
    state: TrainingState, ctx: WorkerContext, outbox: Outbox | None = None
) -> dict[str, float]:
    """Restore the checkpoint a restarted trial has, if any; returns what it measured
    before its first epoch (empty without)."""
    measured: dict[str, float] = {}
    with ctx.checkpoint_dir() as directory:
        if directory is None:
            return measured
        saved = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
        unsent = Path(directory) / UNSENT_FILE
        if outbox is not None and unsent.is_file():
            outbox.restore(json.loads(unsent.read_text("utf-8")))
        if (Path(directory) / MEASURED_FILE).is_file():
            found = json.loads((Path(directory) / MEASURED_FILE).read_text("utf-8"))
            measured = {str(k): float(v) for k, v in found.items()}
    state.load_state_dict(saved)
    return measured


def _warm_start(model: torch.nn.Module, uri: str, run_id: str, patience_s: float) -> None:
    """``model`` takes the kept weights (``best_model``) of run ``run_id``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = with_patience(
            uri,
            f"run {run_id}: its kept weights",
            lambda: download_artifacts(uri, run_id, BEST_MODEL_DIR, Path(tmp)),
            patience_s,
        )
        model.load_state_dict(load_file(str(path / MODEL_FILE)))


def _warm_start_from_checkpoint(
    model: torch.nn.Module, path: str, go_on: bool = False
) -> dict[str, Any] | None:
    """``model`` takes the kept weights of a trial's checkpoint (``path``: a folder, or a
    URI of the search's storage): its best epoch's, else its last epoch's. ``go_on``: its
    last epoch's, and the optimizer's state there is returned (else None)."""
    with ray.train.Checkpoint(path).as_directory() as directory:
        saved = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
    if go_on:
        model.load_state_dict(saved["model"])
        return dict(saved["optimizer"])
    model.load_state_dict(saved["best_state"] or saved["model"])
    return None


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
    tiling = tiling_of(cfg)
    device = next(module.parameters()).device
    out = []
    for i in picks:
        logits = predict_logits(
            module, arrays.image(int(i)), tiling, norm, cfg.model.in_channels, device
        )
        labels = foreground_labels(logits[None], cfg.data.target, cfg.train.threshold)
        out.append(labels[0].cpu().numpy())
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
) -> float:
    """Median ms per image of predicting the sample images ``picks`` whole, as ``predict``
    does, measured as every latency is (:func:`unet_search.train.latency.median_ms`: a
    warm-up on the first image, the device synchronized)."""
    device = next(module.parameters()).device
    whole = partial(_predict_masks, module, cfg, arrays, picks, norm)
    first = partial(_predict_masks, module, cfg, arrays, picks[:1], norm)
    return median_ms(whole, device, first) / len(picks)


def _choose_decoding(
    module: torch.nn.Module, cfg: RunConfig, arrays: DatasetArrays, norm: Normalization
) -> tuple[Decoding, dict[str, float]] | None:
    """The kept weights' decoding (:func:`~unet_search.train.instances.choose_decoding`),
    chosen on the validation images by the DSB score, or None where a run scores no
    instances (a multi-class task, no instance truth, ``dsb_every: 0``)."""
    if cfg.data.num_classes > 2 or arrays.instance_pixels is None or not cfg.train.dsb_every:
        return None
    tiling, device = tiling_of(cfg), next(module.parameters()).device
    channels = cfg.model.in_channels
    picks = [int(i) for i in val_indices(cfg, arrays)]
    truths = [t for t in (arrays.instances(i) for i in picks) if t is not None]
    logits = (
        predict_logits(module, arrays.image(i), tiling, norm, channels, device).float().cpu()
        for i in picks
    )
    return choose_decoding(logits, truths, cfg.data.target, cfg.train.threshold)


def _log_final(
    cfg: RunConfig,
    arrays: DatasetArrays,
    state: TrainingState,
    outbox: Outbox,
    picks: np.ndarray,
    norm: Normalization,
) -> None:
    """Rank 0: the best weights as a model directory, image | truth | prediction overlays of
    the fixed samples ``picks`` by the best weights, and their inference time per image."""
    module = copy.deepcopy(state.module)  # the trained model stays as the checkpoint has it
    if state.best_state is not None:
        module.load_state_dict(state.best_state)
    metrics = {"best_epoch": float(state.best_metrics.get("epoch", state.early.best_epoch))}
    decoding = _choose_decoding(module, cfg, arrays, norm)
    if decoding is not None:
        metrics |= {f"decoded_val_{key}": value for key, value in decoding[1].items()}
        metrics |= {"decoding_marker": decoding[0].marker}
        metrics |= {"decoding_min_size": float(decoding[0].min_size)}
    with tempfile.TemporaryDirectory() as tmp:
        save_model_dir(
            Path(tmp) / BEST_MODEL_DIR,
            module,
            cfg.model,
            cfg.data.network_classes,
            preprocessing_of(cfg, norm, decoding[0] if decoding else None, arrays.pixels),
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
        with_patience(
            uri,
            f"run {run_id}: the best model",
            lambda: log_artifacts(uri, run_id, Path(tmp)),
            outbox.patience_s,
        )
    outbox.log_metrics(metrics, step=state.epoch)
    outbox.drain()


def _log_start(outbox: Outbox, model: torch.nn.Module, world: int, nodes: list[str]) -> None:
    """The run's size and placement. Queued, sent with the first epoch: the other ranks would
    wait at the first step while rank 0 opens its MLflow connection (~2 s measured,
    bench/trial_cost.py)."""
    outbox.log_params({"num_parameters": count_parameters(model)}, now=False)
    outbox.set_tags(
        {
            TAG_RAY_WORLD_SIZE: world,
            TAG_RAY_NODE_IP: ray.util.get_node_ip_address(),
            TAG_RAY_NODE_ID: ray.get_runtime_context().get_node_id(),
            TAG_RAY_NODE_IDS: ",".join(nodes),
        },
        now=False,
    )


def run_recipe(recipe: RecipeInput, ctx: WorkerContext) -> None:
    """The training recipe every worker runs, on ``recipe``'s run config and data.

    Rank 0's MLflow logging goes through an :class:`~unet_search.tracking.outage.Outbox`:
    while the server is away training goes on, the unsent logging travels with each
    checkpoint, and the run fails (checkpoint kept, for ``resume``) only after the patience
    runs out."""
    cfg, uri, run_id = recipe.run_config, recipe.tracking_uri, recipe.run_id
    rank, world, device = ctx.rank, ctx.world, ctx.device
    torch.set_num_threads(cfg.train.cpus_per_worker)
    seed_everything(cfg.train.seed + rank)
    data = recipe.dataset
    arrays: DatasetArrays = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    train_loader, val = build_loaders(cfg, arrays, rank, world)
    model = build_model(cfg.model, cfg.data.network_classes)
    patience = recipe.tracking_patience_s
    # Before DDP wraps it; the run's own checkpoint (resume) overrides it.
    optimizer_state = None
    if recipe.init_checkpoint:
        optimizer_state = _warm_start_from_checkpoint(
            model, recipe.init_checkpoint, recipe.init_optimizer
        )
    elif recipe.init_run:
        _warm_start(model, uri, recipe.init_run, patience)
    model = model.to(device)
    if device.type == "cuda" and cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_loader = ctx.prepare_loader(train_loader)  # this rank's share of each epoch
    # The schedule spans the steps this rank really takes.
    warm = bool(recipe.init_checkpoint or recipe.init_run)
    state = new_training_state(
        ctx.prepare_model(model), cfg, len(train_loader), device, warm, optimizer_state
    )
    outbox = Outbox(uri, run_id, patience)
    measured = _resume(state, ctx, outbox if rank == 0 else None)
    loss_fn = loss_of(cfg)
    if warm and state.epoch == 0:  # the weights it was given are its best until beaten
        keep_the_start(state, val, loss_fn, cfg, device)
    nodes = _node_ids(world) if state.epoch == 0 else []  # every rank takes part
    if rank == 0 and state.epoch == 0:
        _log_start(outbox, model, world, nodes)
    if recipe.limits is not None and state.epoch == 0 and not warm:  # a search's new trial
        measured = measure(recipe.limits, state.module, cfg, device, rank)
        if rank == 0:
            h, w = recipe.limits.latency_image
            threads = torch.get_num_threads()
            outbox.log_params({"latency_image": f"{h}x{w}", "latency_threads": threads}, now=False)
            outbox.log_metrics({"inference_ms": measured["inference_ms"]}, step=0)
        if recipe.limits.broken(measured):  # it trains nothing: its one result says why
            result = infeasible_result(state, val, loss_fn, cfg, device, measured)
            if rank == 0:
                outbox.log_metrics(result, step=0)
                outbox.drain()
            ctx.report(result, None)
            return

    # Rank 0 logs the overlays: the same fixed samples every epoch (and in every trial).
    picks = _sample_indices(cfg, arrays) if rank == 0 else np.empty(0, np.int64)

    def report(metrics: dict[str, float], st: TrainingState) -> None:
        # Log before reporting: a failure between the two repeats an epoch's point in MLflow
        # at the same step instead of losing it.
        if rank == 0:
            epoch, finished = int(metrics["epoch"]), trained_to_the_end(metrics)
            outbox.log_metrics(metrics, step=epoch)
            if _samples_due(cfg.train, epoch, finished):
                picture = _sample_image(st.scored, cfg, arrays, picks, val.normalization)
                if picture is not None:
                    outbox.log_image(picture, SAMPLES_KEY, epoch)
            if finished:
                # Before the last report: Tune may end a finished trial's process right
                # after it, so nothing after fit() is guaranteed to run.
                _log_final(cfg, arrays, st, outbox, picks, val.normalization)
        metrics = {**metrics, **measured}  # what Optuna tells the limits by
        directory = _save_checkpoint(st, outbox, measured) if rank == 0 else None
        try:
            ctx.report(metrics, directory)  # Ray persists the checkpoint before returning
        finally:
            if directory:
                shutil.rmtree(directory, ignore_errors=True)
        if rank == 0:
            outbox.check()  # after the checkpoint: nothing of this epoch is lost
        maybe_fail(int(metrics["epoch"]), rank, world, cfg, recipe.fault)

    fit(state, cfg, train_loader, val, loss_fn, device, report)


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
    run_recipe(config[RECIPE_KEY], ctx)
