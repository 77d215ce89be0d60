"""The private parts of Ray Tune and Optuna that unet-search relies on, all reached through
:mod:`unet_search.search.private`, checked against the installed versions: an upgrade that
renames or reshapes one fails here, by name, instead of somewhere deep inside a search.

- `OptunaSearchInternals` reads and writes OptunaSearch's `_ot_study`, `_ot_trials`,
  `_completed_trials` and hooks `_setup_study` (telling Optuna that ASHA pruned a trial,
  enqueueing the seed baseline).
- `ASHAInternals` reads ASHAScheduler's `_metric`, `_mode`, `_max_t`, `_trial_info`.
- `checkpoint_experiment` reaches the TuneController behind Tune's scheduler wrapper
  (`_tune_controller`) to call `checkpoint(force=, wait=)`.
- `saved_trials` reads Tune's `experiment_state-*.json` (`trial_data`: pairs of JSON
  strings, the first with `trial_id`, `status`, `config`, the second with `last_result`).
- No other module of the package touches a private Ray or Optuna name."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import optuna
from ray import tune
from ray.tune.execution.tune_controller import TrialRunnerWrapper, TuneController
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from unet_search.search.private import (
    ASHAInternals,
    OptunaSearchInternals,
    saved_trials,
)

PACKAGE = Path(__file__).parents[2] / "unet_search"
PRIVATE_NAMES = (
    "_ot_study",
    "_ot_trials",
    "_completed_trials",
    "_setup_study",
    "_metric",
    "_mode",
    "_max_t",
    "_trial_info",
    "_tune_controller",
    "experiment_state-",
)


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


def test_the_internals_classes_reach_them_through_public_names() -> None:
    created = []

    class Probe(OptunaSearchInternals):
        def on_study_created(self) -> None:
            created.append(self.study)

    def space(trial: optuna.Trial) -> None:
        trial.suggest_float("x", 0.0, 1.0)

    searcher = Probe(space=space, metric="score", mode="max", seed=0)
    assert created == [searcher.study]  # the hook ran as the study was made
    assert searcher.optuna_trial("t1") is None and not searcher.was_told("t1")
    searcher.suggest("t1")
    told = searcher.optuna_trial("t1")
    assert told is not None and told.number == 0
    searcher.study.tell(told, 0.5)
    searcher.mark_told("t1")
    assert searcher.was_told("t1")
    searcher.on_trial_complete("t1", {"score": 0.5})  # Ray's own: told already, no second tell
    assert [t.value for t in searcher.study.trials] == [0.5]

    asha = ASHAInternals(metric="val_dice", mode="max", max_t=7, grace_period=1)
    assert (asha.rank_metric, asha.rank_mode, asha.max_t) == ("val_dice", "max", 7)
    asha._trial_info["t1"] = object()
    asha.forget("t1")
    asha.forget("never-added")
    assert asha._trial_info == {}


def test_no_other_module_touches_a_private_ray_or_optuna_name() -> None:
    found = [
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "private.py"
        for name in PRIVATE_NAMES
        if re.search(rf"\.{name}\b" if name.startswith("_") else re.escape(name), path.read_text())
    ]
    assert found == []
