"""Tune callbacks: a trial's status and error reach its MLflow run; a tracking outage longer
than the patience stops the search cleanly."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from ray import tune

from unet_search.core.names import ERROR_FILE
from unet_search.core.outcome import Outcome, outcome_of
from unet_search.core.tags import TAG_ERROR, TAG_OUTCOME
from unet_search.search.context import SearchContext
from unet_search.tracking.client import end_run, log_text, set_tags
from unet_search.tracking.outage import Outage, TrackingUnavailable, reachable, with_patience
from unet_search.tracking.read import find_child_runs

__all__ = ["TrialStatusCallback"]


class TrialStatusCallback(tune.Callback):
    """Driver side: end each trial's MLflow run FINISHED, KILLED (ASHA) or FAILED, and watch
    the tracking server.

    Run endings wait in a queue while the server is unreachable (the search goes on: the
    trials queue their own logging). When it has been away for the patience, the callback
    stops the search with :class:`~unet_search.tracking.outage.TrackingUnavailable` (kept in
    ``gave_up``): Ray's results and the trials' checkpoints, unsent logging included, stay
    for ``unet-search resume``."""

    PROBE_EVERY_S = 5.0

    def __init__(self, ctx: SearchContext) -> None:
        self.ctx = ctx
        self.queue: list[tuple[str, str, dict[str, str], str | None]] = []
        self.outage = Outage(ctx.tracking_uri, ctx.patience_s)
        self.last_probe = 0.0
        self.gave_up: TrackingUnavailable | None = None

    def _end(self, trial: Any, outcome: Outcome, error: str | None = None) -> None:
        ending = {TAG_OUTCOME: str(outcome)}
        if error:
            ending[TAG_ERROR] = _last_line(error)[:4000]
        self.queue.append((trial.trial_id, outcome.run_status, ending, error))
        self._flush()

    def _flush(self) -> bool:
        """Send the queued run endings; False while the server is away."""
        self.last_probe = time.monotonic()
        if not reachable(self.ctx.tracking_uri):
            self.outage.away("trials keep training and queue their logging")
            return False
        self.outage.back("the search goes on")
        self._send_endings()
        return True

    def _send_endings(self) -> None:
        if not self.queue:
            return
        uri = self.ctx.tracking_uri
        runs = find_child_runs(uri, self.ctx.experiment_id, self.ctx.search_id)
        while self.queue:
            trial_id, status, tags, error = self.queue[0]
            run_id = runs.get(trial_id)
            if run_id is not None:
                if error:
                    log_text(uri, run_id, error, ERROR_FILE)  # the traceback
                set_tags(uri, run_id, tags)
                end_run(uri, run_id, status)
            self.queue.pop(0)

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if time.monotonic() - self.last_probe < self.PROBE_EVERY_S or self._flush():
            return
        try:
            self.outage.check("the search driver")
        except TrackingUnavailable as err:
            self.gave_up = err
            raise

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        if self.gave_up is not None:
            return
        # Also waits for the server before the search's summary and registration.
        with_patience(
            self.ctx.tracking_uri,
            f"search {self.ctx.search_id}: the trials' run endings",
            self._send_endings,
            self.ctx.patience_s,
        )

    def on_trial_complete(
        self, iteration: int, trials: list[Any], trial: Any, **info: Any
    ) -> None:
        self._end(trial, outcome_of(trial.last_result))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._end(trial, Outcome.FAILED, _trial_error(trial))


def _trial_error(trial: Any) -> str:
    """The error a failed trial raised, as Tune recorded it (its error file)."""
    path = trial.error_file
    if path and Path(path).is_file():
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    else:
        text = str(trial.get_error() or "the trial failed (Tune recorded no error text)")
    return re.sub(r"\x1b\[[0-9;]*m", "", text)  # Ray colours its traces


def _last_line(text: str) -> str:
    """The last non-empty line of a traceback: the exception and its message."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text
