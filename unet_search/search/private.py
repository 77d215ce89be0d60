"""Every private part of Ray Tune and Optuna that unet-search touches, in one place.

Nothing else in the package reads an underscore attribute of a Ray or Optuna object or a
Tune state file; it goes through the names below. Each access is commented with what it is
and why no public API does it. ``tests/search/test_private_apis.py`` checks each one against
the installed versions, so an upgrade that renames or reshapes one fails there, by name,
instead of somewhere deep inside a search. Checked with ray 2.60 and optuna 4.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import optuna
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

__all__ = ["ASHAInternals", "OptunaSearchInternals", "checkpoint_experiment", "saved_trials"]

TUNE_STATE_GLOB = "experiment_state-*.json"  # Tune's saved experiment state, one per session


class OptunaSearchInternals(OptunaSearch):
    """OptunaSearch with public names for the private state a subclass needs.

    Ray's OptunaSearch tells Optuna that every trial ended COMPLETE; telling it PRUNED instead
    needs the Optuna trial of a Tune trial and the set of trials already told, which it keeps
    privately. Enqueueing a trial before the first ``suggest`` needs the moment the study is
    created, which only its private ``_setup_study`` marks."""

    @property
    def study(self) -> optuna.Study:
        study = self._ot_study  # private: the Optuna study (created in __init__ for our spaces)
        assert study is not None, "the study is created in __init__ (define-by-run space)"
        return study

    def optuna_trial(self, trial_id: str) -> optuna.Trial | None:
        # private: Tune trial id -> the Optuna trial it asked for
        trial: optuna.Trial | None = self._ot_trials.get(trial_id)
        return trial

    def was_told(self, trial_id: str) -> bool:
        return trial_id in self._completed_trials  # private: trials already told to Optuna

    def mark_told(self, trial_id: str) -> None:
        self._completed_trials.add(trial_id)  # private, as above: OptunaSearch tells none twice

    def on_study_created(self) -> None:
        """Called once the study exists, before any trial is suggested."""

    def _setup_study(self, mode: str | list[str]) -> None:  # private hook: the study's creation
        super()._setup_study(mode)
        self.on_study_created()


class ASHAInternals(ASHAScheduler):
    """ASHAScheduler with public names for the settings and bookkeeping it keeps privately:
    the metric and mode it ranks by, its ``max_t``, and forgetting a finished trial (its rung
    records live in ``_trial_info``)."""

    @property
    def rank_metric(self) -> str:
        metric: str | None = self._metric  # private: set at construction
        assert metric, "given at construction"
        return metric

    @property
    def rank_mode(self) -> str:
        mode: str | None = self._mode  # private: set at construction
        assert mode, "given at construction"
        return mode

    @property
    def max_t(self) -> int:
        return int(self._max_t)  # private: the last milestone, in training iterations

    def forget(self, trial_id: str) -> None:
        self._trial_info.pop(trial_id, None)  # private: trial id -> its bracket


def checkpoint_experiment(tune_controller: Any, wait: bool) -> None:
    """Save Tune's experiment state now (``wait``: until it is written). Schedulers get a
    wrapper of the TuneController whose private ``_tune_controller`` is the controller
    itself, and only the controller has ``checkpoint(force=, wait=)``."""
    controller = getattr(tune_controller, "_tune_controller", tune_controller)
    controller.checkpoint(force=True, wait=wait)


def saved_trials(experiment_dir: Path) -> list[dict[str, Any]]:
    """The trials (``trial_id``, ``status``, ``config``, ..., and ``last_result``: the
    result ``resume`` continues from) of Tune's saved experiment state in
    ``experiment_dir``, one entry per trial and state file (each driver session writes
    one). A file being written is skipped.

    Tune's state file is private: ``trial_data`` holds pairs of JSON strings, the first with
    the trial's id, status and config, the second its run metadata with ``last_result``.
    Tune's own restore reads it; nothing public lists the trials of a stopped experiment."""
    out: list[dict[str, Any]] = []
    for path in experiment_dir.glob(TUNE_STATE_GLOB):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(path.read_text(encoding="utf-8"))["trial_data"]
            out.extend(
                {**json.loads(state), "last_result": json.loads(meta).get("last_result") or {}}
                for state, meta in data
            )
    return out
