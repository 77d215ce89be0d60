"""How a trial ended, worked out in one place: the live view, the trials' MLflow runs, the
search's summary, Optuna's record, ASHA and the readers of MLflow all ask :func:`outcome_of`.

A trial that raised *failed*; one over a limit of ``search.constraints`` is *infeasible* (it
trained no epoch: its one result says so); one whose last result says its epochs (or its
early stopping) ended it *finished*; any other ended trial was *stopped early* (ASHA stopped
it at a rung). Its MLflow run ends FINISHED, KILLED (stopped early, infeasible) or FAILED
with the tag ``unet_search.outcome``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

__all__ = [
    "FINISHED_KEY",
    "INFEASIBLE_KEY",
    "infeasible",
    "Outcome",
    "outcome_of",
    "RunStatus",
    "trained_to_the_end",
]

FINISHED_KEY = "finished"  # the result key a training epoch sets to 1.0 on its last epoch
INFEASIBLE_KEY = "infeasible"  # 1.0 in the one result of a trial over a limit


class RunStatus(enum.StrEnum):
    """An MLflow run's status as unet-search sets and reads it (a str: compares equal to
    MLflow's own status strings)."""

    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    KILLED = "KILLED"  # stopped early, infeasible, or interrupted
    FAILED = "FAILED"


class Outcome(enum.StrEnum):
    """A trial's end (the value of the ``unet_search.outcome`` tag), or ``running``."""

    FINISHED = "finished"
    STOPPED_EARLY = "stopped_early"
    FAILED = "failed"
    INFEASIBLE = "infeasible"
    RUNNING = "running"

    @property
    def run_status(self) -> RunStatus:
        """The MLflow run status of a trial that ended so."""
        return _RUN_STATUS[self]

    @classmethod
    def of_run_status(cls, status: str) -> Outcome:
        """What an MLflow run's status says of its trial (a run that has not ended: running)."""
        return next((o for o, s in _RUN_STATUS.items() if s == status), cls.RUNNING)


_RUN_STATUS = {
    Outcome.FINISHED: RunStatus.FINISHED,
    Outcome.STOPPED_EARLY: RunStatus.KILLED,
    Outcome.FAILED: RunStatus.FAILED,
    Outcome.INFEASIBLE: RunStatus.KILLED,  # read back as stopped early where the tag is missing
    Outcome.RUNNING: RunStatus.RUNNING,
}


def trained_to_the_end(result: Mapping[str, Any] | None) -> bool:
    """Whether ``result`` is a trial's last epoch (its epochs, or early stopping, ended it)."""
    return bool((result or {}).get(FINISHED_KEY))


def infeasible(result: Mapping[str, Any] | None) -> bool:
    """Whether ``result`` is the one result of a trial over a limit (it trained nothing)."""
    return bool((result or {}).get(INFEASIBLE_KEY))


def outcome_of(result: Mapping[str, Any] | None, *, failed: bool = False) -> Outcome:
    """How a trial that ended with ``result`` (its last reported metrics) ended."""
    if failed:
        return Outcome.FAILED
    if infeasible(result):
        return Outcome.INFEASIBLE
    return Outcome.FINISHED if trained_to_the_end(result) else Outcome.STOPPED_EARLY
