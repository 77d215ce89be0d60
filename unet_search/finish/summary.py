"""A finished search's summary on its parent run: one row per trial (``summary.json``,
``summary.csv``), the front of a multi-objective search (``pareto.json``), the counts, the
best and the baseline's values as metrics, the best trial and run as tags."""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path

from unet_search.core.metrics import best_key
from unet_search.core.names import PARETO_FILE, SUMMARY_FILE
from unet_search.core.outcome import RunStatus
from unet_search.core.tags import TAG_BEST_RUN, TAG_BEST_TRIAL
from unet_search.search.context import SearchContext
from unet_search.search.summaries import TrialSummary, front_of
from unet_search.space.settings import SearchSettings
from unet_search.tracking.client import log_artifacts, log_metrics, set_tags

__all__ = ["log_summary", "pareto", "pareto_trials"]


def log_summary(
    ctx: SearchContext,
    trials: list[TrialSummary],
    best: TrialSummary | None,
    baseline: TrialSummary | None,
    test: dict[str, float],
    extra: dict[str, float] | None = None,
) -> None:
    """The trials' summary (``summary.json``, ``summary.csv``) and the search's metrics on
    its parent run; ``extra``: more metrics (the compute spent by exploring and final fit)."""
    metric = ctx.spec.settings.metric
    with tempfile.TemporaryDirectory() as tmp:
        rows = [{**asdict(t), "status": t.status, "infeasible": t.infeasible} for t in trials]
        (Path(tmp) / SUMMARY_FILE).write_text(json.dumps(rows, indent=2, default=str))
        header = "trial,name,status,best_" + metric + ",epochs,baseline,params\n"
        lines = [
            f"{t.index},{t.name},{t.status},{'' if t.value is None else f'{t.value:.6f}'},"
            f'{t.epochs},{t.baseline},"{json.dumps(t.params)}"'
            for t in trials
        ]
        (Path(tmp) / "summary.csv").write_text(header + "\n".join(lines) + "\n")
        if ctx.spec.settings.multi_objective:
            front = pareto(trials, ctx.spec.settings)
            (Path(tmp) / PARETO_FILE).write_text(json.dumps(front, indent=2))
        log_artifacts(ctx.tracking_uri, ctx.parent_run_id, Path(tmp))
    metrics: dict[str, float] = {"num_trials": float(len(trials)), **test, **(extra or {})}
    if ctx.otsu_val_dice is not None:  # a plain threshold on the same images
        metrics["otsu_val_dice"] = ctx.otsu_val_dice
    for status in (RunStatus.FINISHED, RunStatus.KILLED, RunStatus.FAILED):
        metrics[f"trials_{status.lower()}"] = float(sum(t.status == status for t in trials))
    if ctx.spec.settings.constraints:  # of the killed: over a limit before training
        metrics["trials_infeasible"] = float(sum(t.infeasible for t in trials))
    if best and best.value is not None:
        metrics[best_key(metric)] = best.value
    if baseline and baseline.value is not None:
        metrics[f"baseline_{metric}"] = baseline.value
        if best and best.value is not None:
            metrics[f"gain_over_baseline_{metric}"] = best.value - baseline.value
    log_metrics(ctx.tracking_uri, ctx.parent_run_id, metrics, step=0)
    if best:
        set_tags(
            ctx.tracking_uri,
            ctx.parent_run_id,
            {
                TAG_BEST_TRIAL: best.trial_id,
                TAG_BEST_RUN: best.run_id or "",
            },
        )


def pareto_trials(trials: list[TrialSummary], settings: SearchSettings) -> list[TrialSummary]:
    """A multi-objective search's front: the non-dominated trials among those that finished
    (within the limits: an infeasible trial trained nothing; the seed baseline, a reference,
    apart); empty for a search of one objective."""
    if not settings.multi_objective:
        return []
    finished = [t for t in trials if t.finished and not t.baseline]
    return front_of(finished, settings)


def pareto(trials: list[TrialSummary], settings: SearchSettings) -> list[dict[str, object]]:
    """``pareto.json``: :func:`pareto_trials`, each ``{"trial_id", "run_id", "values":
    {objective: value}}``."""
    return [
        {"trial_id": t.trial_id, "run_id": t.run_id, "values": dict(t.values)}
        for t in pareto_trials(trials, settings)
    ]
