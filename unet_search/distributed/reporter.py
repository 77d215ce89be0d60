"""What a worker reports as it trains: each epoch rank 0 logs the metrics to MLflow (every
``samples_every`` epochs with image | truth | prediction overlays of a fixed set of
validation samples, the same for every trial of a search), writes the checkpoint, and every
rank hands the epoch to Ray; at the end rank 0 logs the kept model, the samples predicted by
it, its decoding and its inference time per image. :class:`EpochReporter` is the engine's
per-epoch callback."""

from __future__ import annotations

import copy
import shutil
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import ray
import torch
from PIL import Image

from unet_search.core.config import RunConfig
from unet_search.core.names import BEST_MODEL_DIR, SAMPLES_KEY
from unet_search.core.outcome import trained_to_the_end
from unet_search.core.sections import TrainConfig
from unet_search.core.tags import (
    TAG_RAY_NODE_ID,
    TAG_RAY_NODE_IDS,
    TAG_RAY_NODE_IP,
    TAG_RAY_WORLD_SIZE,
)
from unet_search.data.dataset import DatasetArrays
from unet_search.distributed.checkpoint import save_checkpoint
from unet_search.distributed.context import Worker
from unet_search.distributed.faults import maybe_fail
from unet_search.models.build import count_parameters, save_model_dir
from unet_search.models.card import ModelCard
from unet_search.tracking.client import log_artifacts
from unet_search.tracking.outage import Outbox, with_patience
from unet_search.train.engine import TrainingState, val_indices
from unet_search.train.instances import Decoding, choose_decoding, foreground_labels
from unet_search.train.latency import median_ms
from unet_search.train.sliding import predict_logits, preprocessing_of, tiling_of
from unet_search.train.transforms import Normalization
from unet_search.train.visualize import triptych

__all__ = ["EpochReporter", "log_start"]


class EpochReporter:
    """The engine's per-epoch callback (:func:`unet_search.train.engine.fit`): rank 0 logs the
    epoch (:meth:`log`), then the checkpoint goes to Ray with the epoch's metrics
    (:meth:`report`), then the fault injection of the tests gets its chance."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        # The same fixed samples every epoch (and in every trial), logged by rank 0.
        self.picks = _sample_indices(worker.cfg, worker.arrays) if worker.lead else _NONE

    def __call__(self, metrics: dict[str, float], state: TrainingState) -> None:
        # Log before reporting: a failure between the two repeats an epoch's point in MLflow
        # at the same step instead of losing it.
        w = self.worker
        if w.lead:
            self.log(metrics, state)
        self.report({**metrics, **w.measured}, state)  # what Optuna tells the limits by
        maybe_fail(int(metrics["epoch"]), w.ctx.rank, w.ctx.world, w.cfg, w.recipe.fault)

    def log(self, metrics: dict[str, float], state: TrainingState) -> None:
        """Rank 0: the epoch's metrics, the samples when due, and on the last epoch the kept
        model (before the last report: Tune may end a finished trial's process right after
        it, so nothing after ``fit`` is guaranteed to run)."""
        w = self.worker
        epoch, finished = int(metrics["epoch"]), trained_to_the_end(metrics)
        w.outbox.log_metrics(metrics, step=epoch)
        norm = w.val.normalization
        if _samples_due(w.cfg.train, epoch, finished):
            picture = _sample_image(state.scored, w.cfg, w.arrays, self.picks, norm)
            if picture is not None:
                w.outbox.log_image(picture, SAMPLES_KEY, epoch)
        if finished:
            _log_final(w.cfg, w.arrays, state, w.outbox, self.picks, norm)

    def report(self, metrics: dict[str, float], state: TrainingState) -> None:
        """Hand the epoch to Ray with rank 0's checkpoint (Ray persists it before it
        returns); then rank 0 checks the outbox: nothing of this epoch is lost."""
        w = self.worker
        directory = save_checkpoint(state, w.outbox, w.measured) if w.lead else None
        try:
            w.ctx.report(metrics, directory)
        finally:
            if directory:
                shutil.rmtree(directory, ignore_errors=True)
        if w.lead:
            w.outbox.check()


_NONE = np.empty(0, np.int64)


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
            ModelCard(
                cfg.model,
                cfg.data.network_classes,
                preprocessing_of(cfg, norm, decoding[0] if decoding else None, arrays.pixels),
            ),
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


def log_start(outbox: Outbox, model: torch.nn.Module, world: int, nodes: list[str]) -> None:
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
