"""The private parts of Ray Tune and Optuna that unet-search relies on, checked against the
installed versions: an upgrade that renames or reshapes one fails here, by name, instead of
somewhere deep inside a search.

- `search.PruningAwareOptunaSearch` reads and writes OptunaSearch's `_ot_study`, `_ot_trials`,
  `_completed_trials` and overrides `_setup_study` (telling Optuna that ASHA pruned a trial,
  enqueueing the seed baseline).
- `asha.TieBreakingASHA` reads ASHAScheduler's `_metric`, `_mode`, `_max_t`, `_trial_info`.
- `asha.SavesNewTrials` reaches the TuneController behind Tune's scheduler wrapper
  (`_tune_controller`) to call `checkpoint(force=, wait=)`.
- `search.saved_trials` reads Tune's `experiment_state-*.json` (`trial_data`: pairs of JSON
  strings, the first with `trial_id`, `status`, `config`, the second with `last_result`)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import optuna
from ray import tune
from ray.tune.execution.tune_controller import TrialRunnerWrapper, TuneController
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from unet_search.search import saved_trials


def test_optuna_search_keeps_its_study_and_trials_where_we_read_them() -> None:
    def space(trial: optuna.Trial) -> None:
        trial.suggest_float("x", 0.0, 1.0)

    searcher = OptunaSearch(space=space, metric="score", mode="max", seed=0)
    assert isinstance(searcher._ot_study, optuna.Study)
    assert searcher._ot_trials == {} and searcher._completed_trials == set()
    assert "mode" in inspect.signature(OptunaSearch._setup_study).parameters
    assert searcher.suggest("t1") is not None
    assert isinstance(searcher._ot_trials["t1"], optuna.Trial)
    searcher.on_trial_complete("t1", {"score": 0.5})
    assert "t1" in searcher._completed_trials


def test_ashas_settings_and_the_controllers_checkpoint_are_where_we_use_them() -> None:
    scheduler = ASHAScheduler(metric="val_dice", mode="max", max_t=7, grace_period=1)
    assert (scheduler._metric, scheduler._mode, scheduler._max_t) == ("val_dice", "max", 7)
    assert scheduler._trial_info == {}
    assert {"force", "wait"} <= set(inspect.signature(TuneController.checkpoint).parameters)
    # the wrapper schedulers get keeps the controller as `_tune_controller`
    init = inspect.getsource(TrialRunnerWrapper.__init__)
    assert "self._tune_controller = tune_controller" in init


def test_tunes_experiment_state_is_laid_out_as_saved_trials_reads_it(
    ray_local: None, tmp_path: Path
) -> None:
    def trainable(config: dict) -> None:
        tune.report({"score": config["x"]})

    tune.Tuner(
        trainable,
        param_space={"x": 0.25},
        run_config=tune.RunConfig(name="state", storage_path=str(tmp_path), verbose=0),
    ).fit()
    (state,) = (tmp_path / "state").glob("experiment_state-*.json")
    assert "trial_data" in json.loads(state.read_text())
    (trial,) = saved_trials(tmp_path / "state")
    assert trial["status"] == "TERMINATED" and trial["config"] == {"x": 0.25}
    assert trial["last_result"]["score"] == 0.25 and trial["trial_id"]
