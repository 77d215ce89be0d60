"""One worker's training run, the same in a trial process and in a Ray Train worker (the
``TorchTrainer`` that starts the workers is :mod:`unet_search.distributed.trainer`).

The per-worker function is a recipe: :func:`set_up` (data from the object store -> loaders
(distributed sampler) -> the model (a final fit's given weights) -> prepare_model (DDP) ->
resume from a checkpoint if any), :func:`within_limits` (a search's trial measures itself
before it trains), then ``engine.fit`` with an
:class:`~unet_search.distributed.reporter.EpochReporter` (each epoch: rank 0 logs to MLflow
and writes the checkpoint, every rank reports to Ray).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from unet_search.data.dataset import DatasetArrays
from unet_search.distributed.checkpoint import resume, warm_start, warm_start_from_checkpoint
from unet_search.distributed.context import RECIPE_KEY, RecipeInput, Worker, WorkerContext
from unet_search.distributed.limits import infeasible_result, measure
from unet_search.distributed.reporter import EpochReporter, log_start
from unet_search.models.build import build_model
from unet_search.tracking.outage import Outbox
from unet_search.train.engine import (
    build_loaders,
    fit,
    keep_the_start,
    new_training_state,
    seed_everything,
)
from unet_search.train.losses import loss_of

__all__ = ["ray_hooks", "run_recipe", "set_up", "train_loop_per_worker", "within_limits"]


def run_recipe(recipe: RecipeInput, ctx: WorkerContext) -> None:
    """The training recipe every worker runs, on ``recipe``'s run config and data: set up,
    the limits, then the epochs, each reported.

    Rank 0's MLflow logging goes through an :class:`~unet_search.tracking.outage.Outbox`:
    while the server is away training goes on, the unsent logging travels with each
    checkpoint, and the run fails (checkpoint kept, for ``resume``) only after the patience
    runs out."""
    w = set_up(recipe, ctx)
    if within_limits(w):
        fit(w.state, w.cfg, w.train_loader, w.val, w.loss_fn, ctx.device, EpochReporter(w))


def set_up(recipe: RecipeInput, ctx: WorkerContext) -> Worker:
    """A worker ready for its first epoch (or, restarted, its next): seeded, its data and
    loaders, the model (a final fit's weights given) prepared for DDP, the training state
    restored from the run's checkpoint if any, the run's size and placement queued for
    MLflow."""
    cfg = recipe.run_config
    torch.set_num_threads(cfg.train.cpus_per_worker)
    seed_everything(cfg.train.seed + ctx.rank)
    data = recipe.dataset
    arrays: DatasetArrays = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    train_loader, val = build_loaders(cfg, arrays, ctx.rank, ctx.world)
    model, optimizer_state = _starting_model(recipe, ctx.device)
    train_loader = ctx.prepare_loader(train_loader)  # this rank's share of each epoch
    # The schedule spans the steps this rank really takes.
    state = new_training_state(
        ctx.prepare_model(model), cfg, len(train_loader), ctx.device, recipe.warm, optimizer_state
    )
    outbox = Outbox(recipe.tracking_uri, recipe.run_id, recipe.tracking_patience_s)
    measured = resume(state, ctx.checkpoint_dir, outbox if ctx.rank == 0 else None)
    loss_fn = loss_of(cfg)
    if recipe.warm and state.epoch == 0:  # the weights it was given are its best until beaten
        keep_the_start(state, val, loss_fn, cfg, ctx.device)
    nodes = _node_ids(ctx.world) if state.epoch == 0 else []  # every rank takes part
    if ctx.rank == 0 and state.epoch == 0:
        log_start(outbox, model, ctx.world, nodes)
    return Worker(recipe, ctx, arrays, train_loader, val, state, loss_fn, outbox, measured)


def _starting_model(
    recipe: RecipeInput, device: torch.device
) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """The run's model on its device, with a final fit's given weights (before DDP wraps it;
    the run's own checkpoint, on resume, overrides them), and the optimizer state to go on
    with (``final_fit_start: continue``; else None)."""
    cfg = recipe.run_config
    model = build_model(cfg.model, cfg.data.network_classes)
    optimizer_state = None
    if recipe.init_checkpoint:
        optimizer_state = warm_start_from_checkpoint(
            model, recipe.init_checkpoint, recipe.init_optimizer
        )
    elif recipe.init_run:
        warm_start(model, recipe.tracking_uri, recipe.init_run, recipe.tracking_patience_s)
    model = model.to(device)
    if device.type == "cuda" and cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, optimizer_state


def within_limits(worker: Worker) -> bool:
    """Whether the worker goes on to train. A search's new trial (not a restarted one, nor a
    final fit) measures its untrained model first (``worker.measured``; rank 0 logs it); over
    a limit it trains nothing: its one result, which says why, is reported and False
    returned."""
    w, limits = worker, worker.recipe.limits
    if limits is None or w.state.epoch > 0 or w.recipe.warm:
        return True
    w.measured = measure(limits, w.state.module, w.cfg, w.ctx.device, w.ctx.rank)
    if w.lead:
        image = "x".join(str(side) for side in limits.latency_image)
        params = {"latency_image": image, "latency_threads": torch.get_num_threads()}
        w.outbox.log_params(params, now=False)
        w.outbox.log_metrics({"inference_ms": w.measured["inference_ms"]}, step=0)
    if not limits.broken(w.measured):
        return True
    result = infeasible_result(w.state, w.val, w.loss_fn, w.cfg, w.ctx.device, w.measured)
    if w.lead:
        w.outbox.log_metrics(result, step=0)
        w.outbox.drain()
    w.ctx.report(result, None)
    return False


def _node_ids(world: int) -> list[str]:
    """The Ray node ids the ranks of this run are on, each once, in rank order (a
    collective: every rank calls it)."""
    mine = ray.get_runtime_context().get_node_id()
    every: list[Any] = [mine]
    if world > 1 and dist.is_available() and dist.is_initialized():
        every = [None] * world
        dist.all_gather_object(every, mine)
    return list(dict.fromkeys(str(node) for node in every))


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
