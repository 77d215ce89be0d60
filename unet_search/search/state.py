"""A search's saved Tune state: saved when trials checkpoint, read back to resume, and the
wait for a trial's first record before its run starts."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from unet_search.search.context import SearchContext
from unet_search.search.private import saved_trials
from unet_search.tracking.state import SearchState, write_search_state

__all__ = ["await_recorded", "RECORD_TIMEOUT_S", "save_state", "saved_trials"]


RECORD_TIMEOUT_S = 30.0  # see await_recorded: normally the state is there at once


def await_recorded(experiment_dir: Path, trial_id: str, timeout_s: float) -> bool:
    """Wait until Tune's saved experiment state in ``experiment_dir`` names ``trial_id``;
    False if it does not within ``timeout_s``.

    The scheduler saves the state as trials are added, before any can start
    (:class:`unet_search.search.asha.SavesNewTrials`), and Tune copies it to the storage in the
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
