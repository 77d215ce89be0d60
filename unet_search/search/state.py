"""A search's saved Tune state: saved as soon as trials are added and after every checkpoint
(the schedulers' base :class:`SavesNewTrials`, the callback :class:`SaveAfterCheckpoints`),
read back to resume, the wait for a trial's first record before its run starts, and what
``resume`` needs on the parent run."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray.tune import Callback, Checkpoint
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from unet_search.search.context import SearchContext
from unet_search.search.private import checkpoint_experiment, saved_trials
from unet_search.tracking.state import SearchState, write_search_state

__all__ = [
    "await_recorded",
    "DurableFIFO",
    "KEEP_CHECKPOINTS",
    "RECORD_TIMEOUT_S",
    "SaveAfterCheckpoints",
    "save_state",
    "saved_trials",
    "SavesNewTrials",
]


RECORD_TIMEOUT_S = 30.0  # see await_recorded: normally the state is there at once


def await_recorded(experiment_dir: Path, trial_id: str, timeout_s: float) -> bool:
    """Wait until Tune's saved experiment state in ``experiment_dir`` names ``trial_id``;
    False if it does not within ``timeout_s``.

    The scheduler saves the state as trials are added, before any can start
    (:class:`SavesNewTrials`), and Tune copies it to the storage in the
    background: a trial checks it is there before it opens its MLflow run, or a driver killed
    in between would leave a run that ``resume`` never hears of."""
    deadline = time.monotonic() + timeout_s
    while not any(t.get("trial_id") == trial_id for t in saved_trials(experiment_dir)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def save_state(
    ctx: SearchContext, data_dir: Path, model_name: str, overrides: Sequence[str]
) -> None:
    """What `resume` needs, as an artifact of the search's parent run."""
    write_search_state(
        SearchState(
            search_id=ctx.search_id,
            space_file=f"{ctx.spec.name}.yaml",
            space_source=ctx.spec.source,
            overrides=tuple(overrides),
            data_dir=str(data_dir),
            model_name=model_name,
            storage=ctx.storage,
            tracking_uri=ctx.tracking_uri,
            experiment_id=ctx.experiment_id,
            parent_run_id=ctx.parent_run_id,
            fingerprint=ctx.fingerprint,
            budget=ctx.spec.plan.budget if ctx.spec.plan is not None else None,
        )
    )


class SavesNewTrials(TrialScheduler):
    """Saves Tune's experiment state (its trials and the searcher's) as soon as new trials
    are added, before any of them can start.

    A trial opens its MLflow run as it starts; Tune on its own saves its state every 10 s or
    more. A search driver killed in between left a run whose trial ``resume`` never heard of
    (Optuna gave its number to a new trial) and that stayed RUNNING. Tune adds the trials
    the searcher suggests, then asks the scheduler which trial to run (``choose_trial_to_run``)
    before it starts any: the state saved there holds every trial that can open a run. Tune
    copies it to the storage in the background (waiting for the copy cost ~50-100 ms of the
    driver's loop per trial: 200 trivial trials went from 1.26x to 1.43x their minimum,
    bench/bookkeeping.py); the trial waits until it is there before it opens its run
    (:func:`await_recorded`). During ``resume`` the restored trials are
    added one by one; saving only when all are back keeps a partial list from overwriting
    the full one.
    """

    _unsaved = False
    _checkpointed = False

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._unsaved = True
        super().on_trial_add(tune_controller, trial)

    def checkpoint_registered(self) -> None:
        """A trial's checkpoint is being registered (:class:`SaveAfterCheckpoints`)."""
        self._checkpointed = True

    def save_new_trials(self, tune_controller: Any) -> None:
        if self._unsaved or self._checkpointed:
            # The scheduler gets a wrapper that warns on each method it does not list;
            # saving is the controller's own, so call it there. After a checkpoint, wait for
            # the copy (see SaveAfterCheckpoints); new trials wait for it themselves.
            checkpoint_experiment(tune_controller, wait=self._checkpointed)
            self._unsaved = self._checkpointed = False

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        self.save_new_trials(tune_controller)
        return super().choose_trial_to_run(tune_controller)


KEEP_CHECKPOINTS = 2  # per trial; see SaveAfterCheckpoints


class SaveAfterCheckpoints(Callback):
    """Makes the scheduler save Tune's experiment state after every checkpoint a trial
    registers, and wait until it is in the storage, with ``KEEP_CHECKPOINTS`` = 2 kept.

    Tune deletes a trial's checkpoint beyond ``num_to_keep`` as it registers the next one,
    and saves its state (which names the latest checkpoint) later, copying it to the storage
    in the background. With one checkpoint kept, a driver killed in between left a state
    naming a deleted checkpoint, and ``resume`` failed that trial ("Could not recover from
    checkpoint as it does not exist on storage anymore"; 2 kills in 4 in the cluster test).
    Saved after each registration, the stored state names checkpoint k before k + 1 is
    registered, and k is deleted only when k + 2 is."""

    def __init__(self, scheduler: SavesNewTrials) -> None:
        self.scheduler = scheduler

    def on_checkpoint(
        self,
        iteration: int,
        trials: list[Trial],
        trial: Trial,
        checkpoint: Checkpoint,
        **info: Any,
    ) -> None:
        # Tune registers the checkpoint right after its callbacks; the scheduler saves at
        # the next step (choose_trial_to_run), before any other result is processed.
        self.scheduler.checkpoint_registered()


class DurableFIFO(SavesNewTrials, FIFOScheduler):
    """First in, first out, with no early stopping (``fifo``)."""
