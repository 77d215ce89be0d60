"""What a search's trials came to: one summary per trial, read from Tune's results and the
trials' MLflow runs, and the best of them. Scoring it on the test split and registering it
is :mod:`unet_search.finish.outcome`'s."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from unet_search.core.metrics import sign
from unet_search.core.outcome import outcome_of
from unet_search.search.context import SearchContext
from unet_search.space.role import TrialRole
from unet_search.tracking.read import child_run_names

__all__ = ["best_by_value", "pick_best", "SPLIT_FILE", "summaries", "TrialSummary"]


SPLIT_FILE = "split.json"  # the parent run's {"train": [...], "val": [...], "test": [...]}


@dataclass(frozen=True)
class TrialSummary:
    index: int
    trial_id: str
    name: str
    status: str
    value: float | None
    epochs: int
    baseline: bool
    run_id: str | None
    params: dict[str, Any]
    default: bool = False  # the planned default configuration (search.default_trial)
    final: bool = False  # the final fit (unet_search.search.final)


def summaries(results: tune.ResultGrid, ctx: SearchContext) -> list[TrialSummary]:
    runs = child_run_names(ctx.tracking_uri, ctx.experiment_id, ctx.search_id)
    out = []
    for result in results:  # type: ignore[attr-defined]  # ResultGrid is iterable
        metrics = result.metrics or {}
        trial_id = str(metrics.get("trial_id") or Path(result.path).name)
        status = outcome_of(metrics, failed=result.error is not None).run_status
        value = metrics.get(ctx.spec.tune_metric)
        run_id, name = runs.get(trial_id, (None, trial_id))
        role = TrialRole.of(result.config)
        out.append(
            TrialSummary(
                role.number,
                trial_id,
                name,
                status,
                None if value is None or result.error else float(value),
                int(metrics.get("epoch", 0)),
                role.baseline,
                run_id,
                ctx.spec.assignments(result.config or {}),
                role.default,
                role.final is not None,
            )
        )
    return sorted(out, key=lambda t: t.index)


def pick_best(trials: list[TrialSummary], mode: str) -> TrialSummary | None:
    """The best finished trial; None when other trials ran but none of them finished (they
    failed, or were stopped): the baseline is a reference, the best only when it really
    beats a trained candidate (or when it is the search's only trial)."""
    # Only finished trials logged their best model (ASHA ends the others mid-way).
    scored = [t for t in trials if t.value is not None and t.run_id and t.status == "FINISHED"]
    others = any(not t.baseline for t in trials)
    if not scored or (others and all(t.baseline for t in scored)):
        return None
    return best_by_value(scored, mode)


def best_by_value(trials: list[TrialSummary], mode: str) -> TrialSummary | None:
    """The trial with the best value (``mode``: max or min); None for no trials."""
    return max(trials, key=lambda t: sign(mode) * (t.value or 0.0), default=None)
