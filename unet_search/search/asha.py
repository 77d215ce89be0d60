"""Early stopping for a search: ASHA, as its paper describes it, and Tune's stopping variant.

``asha`` (:class:`PromotingASHA`) is Algorithm 2 of Li et al., "A System for Massively
Parallel Hyperparameter Tuning" (MLSys 2020): a trial that reaches a rung (``grace_period``
x ``reduction_factor``^k epochs, below ``max_t``) pauses there, keeping its checkpoint. A
paused trial is *promoted* (resumed) once it is among the best 1/``reduction_factor`` of all
the trials that reached its rung, and promotions go before new trials. So no rung promotes
more than a 1/``reduction_factor`` share of the trials that reached it, however early they
came. When every trial of the search has started (or the exploring budget is spent) and
nothing runs or can be promoted, the trials still paused are stopped (stopped early, as
ASHA's losers), but never before one trial that is not the baseline has trained to ``max_t``:
a rung that one trial reached promotes nobody (floor(1 / reduction_factor) = 0), so a small
search would otherwise end with no trained model but the baseline. Until one has, the best
paused trial of the highest rung is promoted instead; a trial that would be that one as it
reaches its rung goes on without pausing. A search with a final fit (``search.compute`` and
a ``search.final_fit`` share) keeps exploring to its share instead: once the exploring budget
is spent, every trial (not the baseline) stops at its next result and every paused trial is
stopped, none trained to ``max_t``; the final fit trains the best of them on from its
checkpoint (:mod:`unet_search.search.final`), so the epochs the plan gave the final fit are
not spent on an exploring trial.

``asha_stopping`` is Ray Tune's ``AsyncHyperBandScheduler``: a trial reaching a rung goes on
if it is in the top 1/``reduction_factor`` of the results the rung has *so far*, else it
stops. It never pauses, but the first trials of a search face almost no competition: with 16
trials, 2 at a time, it trained 0.52-0.67 of the full budget (``bench/search_efficiency.py``).

The search's baseline trial (``search.baseline``) is never paused or stopped: it is the
reference every result is compared with, so it trains its full epochs; it does not count at
the rungs (a reference, not a competitor: a weak baseline would otherwise let a weak trial
pass a rung). Both rank a rung by the search metric (each trial's best so far) and break
exact ties with the best soft Dice so far: early in training many trials predict no
foreground at all and score a Dice of exactly 0, and a rung of equal values says nothing
about which to keep.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from unet_search.core.metrics import sign
from unet_search.core.outcome import infeasible, trained_to_the_end
from unet_search.search.pareto import ranked
from unet_search.search.private import ASHAInternals
from unet_search.search.rungs import milestones, rank_value, rank_vector
from unet_search.search.state import DurableFIFO, SavesNewTrials
from unet_search.space.role import TrialRole

if TYPE_CHECKING:
    from unet_search.space.spec import SearchSpec

__all__ = ["make_scheduler", "PromotingASHA", "Rungs", "SearcherHooks", "TieBreakingASHA"]

log = logging.getLogger(__name__)

TIME_ATTR = "training_iteration"


def _baseline(trial: Trial) -> bool:
    return TrialRole.of(trial.config).baseline


class TieBreakingASHA(SavesNewTrials, ASHAInternals):
    """Ray Tune's asynchronous (stopping) ASHA, ranking rungs by :func:`rank_value`; the
    baseline trial goes on and is left out of the rungs."""

    def _ranked(self, result: dict[str, Any]) -> dict[str, Any]:
        value = rank_value(result, self.rank_metric, self.rank_mode)
        if value is None:
            return result
        # The parent multiplies by its own sign (+1 for max, -1 for min): undo ours first.
        return {**result, self.rank_metric: value * sign(self.rank_mode)}

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        if infeasible(result):  # it trained nothing and ends now: in no rung
            return TrialScheduler.CONTINUE
        if _baseline(trial):  # a reference, not a competitor: never in a rung's cutoff
            going = result.get(TIME_ATTR, 0) < self.max_t
            return TrialScheduler.CONTINUE if going else TrialScheduler.STOP
        return str(super().on_trial_result(tune_controller, trial, self._ranked(result)))

    def on_trial_complete(
        self, tune_controller: Any, trial: Trial, result: dict[str, Any]
    ) -> None:
        if _baseline(trial) or infeasible(result):
            self.forget(trial.trial_id)
            return
        super().on_trial_complete(tune_controller, trial, self._ranked(result))


@dataclass(frozen=True)
class Rungs:
    """ASHA's rungs (``grace_period`` x ``reduction_factor``^k epochs, below ``max_t``) and
    what ranks a trial at one: ``metric`` and ``mode``, or several ``objectives`` ((metric,
    mode), ...; the first is ``metric`` and ``mode``)."""

    metric: str
    mode: str
    max_t: int
    grace_period: int = 1
    reduction_factor: int = 2
    objectives: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class SearcherHooks:
    """What :class:`PromotingASHA` tells the searcher and asks it: a trial paused at a rung
    or resumed (it holds no resources while paused), whether the exploring budget is spent,
    and each result's epochs, counted before the scheduler decides (Tune tells the searcher
    after it). Each may be None: nobody listens."""

    on_pause: Callable[[str], None] | None = None
    on_resume: Callable[[str], None] | None = None
    exhausted: Callable[[], bool] | None = None
    count: Callable[[str, dict[str, Any]], None] | None = None

    @classmethod
    def of(cls, searcher: Any) -> SearcherHooks:
        """The hooks of a :class:`~unet_search.search.searcher.PruningAwareOptunaSearch`."""
        return cls(
            searcher.trial_paused,
            searcher.trial_resumed,
            searcher.exhausted,
            searcher.count_epochs,
        )


class PromotingASHA(SavesNewTrials, FIFOScheduler):
    """ASHA with promotions (see the module docstring).

    ``rungs``: where the rungs are and what ranks a trial there; ``num_samples``: the trials
    of the search; ``hooks``: the searcher's (:class:`SearcherHooks`: the paused trials do not
    count against its limit of concurrent trials); ``final_fit``: the search ends in a final
    fit. With several objectives a rung ranks its trials by non-dominated sorting and
    crowding distance (MO-ASHA, :func:`unet_search.search.pareto.ranked`): the best
    floor(n / reduction_factor) are the first fronts, the most isolated points of the last
    one admitted.
    """

    def __init__(
        self,
        rungs: Rungs,
        num_samples: int,
        hooks: SearcherHooks = SearcherHooks(),
        final_fit: bool = False,
    ) -> None:
        super().__init__()
        self._rank_by = rungs.objectives or ((rungs.metric, rungs.mode),)
        self._max_iterations, self._rf = rungs.max_t, rungs.reduction_factor
        self._num_samples = num_samples
        self._milestones = milestones(rungs.grace_period, rungs.reduction_factor, rungs.max_t)
        # Per rung: trial id -> rank value when it got there (insertion order breaks ties),
        # and the trials promoted from it.
        self._rungs: list[dict[str, tuple[float, ...]]] = [{} for _ in self._milestones]
        self._promoted: list[set[str]] = [set() for _ in self._milestones]
        self._paused: dict[str, int] = {}  # trial id -> the rung it waits at
        self._to_resume: list[str] = []  # promoted while paused, not restarted yet
        self._added: set[str] = set()
        self._restored_waiting = False  # resume re-paused trials at rungs: decide them
        self._trained: set[str] = set()  # trials (not the baseline) that trained to the end
        self._on_pause, self._on_resume = hooks.on_pause, hooks.on_resume
        # The searcher's exploring budget is spent: no new trials, no promotions from rungs.
        self._exhausted = hooks.exhausted or (lambda: False)
        # Counts a result's epochs towards the budget before the decision (Tune tells the
        # searcher after the scheduler): the epoch that spends it is the last one trained.
        self._count = hooks.count or (lambda trial_id, result: None)
        self._final_fit = final_fit  # a final fit trains the best on (see _explored)

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # metric and mode are the search's, given at construction

    def _explored(self) -> bool:
        """The exploring budget is spent and a final fit trains the best on: exploring ends
        now, with no trial trained to ``max_t`` for it."""
        return self._final_fit and self._exhausted()

    def _top(self, rung: int) -> list[str]:
        """The trials of ``rung`` that may be promoted: the best floor(n / reduction_factor)."""
        recorded = self._rungs[rung]
        return ranked(recorded)[: len(recorded) // self._rf]  # stable: earlier wins a tie

    def _promotable(self, rung: int) -> list[str]:
        return [t for t in self._top(rung) if t not in self._promoted[rung]]

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        super().on_trial_add(tune_controller, trial)
        self._added.add(trial.trial_id)
        last = trial.last_result or {}
        done, value = last.get(TIME_ATTR), rank_vector(last, self._rank_by)
        if done is None or value is None or infeasible(last):
            return
        # A trial restored by `resume`: it reached the rungs up to its epoch, ranked there by
        # its best so far (its value at each rung was not kept), and passed those below it.
        # A finished one only counts. An unfinished one that stopped exactly at a rung waits
        # there again, paused, and the rung decides anew (Tune keeps no scheduler state and
        # resumes paused trials as pending: it was paused there, or promoted and killed before
        # its next epoch). Any other unfinished one goes on, as if promoted.
        going_on = not trial.is_finished()
        if _baseline(trial):  # never in a rung: it goes on
            if going_on and self._on_resume is not None:
                self._on_resume(trial.trial_id)
            return
        if trial.is_finished() and trial.status == Trial.TERMINATED and trained_to_the_end(last):
            self._trained.add(trial.trial_id)
        waits = going_on and done in self._milestones
        for rung, milestone in enumerate(self._milestones):
            if milestone <= done:
                self._rungs[rung].setdefault(trial.trial_id, value)
                if milestone < done or (going_on and not waits):
                    self._promoted[rung].add(trial.trial_id)
        if waits:
            trial.set_status(Trial.PAUSED)  # before Tune files it: it starts when promoted
            self._wait_at(trial.trial_id, self._milestones.index(done))
            self._restored_waiting = True
        elif going_on and self._on_resume is not None:
            self._on_resume(trial.trial_id)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        done, value = result.get(TIME_ATTR), rank_vector(result, self._rank_by)
        if done is None or value is None or infeasible(result):  # infeasible: in no rung
            return TrialScheduler.CONTINUE
        if _baseline(trial):  # a reference, not a competitor: never in a rung's cutoff
            return TrialScheduler.STOP if done >= self._max_iterations else TrialScheduler.CONTINUE
        self._count(trial.trial_id, result)
        if done >= self._max_iterations or trained_to_the_end(result):
            self._trained.add(trial.trial_id)
        if done >= self._max_iterations or self._explored():
            return TrialScheduler.STOP
        reached = [
            rung
            for rung, milestone in enumerate(self._milestones)
            if milestone <= done and trial.trial_id not in self._rungs[rung]
        ]
        if not reached:
            return TrialScheduler.CONTINUE
        for rung in reached:
            self._rungs[rung][trial.trial_id] = value
        rung = reached[-1]
        promotable = trial.trial_id in self._promotable(rung) and not self._exhausted()
        if promotable or self._would_train_on(tune_controller, trial, rung):
            action = TrialScheduler.CONTINUE
            self._promoted[rung].add(trial.trial_id)
        else:
            action = TrialScheduler.PAUSE
            self._wait_at(trial.trial_id, rung)
        self._promote_waiting()
        return action

    def _would_train_on(self, tune_controller: Any, trial: Trial, rung: int) -> bool:
        """Whether ``trial``, paused at ``rung`` now, would be the one :meth:`_left_over`
        trains on at once: every trial has started, no other competitor runs or waits to,
        none has trained to the end, and it is above every paused trial. Then it goes on
        without the pause (a pause saves, stops and restarts the trial: 8-10 s an epoch on
        2 cores for a small search's lone trial). The baseline running beside it changes
        nothing: it never enters a rung."""
        if tune_controller is None or self._trained or self._to_resume:
            return False
        if not self._started_all():
            return False
        others = [t for t in tune_controller.get_trials() if t is not trial and not _baseline(t)]
        if any(t.status in (Trial.RUNNING, Trial.PENDING) for t in others):
            return False
        height = self._height(trial.trial_id, rung)
        return all(height > self._height(t) for t in self._paused)

    def _started_all(self) -> bool:
        """Every trial of the search has started, or the exploring budget ends exploring."""
        return len(self._added) >= self._num_samples or self._exhausted()

    def _height(self, trial_id: str, rung: int | None = None) -> tuple[int, int]:
        """Where a trial waits (paused, or at ``rung``): its rung, then its rank there
        (larger is higher)."""
        rung = self._paused[trial_id] if rung is None else rung
        return rung, -ranked(self._rungs[rung]).index(trial_id)

    def _wait_at(self, trial_id: str, rung: int) -> None:
        """``trial_id`` waits at ``rung`` (paused) until promoted; the searcher is told."""
        self._paused[trial_id] = rung
        if self._on_pause is not None:
            self._on_pause(trial_id)

    def _promote_waiting(self) -> None:
        """Promote the paused trials that a new arrival made promotable, highest rung first.
        Decided now, not when Tune next asks for a trial to run: the searcher must count
        them as running at once, or it would start a new trial in their place. Once the
        exploring budget is spent nothing is promoted (see :meth:`_left_over`)."""
        if self._exhausted():
            return
        for rung in reversed(range(len(self._milestones))):
            for trial_id in self._promotable(rung):
                if self._paused.get(trial_id) == rung:
                    self._promote(trial_id, rung)

    def _train_on(self, trial_id: str) -> None:
        """Promote ``trial_id`` from its rung, to be run now (not queued)."""
        self._promote(trial_id, self._paused[trial_id])
        self._to_resume.remove(trial_id)

    def _promote(self, trial_id: str, rung: int) -> None:
        self._promoted[rung].add(trial_id)
        del self._paused[trial_id]
        self._to_resume.append(trial_id)
        if self._on_resume is not None:
            self._on_resume(trial_id)

    def on_trial_complete(
        self, tune_controller: Any, trial: Trial, result: dict[str, Any]
    ) -> None:
        self.on_trial_remove(tune_controller, trial)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._paused.pop(trial.trial_id, None)
        if trial.trial_id in self._to_resume:
            self._to_resume.remove(trial.trial_id)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        self.save_new_trials(tune_controller)
        if self._restored_waiting:  # every restored trial is back: their rungs are whole
            self._restored_waiting = False
            self._promote_waiting()
        trials = tune_controller.get_trials()
        for spent in self._no_longer_waiting(trials):
            log.info("ASHA: stopping %s, the exploring budget is spent", spent.trial_id)
            tune_controller.stop_trial(spent)
        by_id = {t.trial_id: t for t in trials}
        for trial_id in self._to_resume:  # promotions first
            trial = by_id.get(trial_id)
            if trial is not None and trial.status == Trial.PAUSED:
                self._to_resume.remove(trial_id)
                return trial  # (one still saving its pause is asked for on a later step)
        # A trial added before the budget was spent still runs: left pending, it would keep
        # the search from ever ending (the searcher adds no more once it is spent).
        for trial in trials:
            if trial.status == Trial.PENDING:
                return trial
        finish, stop = self._left_over(trials)
        for trial in stop:
            log.info("ASHA: stopping %s, not promoted from its rung", trial.trial_id)
            del self._paused[trial.trial_id]
            tune_controller.stop_trial(trial)
        if finish is not None:
            log.info("ASHA: promoting %s so that one trial trains to the end", finish.trial_id)
            self._train_on(finish.trial_id)
        return finish

    def _no_longer_waiting(self, trials: list[Trial]) -> list[Trial]:
        """Once exploring is over (:meth:`_explored`), the paused trials to stop where they
        wait, promoted or not (a promoted one not restarted yet too): the final fit
        continues the best of them from its checkpoint. Empty before."""
        if not self._explored():
            return []
        out = []
        for trial in trials:
            waits = trial.trial_id in self._paused or trial.trial_id in self._to_resume
            if trial.status != Trial.PAUSED or not waits:
                continue  # (one still saving its pause is stopped on a later step)
            self._paused.pop(trial.trial_id, None)
            if trial.trial_id in self._to_resume:
                self._to_resume.remove(trial.trial_id)
            out.append(trial)
        return out

    def _left_over(self, trials: list[Trial]) -> tuple[Trial | None, list[Trial]]:
        """When every trial has started (or the exploring budget is spent), nothing runs and
        nothing can be promoted: (the paused trial to train on, the paused trials to stop).
        The paused trials are this search's losers, but until one trial (not the baseline)
        has trained to the end, the best of the highest rung goes on instead: a search ends
        with its best trained, however small it is."""
        if not self._started_all() or not self._paused or self._to_resume:
            return None, []
        if any(t.status in (Trial.RUNNING, Trial.PENDING) for t in trials):
            return None, []
        waiting = [t for t in trials if t.status == Trial.PAUSED and t.trial_id in self._paused]
        if self._trained or not waiting:
            return None, waiting
        return max(waiting, key=lambda t: self._height(t.trial_id)), []

    def debug_string(self) -> str:
        rungs = ", ".join(
            f"{m}: {len(r)} reached, {len(p)} promoted"
            for m, r, p in zip(self._milestones, self._rungs, self._promoted, strict=True)
        )
        return f"ASHA (promotions) rungs {rungs}; {len(self._paused)} paused"


def make_scheduler(spec: SearchSpec, searcher: Any) -> SavesNewTrials:
    """The search's scheduler: ``fifo`` (no early stopping), ``asha`` (promotions) or
    ``asha_stopping`` (Tune's asynchronous stopping rule)."""
    settings = spec.settings
    kind = settings.scheduler.type
    if kind == "fifo":
        return DurableFIFO()
    max_t = settings.scheduler.max_t or spec.base_config().train.epochs
    if kind == "asha_stopping":
        return TieBreakingASHA(
            time_attr=TIME_ATTR,
            metric=spec.tune_metric,
            mode=settings.mode,
            max_t=max_t,
            grace_period=settings.scheduler.grace_period,
            reduction_factor=settings.scheduler.reduction_factor,
        )
    searcher.track_pauses()
    rungs = Rungs(
        spec.tune_metric,
        settings.mode,
        max_t,
        settings.scheduler.grace_period,
        settings.scheduler.reduction_factor,
        spec.tune_objectives,
    )
    final_fit = settings.compute is not None and settings.final_fit > 0
    return PromotingASHA(rungs, settings.num_samples, SearcherHooks.of(searcher), final_fit)
