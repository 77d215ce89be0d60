"""ASHA's rungs and ranking, and the schedulers saving Tune's state before a trial starts
(the searches that pause, promote and stop trials are in finish/test_run.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from unet_search.core.tags import TAG_BASELINE
from unet_search.search.asha import PromotingASHA, Rungs, SearcherHooks, TieBreakingASHA
from unet_search.search.rungs import TIE_BREAK
from unet_search.search.state import DurableFIFO, SavesNewTrials


@pytest.mark.parametrize("kind", ["fifo", "asha", "asha_stopping"])
def test_every_trial_is_in_the_saved_state_before_it_starts(
    ray_local: None, tmp_path: Path, kind: str
) -> None:
    from ray import tune

    def in_saved_state(config: dict[str, Any]) -> None:
        """Reports whether Tune's saved experiment state (what `resume` restores) names this
        trial within 3 s of its start, as a search's trial checks before it opens its MLflow
        run. Tune alone saves every 10 s or more. (Defined here so that Ray ships it by
        value: the workers cannot import the tests.)"""
        from unet_search.search.state import await_recorded

        found = await_recorded(Path(config["dir"]), tune.get_context().get_trial_id(), 3.0)
        tune.report({"saved": float(found), "best_val_dice": 0.5, TIE_BREAK: 0.5})

    metric = {"metric": "best_val_dice", "mode": "max"}
    rungs = {"max_t": 1, "grace_period": 1, "reduction_factor": 2}  # one step, no rung
    scheduler: SavesNewTrials = {
        "fifo": lambda: DurableFIFO(),
        "asha": lambda: PromotingASHA(Rungs("best_val_dice", "max", max_t=1), num_samples=6),
        "asha_stopping": lambda: TieBreakingASHA(
            time_attr="training_iteration", **metric, **rungs
        ),
    }[kind]()
    results = tune.Tuner(
        in_saved_state,
        param_space={"dir": str(tmp_path / "exp"), "x": tune.uniform(0, 1)},
        tune_config=tune.TuneConfig(
            num_samples=6, scheduler=scheduler, max_concurrent_trials=1, reuse_actors=True
        ),
        run_config=tune.RunConfig(name="exp", storage_path=str(tmp_path), verbose=0),
    ).fit()
    assert [r.metrics["saved"] for r in results] == [1.0] * 6


def _asha(max_t: int, num_samples: int, final_fit: bool = False, **hooks: Any) -> PromotingASHA:
    """ASHA on best_val_dice with rungs at 1, 2, 4, ... below ``max_t``; ``hooks``: the
    searcher's pause, resume, budget and count (:class:`SearcherHooks`)."""
    rungs = Rungs("best_val_dice", "max", max_t, grace_period=1, reduction_factor=2)
    return PromotingASHA(rungs, num_samples, SearcherHooks(**hooks), final_fit)


def _watched_asha(
    max_t: int, num_samples: int, paused: list[str], resumed: list[str]
) -> PromotingASHA:
    """:func:`_asha` with its pauses and resumes recorded."""
    return _asha(max_t, num_samples, on_pause=paused.append, on_resume=resumed.append)


def _result(done: int, dice: float) -> dict:
    """A trial's result after ``done`` epochs, its best Dice (and soft Dice) ``dice``."""
    return {"training_iteration": done, "best_val_dice": dice, TIE_BREAK: dice}


def test_resume_pauses_trials_restored_at_a_rung_again_and_the_rung_decides_anew() -> None:
    """Tune keeps no scheduler state and resumes paused trials as pending: `resume` must not
    let every trial that waited at a rung (an ASHA loser, maybe) train on."""
    from ray.tune.experiment import Trial

    paused: list[str] = []
    resumed: list[str] = []
    asha = _watched_asha(8, 6, paused, resumed)  # rungs 1, 2, 4

    def restored(done: int, dice: float, finished: bool = False, baseline: bool = False) -> Trial:
        trial = Trial("fn", config={TAG_BASELINE: True} if baseline else {}, stub=True)
        trial.run_metadata.last_result = {
            "training_iteration": done,
            "best_val_dice": dice,
            TIE_BREAK: dice,
        }
        trial.set_status(Trial.TERMINATED if finished else Trial.PENDING)
        return trial

    done_8 = restored(8, 0.9, finished=True)
    at_2_good, at_2_bad = restored(2, 0.5), restored(2, 0.2)
    at_3 = restored(3, 0.4)  # between rungs: it passed rung 2, it goes on
    at_1 = restored(1, 0.1)
    baseline = restored(2, 0.05, baseline=True)  # never paused
    trials = [done_8, at_2_good, at_2_bad, at_3, at_1, baseline]
    for trial in trials:
        asha.on_trial_add(None, trial)
    status = [t.status for t in trials]
    assert status == ["TERMINATED", "PAUSED", "PAUSED", "PENDING", "PAUSED", "PENDING"]
    assert paused == [at_2_good.trial_id, at_2_bad.trial_id, at_1.trial_id]
    assert resumed == [at_3.trial_id, baseline.trial_id]

    # What choose_trial_to_run does first once every restored trial is back: rung 2 holds
    # 0.9, 0.5, 0.4, 0.2 (not the baseline) -> its best 2 are done_8 (passed it) and
    # at_2_good, promoted;
    # rung 1's best 3 (0.9, 0.5, 0.4) have all passed it: at_1 waits, as does at_2_bad.
    asha._promote_waiting()
    assert resumed[2:] == [at_2_good.trial_id]
    assert "2 paused" in asha.debug_string()


def test_the_baseline_never_counts_at_a_rung() -> None:
    """A reference, not a competitor: a weak baseline reaching a rung must not promote the
    trial waiting there (it would with the baseline counted: the best 1 of 2)."""
    from ray.tune.experiment import Trial

    paused: list[str] = []
    resumed: list[str] = []
    asha = _watched_asha(4, 4, paused, resumed)  # rungs 1, 2
    trial = Trial("fn", config={}, stub=True)
    baseline = Trial("fn", config={TAG_BASELINE: True}, stub=True)
    for t in (trial, baseline):
        asha.on_trial_add(None, t)

    assert asha.on_trial_result(None, trial, _result(1, 0.5)) == "PAUSE"  # alone at rung 1
    for epoch in (1, 2, 3):
        assert asha.on_trial_result(None, baseline, _result(epoch, 0.1)) == "CONTINUE"
    assert asha.on_trial_result(None, baseline, _result(4, 0.1)) == "STOP"  # its last epoch
    assert paused == [trial.trial_id] and resumed == []  # still waiting for a competitor
    rival = Trial("fn", config={}, stub=True)
    asha.on_trial_add(None, rival)
    assert asha.on_trial_result(None, rival, _result(1, 0.2)) == "PAUSE"
    assert resumed == [trial.trial_id]  # the best 1 of the 2 competitors


def test_a_trial_alone_at_its_rung_is_promoted_when_nothing_else_can_run() -> None:
    """A rung that one trial reached promotes nobody (floor(1/2) = 0): with nothing left to
    run, the best paused trial of the highest rung trains on until one trial (not the
    baseline) has trained to max_t; only then are the paused trials stopped."""
    from ray.tune.experiment import Trial

    paused: list[str] = []
    resumed: list[str] = []
    asha = _watched_asha(4, 3, paused, resumed)  # rungs 1, 2
    baseline = Trial("fn", config={TAG_BASELINE: True}, stub=True)
    low, high = Trial("fn", config={}, stub=True), Trial("fn", config={}, stub=True)
    trials = [baseline, low, high]
    for t in trials:
        asha.on_trial_add(None, t)

    assert asha.on_trial_result(None, baseline, _result(4, 0.0)) == "STOP"
    assert asha.on_trial_result(None, low, _result(1, 0.3)) == "PAUSE"  # alone at rung 1
    # `high` is the best 1 of 2 at rung 1: promoted; then alone at rung 2, it pauses.
    assert asha.on_trial_result(None, high, _result(1, 0.6)) == "CONTINUE"
    assert asha.on_trial_result(None, high, _result(2, 0.7)) == "PAUSE"
    baseline.set_status(Trial.TERMINATED)
    for t in (low, high):
        t.set_status(Trial.PAUSED)
    assert asha._left_over(trials) == (high, [])  # the highest rung's best goes on
    asha._train_on(high.trial_id)  # what choose_trial_to_run does with it
    assert resumed[-1] == high.trial_id
    high.set_status(Trial.RUNNING)
    assert asha._left_over(trials) == (None, [])  # something runs
    assert asha.on_trial_result(None, high, _result(4, 0.8)) == "STOP"  # trained to max_t
    high.set_status(Trial.TERMINATED)
    assert asha._left_over(trials) == (None, [low])  # now the losers are stopped


def test_a_spent_budget_starts_no_trial_and_promotes_none() -> None:
    """Once the exploring budget is spent (``exhausted``; the searcher then samples no new
    trial) nothing is promoted from a rung, but the search still ends with a trial trained
    to max_t."""
    from ray.tune.experiment import Trial

    spent = [False]
    asha = _asha(4, 10, exhausted=lambda: spent[0])
    first, second = Trial("fn", config={}, stub=True), Trial("fn", config={}, stub=True)
    for t in (first, second):
        asha.on_trial_add(None, t)
    row = {"best_val_dice": 0.5, TIE_BREAK: 0.5}
    assert asha.on_trial_result(None, first, {"training_iteration": 1, **row}) == "PAUSE"
    spent[0] = True
    # The best of 2 at rung 1, but the budget is spent: it pauses too.
    better = {"best_val_dice": 0.9, TIE_BREAK: 0.9}
    assert asha.on_trial_result(None, second, {"training_iteration": 1, **better}) == "PAUSE"
    assert first.trial_id not in asha._to_resume
    for t in (first, second):
        t.set_status(Trial.PAUSED)
    # Only 2 of 10 trials were added, but the budget ends exploring: the best trains on.
    assert asha._left_over([first, second]) == (second, [])


def test_with_a_final_fit_a_spent_budget_stops_every_trial_where_it_is() -> None:
    """A search with a final fit keeps exploring to its share: the epoch that spends the
    budget is the trial's last (counted before the decision, not after as Tune tells the
    searcher), the paused trials stop where they wait (a promoted one not restarted yet
    too), none trains on to max_t for it, and the baseline still trains its epochs."""
    from ray.tune.experiment import Trial

    counted: dict[str, int] = {}

    def count(trial_id: str, result: dict) -> None:
        counted[trial_id] = max(counted.get(trial_id, 0), result["training_iteration"])

    asha = _asha(6, 10, exhausted=lambda: sum(counted.values()) >= 4, count=count, final_fit=True)
    baseline = Trial("fn", config={TAG_BASELINE: True}, stub=True)
    first, second, third = (Trial("fn", config={}, stub=True) for _ in range(3))
    trials = [baseline, first, second, third]
    for t in trials:
        asha.on_trial_add(None, t)

    assert asha.on_trial_result(None, first, _result(1, 0.3)) == "PAUSE"  # alone at rung 1
    assert asha.on_trial_result(None, second, _result(1, 0.9)) == "CONTINUE"  # best of 2
    assert asha.on_trial_result(None, third, _result(1, 0.6)) == "PAUSE"  # 2nd of 3
    assert asha.on_trial_result(None, second, _result(2, 0.95)) == "STOP"  # the 4th epoch
    assert counted == {first.trial_id: 1, second.trial_id: 1 + 1, third.trial_id: 1}
    assert asha.on_trial_result(None, baseline, _result(2, 0.1)) == "CONTINUE"
    assert asha.on_trial_result(None, baseline, _result(6, 0.1)) == "STOP"  # its max_t
    for t in (first, third):
        t.set_status(Trial.PAUSED)
    asha._promote(third.trial_id, 0)  # as if a later arrival promoted it just now
    assert asha._no_longer_waiting(trials) == [first, third]
    assert not asha._paused and not asha._to_resume and not asha._trained
    assert asha._no_longer_waiting(trials) == []  # each is stopped once


def test_mo_asha_promotes_by_non_dominated_sorting_not_by_the_first_metric() -> None:
    """Two objectives (Dice, max; parameters, min), reduction 2: of four trials at rung 1
    the first front {t1, t3} goes on; by Dice alone t1 and t2 would (t2: t1's size, less
    Dice; t4: t3's Dice beaten, more parameters)."""
    from ray.tune.experiment import Trial

    resumed: list[str] = []
    objectives = (("best_val_dice", "max"), ("num_parameters", "min"))
    rungs = Rungs("best_val_dice", "max", max_t=4, objectives=objectives)
    asha = PromotingASHA(rungs, 4, SearcherHooks(on_resume=resumed.append))
    trials = {name: Trial("fn", config={}, stub=True) for name in ("t1", "t2", "t3", "t4")}
    results = {"t1": (0.9, 1e6), "t2": (0.85, 1e6), "t3": (0.6, 1e3), "t4": (0.5, 1e5)}
    actions = {}
    for name, (dice, size) in results.items():
        asha.on_trial_add(None, trials[name])
        result = {**_result(1, dice), "num_parameters": size}
        actions[name] = asha.on_trial_result(None, trials[name], result)
    assert set(actions.values()) == {"PAUSE"}  # each waits: floor(n / 2) of those there
    assert resumed == [trials["t1"].trial_id, trials["t3"].trial_id]
