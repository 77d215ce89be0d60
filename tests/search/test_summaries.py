"""Trial summaries and the best of them, on made-up summaries (no Ray): which trial a search
registers (or trains on in its final fit)."""

from __future__ import annotations

from unet_search.core.outcome import Outcome
from unet_search.search.summaries import TrialSummary, best_by_value, choose, front_of, pick_best
from unet_search.space.settings import SearchSettings


def _trial(
    name: str,
    value: float | None,
    outcome: Outcome = Outcome.FINISHED,
    run_id: str | None = "",
    baseline: bool = False,
) -> TrialSummary:
    """A trial's summary; ``run_id`` "": a run named after it, None: no run."""
    run = f"run-{name}" if run_id == "" else run_id
    return TrialSummary(0, name, name, outcome, value, 4, baseline, run, {})


def test_the_best_is_the_best_finished_trial_with_a_run() -> None:
    trials = [
        _trial("stopped", 0.99, Outcome.STOPPED_EARLY),  # ASHA ended it mid-way: no model logged
        _trial("failed", 0.98, Outcome.FAILED),
        _trial("no_run", 0.97, run_id=None),
        _trial("good", 0.80),
        _trial("better", 0.85),
    ]
    assert pick_best(trials, SearchSettings()).name == "better"
    # val_loss: smaller is better
    assert pick_best(trials, SearchSettings(metric="val_loss", mode="min")).name == "good"
    assert best_by_value([], "max") is None


def test_the_baseline_is_the_best_only_when_it_beats_a_trained_candidate() -> None:
    baseline = _trial("baseline", 0.90, baseline=True)
    # every other trial stopped or failed: nothing trained to register, not the baseline
    lost = [
        baseline,
        _trial("t1", 0.95, Outcome.STOPPED_EARLY),
        _trial("t2", None, Outcome.FAILED),
    ]
    assert pick_best(lost, SearchSettings()) is None
    # a finished candidate below it: the baseline is registered (it is the better model)
    assert pick_best([baseline, _trial("t1", 0.70)], SearchSettings()).name == "baseline"
    assert pick_best([baseline, _trial("t1", 0.95)], SearchSettings()).name == "t1"
    assert pick_best([baseline], SearchSettings()).name == "baseline"  # the only trial


def test_the_registered_trial_is_the_best_first_objective_or_the_fronts_knee() -> None:
    """search.pick on a Dice / parameters front: `best` takes the best Dice whatever its
    size; `knee` the point that bulges farthest out of the line through the front's ends;
    a dominated trial is never the knee."""

    def trial(name: str, dice: float, size: float) -> TrialSummary:
        values = {"val_dice": dice, "num_parameters": size}
        return TrialSummary(
            0, name, name, Outcome.FINISHED, dice, 4, False, name, {}, values=values
        )

    trials = [
        trial("big", 0.95, 4e6),
        trial("knee", 0.93, 5e5),
        trial("small", 0.70, 1e5),
        trial("worse", 0.90, 2e6),  # dominated by knee
    ]
    objectives = [{"metric": "val_dice"}, {"metric": "num_parameters"}]
    best = SearchSettings(objectives=objectives)
    knee_pick = SearchSettings(objectives=objectives, pick="knee")
    assert [t.name for t in front_of(trials, best)] == ["big", "knee", "small"]
    assert choose(trials, best).name == "big"
    assert choose(trials, knee_pick).name == "knee"
