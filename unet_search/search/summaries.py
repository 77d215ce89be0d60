"""What a search's trials came to: one summary per trial, read from Tune's results and the
trials' MLflow runs, and the best of them. Scoring it on the test split and registering it
is :mod:`unet_search.finish`'s (scoring, registration)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from unet_search.core.metrics import sign
from unet_search.core.outcome import Outcome, RunStatus, outcome_of
from unet_search.search.context import SearchContext
from unet_search.search.incumbent import Curve
from unet_search.search.pareto import fronts, knee
from unet_search.space.role import TrialRole
from unet_search.space.settings import SearchSettings
from unet_search.tracking.read import child_run_names

__all__ = [
    "best_by_value",
    "choose",
    "front_of",
    "pick_best",
    "summaries",
    "TrialSummary",
]


@dataclass(frozen=True)
class TrialSummary:
    """What one trial came to: how it ended, its kept weights' value of the search metric
    (None: it failed, or reported none), the epochs it trained, its role (the seed baseline,
    the planned default, the final fit), its MLflow run and its parameters."""

    index: int
    trial_id: str
    name: str
    outcome: Outcome
    value: float | None
    epochs: int
    baseline: bool
    run_id: str | None
    params: dict[str, Any]
    default: bool = False  # the planned default configuration (search.default_trial)
    final: bool = False  # the final fit (unet_search.search.final)
    # each objective's value (search.objectives; else the metric alone), as ranked
    values: dict[str, float] = field(default_factory=dict)
    curve: Curve = ()  # (epoch, best value so far) of every result it reported

    @property
    def status(self) -> RunStatus:
        """Its MLflow run's status (KILLED: stopped early, or over a limit)."""
        return self.outcome.run_status

    @property
    def finished(self) -> bool:
        """Whether it trained to its end (its epochs, or its early stopping, ended it): only
        such a trial logged its kept model."""
        return self.outcome is Outcome.FINISHED

    @property
    def infeasible(self) -> bool:
        """Over a limit of ``search.constraints``: it trained nothing."""
        return self.outcome is Outcome.INFEASIBLE


def summaries(results: tune.ResultGrid, ctx: SearchContext) -> list[TrialSummary]:
    runs = child_run_names(ctx.tracking_uri, ctx.experiment_id, ctx.search_id)
    out = []
    for result in results:  # type: ignore[attr-defined]  # ResultGrid is iterable
        metrics = result.metrics or {}
        trial_id = str(metrics.get("trial_id") or Path(result.path).name)
        outcome = outcome_of(metrics, failed=result.error is not None)
        value = metrics.get(ctx.spec.tune_metric)
        run_id, name = runs.get(trial_id, (None, trial_id))
        role = TrialRole.of(result.config)
        out.append(
            TrialSummary(
                role.number,
                trial_id,
                name,
                outcome,
                None if value is None or result.error else float(value),
                int(metrics.get("epoch", 0)),
                role.baseline,
                run_id,
                ctx.spec.assignments(result.config or {}),
                role.default,
                role.final is not None,
                {
                    metric: float(metrics[key])
                    for (metric, _), (key, _) in zip(
                        ctx.spec.settings.objective_pairs, ctx.spec.tune_objectives, strict=True
                    )
                    if metrics.get(key) is not None and not result.error
                },
                () if result.error else _curve(result, ctx.spec.tune_metric),
            )
        )
    return sorted(out, key=lambda t: t.index)


def _curve(result: Any, key: str) -> Curve:
    """A trial's (epoch, ``key``) at every result it reported, from Tune's record of them
    (promoted trials' results after their pause included); () when there is none."""
    frame = result.metrics_dataframe
    if frame is None or key not in frame or "epoch" not in frame:
        return ()
    rows = zip(frame["epoch"], frame[key], strict=True)
    points = {int(e): float(v) for e, v in rows if v == v and e == e}  # NaN: not reported
    return tuple(sorted(points.items()))


def pick_best(trials: list[TrialSummary], settings: SearchSettings) -> TrialSummary | None:
    """The best finished trial (:func:`choose`); None when other trials ran but none of them
    finished (they failed, were stopped, or broke a limit): the baseline is a reference, the
    best only when it really beats a trained candidate (or when it is the search's only
    trial)."""
    # Only finished trials logged their best model (ASHA ends the others mid-way).
    scored = [t for t in trials if t.value is not None and t.run_id and t.finished]
    others = any(not t.baseline for t in trials)
    if not scored or (others and all(t.baseline for t in scored)):
        return None
    if settings.pick == "knee":
        return choose([t for t in scored if not t.baseline], settings) or choose(scored, settings)
    return choose(scored, settings)


def _points(trials: list[TrialSummary], settings: SearchSettings) -> dict[str, tuple[float, ...]]:
    """Each trial with every objective's value, signed (larger is better)."""
    pairs = settings.objective_pairs
    return {
        t.trial_id: tuple(t.values[m] * sign(mode) for m, mode in pairs)
        for t in trials
        if all(m in t.values for m, _ in pairs)
    }


def front_of(trials: list[TrialSummary], settings: SearchSettings) -> list[TrialSummary]:
    """The trials no other of ``trials`` dominates in every objective (in their order)."""
    points = _points(trials, settings)
    first = fronts(points)[0] if points else []
    return [t for t in trials if t.trial_id in first]


def choose(trials: list[TrialSummary], settings: SearchSettings) -> TrialSummary | None:
    """The trial to register (or to train on in a final fit): the best by the first
    objective, or with ``search.pick: knee`` the knee of their front."""
    if settings.pick != "knee":
        return best_by_value(trials, settings.mode)
    points = _points(trials, settings)
    front = {t.trial_id: points[t.trial_id] for t in front_of(trials, settings)}
    chosen = knee(front)
    return next((t for t in trials if t.trial_id == chosen), None)


def best_by_value(trials: list[TrialSummary], mode: str) -> TrialSummary | None:
    """The trial with the best value (``mode``: max or min); None for no trials."""
    return max(trials, key=lambda t: sign(mode) * (t.value or 0.0), default=None)
