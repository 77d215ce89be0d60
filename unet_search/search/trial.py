"""The trial driver: one trial's MLflow child run and training, in process (one CPU worker)
or through a ``TorchTrainer`` whose workers' reports it forwards to Tune."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune
from ray.tune.execution.placement_groups import PlacementGroupFactory
from ray.tune.integration.ray_train import TuneReportCallback

from unet_search.core.config import CLASSIC, RunConfig
from unet_search.core.names import TRIAL_SLOT
from unet_search.core.tags import (
    TAG_BASELINE,
    TAG_CODE_VERSION,
    TAG_DEFAULT,
    TAG_FINAL_FIT,
    TAG_FINGERPRINT,
    TAG_SEARCH_ID,
    TAG_TRIAL_ID,
    TAG_TRIAL_NUMBER,
)
from unet_search.distributed.context import RecipeInput, WorkerContext
from unet_search.distributed.faults import FAULT_ENV
from unet_search.distributed.limits import Limits
from unet_search.distributed.recipe import ray_hooks, run_recipe
from unet_search.distributed.trainer import build_trainer
from unet_search.search.context import ARCH_SHORT, SearchContext
from unet_search.search.state import RECORD_TIMEOUT_S, await_recorded
from unet_search.space.role import Trial
from unet_search.space.spec import SearchSpec
from unet_search.tracking.client import open_child_run
from unet_search.tracking.outage import with_patience

__all__ = ["trainable", "trial_main", "trial_run_name"]


def trial_run_name(trial: Trial, baseline: str | None) -> str:
    """A name a person can read, e.g. ``t007 unet++ resnet34 d4 f32`` or
    ``t008 unet scratch d3 f16 residual+aspp+gate`` (the options that are not the default);
    a final fit's is its source's with ``final`` before it. ``baseline``: the seed
    baseline's preset, when ``trial`` is the baseline."""
    index = trial.role.number
    if trial.role.baseline:
        return f"t{index:03d} baseline {baseline}"
    m, workers = trial.run.model, trial.run.train.num_workers
    encoder = "scratch" if m.encoder == "none" else m.encoder
    variant = "+".join(getattr(m, k) for k, v in CLASSIC.items() if getattr(m, k) != v)
    name = (
        f"t{index:03d} {ARCH_SHORT[m.arch]} {encoder} d{m.depth} f{m.base_filters}"
        f"{' ' + variant if variant else ''}{f' x{workers}' if workers > 1 else ''}"
    )
    return f"final {name}" if trial.role.final is not None else name


def _in_process(cfg: RunConfig) -> bool:
    return cfg.train.num_workers == 1 and cfg.train.gpus_per_worker == 0


def _await_recorded(ctx: SearchContext, trial_id: str) -> None:
    # A shared folder can be read here; a storage URI (s3://...) is not checked.
    if "://" not in ctx.storage and not await_recorded(
        Path(ctx.storage) / ctx.tune_experiment, trial_id, RECORD_TIMEOUT_S
    ):
        logging.getLogger(__name__).warning(
            "trial %s: not in the search's saved state after %.0f s; `resume` after a killed "
            "driver may not know it",
            trial_id,
            RECORD_TIMEOUT_S,
        )


def _open_run(ctx: SearchContext, trial: Trial, trial_id: str) -> str:
    """The trial's MLflow child run (the same one again when the trial restarts)."""
    spec, role = ctx.spec, trial.role
    baseline = spec.settings.baseline if role.baseline else None
    tags = {TAG_FINAL_FIT: "true"} if role.final else {TAG_DEFAULT: "true"} if role.default else {}
    return with_patience(
        ctx.tracking_uri,
        f"trial {trial_id}: its run",
        lambda: open_child_run(
            ctx.tracking_uri,
            ctx.experiment_id,
            ctx.parent_run_id,
            name=trial_run_name(trial, baseline),
            params={
                **trial.run.flat(),
                "baseline": baseline or "no",
                "planned": ",".join(map(str, spec.auto)) or "none",
                **({"init_weights": role.final.init_weights} if role.final else {}),
            },
            tags={
                TAG_SEARCH_ID: ctx.search_id,
                TAG_TRIAL_ID: trial_id,
                TAG_TRIAL_NUMBER: str(role.number),
                TAG_FINGERPRINT: ctx.fingerprint,
                TAG_CODE_VERSION: ctx.code_version,
                **({TAG_BASELINE: baseline} if baseline else {}),
                **tags,
            },
        ),
        ctx.patience_s,
    )


def _limits(ctx: SearchContext, trial: Trial) -> Limits:
    """What the trial measures before it trains, and keeps (the baseline, a reference, is
    measured but held to no limit)."""
    settings = ctx.spec.settings
    kept = () if trial.role.baseline else settings.constraints
    return Limits(settings.latency_image, tuple((c.metric, c.max) for c in kept))


def trial_main(config: dict[str, Any], ctx: SearchContext, dataset: list[ray.ObjectRef]) -> None:
    """One trial: open (or reopen) its MLflow run, then train in-process or on Ray Train."""
    trial = ctx.spec.trial(config)
    cfg, final = trial.run, trial.role.final
    trial_id = tune.get_context().get_trial_id()
    _await_recorded(ctx, trial_id)
    recipe = RecipeInput(
        cfg,
        dataset[0],
        ctx.tracking_uri,
        _open_run(ctx, trial, trial_id),
        ctx.fault,
        ctx.patience_s,
        final.init_run if final else None,  # a final fit starts from a run's weights
        final.init_checkpoint if final else None,  # or a checkpoint's
        bool(final and final.optimizer),  # and its optimizer (`continue`)
        limits=_limits(ctx, trial),
    )
    if _in_process(cfg):
        report, checkpoint_dir = ray_hooks(tune.report, tune.Checkpoint, tune.get_checkpoint)
        context = WorkerContext(
            rank=0,
            world=1,
            device=torch.device("cpu"),
            report=report,
            checkpoint_dir=checkpoint_dir,
            prepare_model=lambda m: m,
            prepare_loader=lambda d: d,
        )
        run_recipe(recipe, context)
        return
    trainer = build_trainer(
        recipe,
        Path(ctx.storage) / "train",
        f"{ctx.search_id}-{trial_id}",
        worker_env={FAULT_ENV: ctx.fault} if ctx.fault else None,
        callbacks=[TuneReportCallback()],
    )
    trainer.fit()


def _resources(spec: SearchSpec, slot: bool) -> Callable[[dict[Any, Any]], PlacementGroupFactory]:
    def resources(config: dict[Any, Any]) -> PlacementGroupFactory:
        cfg = spec.trial(config).run
        if _in_process(cfg):
            return PlacementGroupFactory([{"CPU": float(cfg.train.cpus_per_worker)}])
        # The driver holds no CPU, or a trial plus its workers can deadlock on small nodes.
        return PlacementGroupFactory([{"CPU": 0.0, TRIAL_SLOT: 1.0} if slot else {"CPU": 0.0}])

    return resources


def trainable(ctx: SearchContext, dataset_ref: ray.ObjectRef, slot: bool) -> Any:
    return tune.with_resources(
        tune.with_parameters(trial_main, ctx=ctx, dataset=[dataset_ref]),
        _resources(ctx.spec, slot),
    )
