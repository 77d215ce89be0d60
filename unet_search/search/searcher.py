"""Optuna TPE under Ray Tune that tells Optuna the truth about trials ASHA stopped (PRUNED,
with their intermediate values) instead of a completed, truncated value."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

from optuna.trial import TrialState
from ray.air.constants import TRAINING_ITERATION
from ray.tune.search import Searcher

from unet_search.core.outcome import infeasible, trained_to_the_end
from unet_search.core.tags import TAG_BASELINE, TAG_DEFAULT
from unet_search.search.private import OptunaSearchInternals

__all__ = ["ExploreBudget", "PruningAwareOptunaSearch"]


@dataclass(frozen=True)
class ExploreBudget:
    """What the exploring trials may spend (``search.compute`` less the final fit's share):
    training epochs summed over the trials that are not the baseline, and/or wall-clock
    seconds from ``started`` (a Unix time). None: no limit of that kind."""

    epochs: int | None = None
    seconds: float | None = None
    started: float = 0.0

    def spent(self, epochs: int, now: float) -> bool:
        return (self.epochs is not None and epochs >= self.epochs) or (
            self.seconds is not None and now - self.started >= self.seconds
        )


class PruningAwareOptunaSearch(OptunaSearchInternals):
    """OptunaSearch that tells Optuna the truth about how a trial ended.

    Ray's OptunaSearch tells every trial that ended without error as COMPLETE with its last
    (truncated) value, so TPE learns from numbers that were cut short. Here a trial whose
    last result lacks ``finished`` (it was stopped from outside, by ASHA) is PRUNED; Optuna
    keeps its intermediate values (reported every epoch by ``on_trial_result``). A baseline
    trial, if asked for, is enqueued first and samples nothing.

    Under a scheduler that pauses trials (:func:`unet_search.search.asha.make_scheduler` calls
    :meth:`track_pauses`) it limits its concurrent trials itself, Tune's ``ConcurrencyLimiter``
    deferring to it: a trial paused at a rung holds no resources and does not count, or paused
    trials would keep new ones from starting. A paused trial that ASHA never
    promotes is stopped with no result and is PRUNED at its last reported value.

    ``enqueue_default`` (Optuna parameters) is the planned default configuration, enqueued
    right after the baseline and tagged ``TAG_DEFAULT``: TPE learns from it like any trial.
    ``constraints`` ((metric, max), ...: ``search.constraints``) are told to Optuna with
    every trial that measured them, as ``value / max - 1`` (feasible at 0 or less), so TPE
    learns where the limits are; a trial over one (infeasible: it trained nothing) is told
    COMPLETE with its untrained model's value, as Optuna's constrained TPE expects.
    With a ``budget`` it suggests no trial once the exploring trials have spent it (it counts
    each trial's epochs from its results; Tune saves the count with the searcher).
    """

    def __init__(
        self,
        *args: Any,
        enqueue_baseline: bool = False,
        enqueue_default: dict[str, Any] | None = None,
        budget: ExploreBudget | None = None,
        constraints: tuple[tuple[str, float], ...] = (),
        **kwargs: Any,
    ) -> None:
        self._constraints = constraints
        self._measured: dict[str, dict[str, float]] = {}  # trial id -> the limited metrics
        self._enqueue_baseline = enqueue_baseline
        self._enqueue_default = enqueue_default
        self._budget = budget
        self._epochs: dict[str, int] = {}  # trial id -> epochs trained (not the baseline)
        self._pause_aware = False  # see track_pauses
        self._max_concurrent = 0  # 0: no limit
        self._live: set[str] = set()
        self._paused: set[str] = set()
        self._reported: set[str] = set()  # trials that reported an intermediate value
        super().__init__(*args, **kwargs)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        if not self._pause_aware:
            return False  # Tune's ConcurrencyLimiter does it
        self._max_concurrent = max_concurrent
        return True

    def track_pauses(self) -> None:
        """The scheduler pauses trials and reports them to trial_paused / trial_resumed."""
        self._pause_aware = True

    def trial_paused(self, trial_id: str) -> None:
        self._paused.add(trial_id)

    def trial_resumed(self, trial_id: str) -> None:
        self._paused.discard(trial_id)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self._measure(trial_id, result)
        if infeasible(result):  # not an intermediate value: it trained nothing
            return
        super().on_trial_result(trial_id, result)  # single objective: an intermediate value
        if result.get(self._metrics[0]) is not None:
            self._reported.add(trial_id)
        self.count_epochs(trial_id, result)

    def count_epochs(self, trial_id: str, result: dict[str, Any]) -> None:
        """Count ``result``'s epochs towards the budget (at most once each: the scheduler
        counts a result before it decides, Tune tells the searcher after)."""
        optuna_trial = self.optuna_trial(trial_id)
        if optuna_trial is None or optuna_trial.user_attrs.get(TAG_BASELINE):
            return
        if infeasible(result):  # it trained no epoch
            return
        done = int(result.get("epoch") or result.get(TRAINING_ITERATION) or 0)
        self._epochs[trial_id] = max(self._epochs.get(trial_id, 0), done)

    def _measure(self, trial_id: str, result: dict[str, Any] | None) -> None:
        """Keep the limited metrics a trial measured before its first epoch (its results
        carry them; a restored trial's later ones may not)."""
        result = result or {}
        found = {m: float(result[m]) for m, _ in self._constraints if m in result}
        if found:
            self._measured[trial_id] = {**self._measured.get(trial_id, {}), **found}

    def _tell_constraints(self, trial_id: str, optuna_trial: Any) -> None:
        measured = self._measured.get(trial_id, {})
        for metric, limit in self._constraints:
            if metric in measured:
                optuna_trial.set_constraint(metric, measured[metric] / limit - 1.0)

    @property
    def _metrics(self) -> list[str]:
        """The objectives' result keys (one, or several: a multi-objective study)."""
        return list(self.metric) if isinstance(self.metric, list) else [self.metric]

    @property
    def epochs_trained(self) -> int:
        """Epochs the trials that are not the baseline have trained, summed."""
        return sum(self._epochs.values())

    def exhausted(self) -> bool:
        """Whether the exploring budget is spent (False without one)."""
        return self._budget is not None and self._budget.spent(self.epochs_trained, time.time())

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.exhausted():
            return Searcher.FINISHED  # type: ignore[return-value]  # Tune's own marker
        if self._max_concurrent and len(self._live - self._paused) >= self._max_concurrent:
            return None
        suggestion = super().suggest(trial_id)
        if suggestion is not None:
            self._live.add(trial_id)
        return suggestion

    def on_study_created(self) -> None:
        if self._enqueue_baseline:
            self.study.enqueue_trial({}, user_attrs={TAG_BASELINE: True})
            self._enqueue_baseline = False
        if self._enqueue_default is not None:
            self.study.enqueue_trial(self._enqueue_default, user_attrs={TAG_DEFAULT: True})
            self._enqueue_default = None

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        self._live.discard(trial_id)
        self._paused.discard(trial_id)
        optuna_trial = self.optuna_trial(trial_id)
        if self.was_told(trial_id) or optuna_trial is None:
            return
        if result is not None:
            self.count_epochs(trial_id, result)
        self._measure(trial_id, result)
        if not error:
            self._tell_constraints(trial_id, optuna_trial)
        found = [None if result is None else result.get(m) for m in self._metrics]
        values = None if any(v is None for v in found) else [float(v or 0.0) for v in found]
        if not error and infeasible(result) and values is not None:
            state = TrialState.COMPLETE  # over a limit: its constraints say so
        elif not error and result is None and trial_id in self._reported:
            # Stopped while paused at a rung (Tune passes no result): pruned there.
            state, values = TrialState.PRUNED, None
        elif error or values is None:
            state, values = TrialState.FAIL, None
        elif trained_to_the_end(result):
            state = TrialState.COMPLETE
        else:
            # The result that made ASHA stop the trial never went through on_trial_result:
            # record it, so Optuna holds every intermediate value up to the stop (one
            # objective: Optuna keeps no intermediate values of several).
            step = int(result.get(TRAINING_ITERATION, 0)) if result else 0
            if step and len(values) == 1:
                with warnings.catch_warnings():  # Optuna ignores a step reported twice
                    warnings.simplefilter("ignore")
                    optuna_trial.report(values[0], step)
            state, values = TrialState.PRUNED, None
        told = values[0] if values is not None and len(values) == 1 else values
        self.study.tell(optuna_trial, told, state=state)
        self.mark_told(trial_id)
