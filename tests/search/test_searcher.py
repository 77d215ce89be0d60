"""The searcher tells Optuna how each trial really ended (real Optuna, no Ray cluster: Tune's
calls made by hand): a trial ASHA stopped is PRUNED with its intermediate values, one that
trained to its end COMPLETE; the baseline and the planned default go first; no trial is
suggested once the exploring budget is spent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from unet_search.core.outcome import FINISHED_KEY
from unet_search.core.tags import TAG_BASELINE, TAG_DEFAULT
from unet_search.search.searcher import ExploreBudget, PruningAwareOptunaSearch
from unet_search.space.load import load_space

METRIC = "best_val_dice"
QUICK = Path(__file__).parents[2] / "search_spaces" / "quick.yaml"


def _result(epoch: int, dice: float, finished: bool = False) -> dict[str, Any]:
    result = {METRIC: dice, "epoch": epoch, "training_iteration": epoch}
    return {**result, FINISHED_KEY: 1.0} if finished else result


def test_stopped_trials_are_pruned_finished_ones_complete_and_the_budget_ends_it() -> None:
    spec = load_space(QUICK)  # searches lr and the loss mix
    default_params = spec.default_params()
    searcher = PruningAwareOptunaSearch(
        space=spec.define_by_run,
        metric=METRIC,
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
        enqueue_baseline=True,
        enqueue_default=default_params,
        budget=ExploreBudget(epochs=5),
    )
    baseline_config = searcher.suggest("baseline") or {}
    assert baseline_config[TAG_BASELINE] is True and "lr" not in baseline_config  # samples nothing
    default_config = searcher.suggest("default") or {}
    assert default_config[TAG_DEFAULT] is True and default_config["lr"] == default_params["lr"]
    assert (searcher.suggest("t2") or {})["lr"] != default_params["lr"]  # sampled
    for epoch, dice in ((1, 0.3), (2, 0.4)):
        searcher.on_trial_result("baseline", _result(epoch, 0.5))
        searcher.on_trial_result("default", _result(epoch, dice))
    searcher.on_trial_complete("default", _result(3, 0.45))  # ASHA stopped it at epoch 3
    searcher.on_trial_result("t2", _result(1, 0.2))
    searcher.on_trial_complete("t2", _result(2, 0.6, finished=True))
    searcher.on_trial_complete("baseline", _result(6, 0.5, finished=True))

    baseline, default, t2 = searcher.study.trials
    assert baseline.user_attrs == {TAG_BASELINE: True} and baseline.params == {}
    assert default.user_attrs == {TAG_DEFAULT: True} and default.params == default_params
    # PRUNED, not a COMPLETE 0.45: Optuna holds its last intermediate value as its value
    assert (default.state, default.value) == (TrialState.PRUNED, 0.45)
    assert default.intermediate_values == {1: 0.3, 2: 0.4, 3: 0.45}
    assert (t2.state, t2.value) == (TrialState.COMPLETE, 0.6)
    # 3 + 2 epochs of the trials that are not the baseline: the budget of 5 is spent
    assert searcher.epochs_trained == 5 and searcher.exhausted()
    assert searcher.suggest("t3") == Searcher.FINISHED
