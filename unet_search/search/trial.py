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
from unet_search.distributed.faults import FAULT_ENV
from unet_search.distributed.recipe import RecipeInput, WorkerContext, ray_hooks, run_recipe
from unet_search.distributed.trainer import build_trainer
from unet_search.search.context import ARCH_SHORT, TRIAL_SLOT, SearchContext
from unet_search.search.state import RECORD_TIMEOUT_S, await_recorded
from unet_search.space.spec import SearchSpec, final_fit_of, is_baseline, is_default
from unet_search.tracking.client import open_child_run
from unet_search.tracking.outage import with_patience

__all__ = ["trainable", "trial_main", "trial_run_name"]


def trial_run_name(index: int, cfg: RunConfig, baseline: str | None) -> str:
    """A name a person can read, e.g. ``t007 unet++ resnet34 d4 f32`` or
    ``t008 unet scratch d3 f16 residual+aspp+gate`` (the options that are not the default)."""
    if baseline:
        return f"t{index:03d} baseline {baseline}"
    m = cfg.model
    encoder = "scratch" if m.encoder == "none" else m.encoder
    workers = f" x{cfg.train.num_workers}" if cfg.train.num_workers > 1 else ""
    variant = "+".join(getattr(m, k) for k, v in CLASSIC.items() if getattr(m, k) != v)
    variant = f" {variant}" if variant else ""
    return (
        f"t{index:03d} {ARCH_SHORT[m.arch]} {encoder} d{m.depth} f{m.base_filters}"
        f"{variant}{workers}"
    )


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


def _open_run(ctx: SearchContext, config: dict[str, Any], cfg: RunConfig, trial_id: str) -> str:
    """The trial's MLflow child run (the same one again when the trial restarts)."""
    spec = ctx.spec
    baseline = spec.settings.baseline if is_baseline(config) else None
    number = int(config.get(TAG_TRIAL_NUMBER, 0))
    start = final_fit_of(config)
    final = start is not None
    name = trial_run_name(number, cfg, baseline)
    role = {TAG_FINAL_FIT: "true"} if final else {}
    if is_default(config) and not final:
        role = {TAG_DEFAULT: "true"}
    return with_patience(
        ctx.tracking_uri,
        f"trial {trial_id}: its run",
        lambda: open_child_run(
            ctx.tracking_uri,
            ctx.experiment_id,
            ctx.parent_run_id,
            name=f"final {name}" if final else name,
            params={
                **cfg.flat(),
                "baseline": baseline or "no",
                "planned": ",".join(spec.auto) or "none",
                **({"init_weights": _init_weights(start)} if start is not None else {}),
            },
            tags={
                TAG_SEARCH_ID: ctx.search_id,
                TAG_TRIAL_ID: trial_id,
                TAG_TRIAL_NUMBER: str(number),
                TAG_FINGERPRINT: ctx.fingerprint,
                TAG_CODE_VERSION: ctx.code_version,
                **({TAG_BASELINE: baseline} if baseline else {}),
                **role,
            },
        ),
        ctx.patience_s,
    )


def _init_weights(final: dict[str, Any]) -> str:
    """Where a final fit's weights start (its param ``init_weights``): the source trial's
    checkpoint, its run's logged best model, or scratch."""
    if final.get("init_checkpoint"):
        return str(final["init_checkpoint"])
    if final.get("init_run"):
        return f"runs:/{final['init_run']}/best_model"
    return "scratch"


def trial_main(config: dict[str, Any], ctx: SearchContext, dataset: list[ray.ObjectRef]) -> None:
    """One trial: open (or reopen) its MLflow run, then train in-process or on Ray Train."""
    cfg = ctx.spec.trial_run_config(config)
    trial_id = tune.get_context().get_trial_id()
    _await_recorded(ctx, trial_id)
    run_id = _open_run(ctx, config, cfg, trial_id)
    final = final_fit_of(config) or {}  # a final fit's start: a run's or a checkpoint's weights
    recipe = RecipeInput(
        cfg,
        dataset[0],
        ctx.tracking_uri,
        run_id,
        ctx.fault,
        ctx.patience_s,
        final.get("init_run"),
        final.get("init_checkpoint"),
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
        cfg = spec.trial_run_config(config)
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
