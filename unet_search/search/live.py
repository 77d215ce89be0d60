"""What a person watching a running search sees: one concise progress line per trial event on
stdout, and the search's own Ray metrics (exported by every Ray node's Prometheus endpoint,
charted by ``dashboards/grafana/unet-search.json``).

Both come from one Tune callback in the search driver, so they can never disagree. Ray
exports a gauge only while it keeps being set (a value not set again for about 20 s
disappears), so the callback sets every series again every ``publish_every_s`` seconds, and
a trial's throughput and epoch time stop being exported once the trial has ended.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ray import tune
from ray.tune.experiment import Trial
from ray.util.metrics import Gauge

from unet_search.core.metrics import sign
from unet_search.core.outcome import Outcome, infeasible, outcome_of

_log = logging.getLogger(__name__)

__all__ = ["METRIC_NAMES", "STATES", "LiveView", "SearchMetrics", "trial_state"]

# The states a trial is counted in (the ``state`` label of ``unet_search_trials``).
STATES = ("pending", "paused", "running", *(str(o) for o in Outcome if o != Outcome.RUNNING))
# Our metric names as Ray exports them (Ray prefixes ``ray_``); the dashboard test checks
# that every one of them and every Ray metric the dashboard queries is really exported.
METRIC_NAMES = {
    "trials": "unet_search_trials",
    "best": "unet_search_best_metric",
    "images_per_s": "unet_search_images_per_s",
    "epoch_s": "unet_search_epoch_seconds",
}


def trial_state(trial: Trial) -> str:
    """One of STATES: ended trials split into finished (the epoch budget or early stopping
    ended them) and stopped early (ASHA stopped them); a trial ASHA holds at a rung until
    it is promoted or stopped is paused."""
    if trial.status == Trial.RUNNING:
        return "running"
    if trial.status == Trial.PAUSED:
        return "paused"
    if trial.status in (Trial.ERROR, Trial.TERMINATED):
        return str(outcome_of(trial.last_result, failed=trial.status == Trial.ERROR))
    return "pending"


class SearchMetrics:
    """The search's Ray metrics (gauges tagged with the search id):

    - ``unet_search_trials{state}``: trials by state;
    - ``unet_search_best_metric{metric}``: the best value so far of the search metric;
    - ``unet_search_images_per_s{trial}``: training throughput of each running trial (all
      its workers), last epoch;
    - ``unet_search_epoch_seconds{trial}``: wall time of each running trial's last epoch.
    """

    def __init__(self, search_id: str, metric: str) -> None:
        self.search_id, self.metric = search_id, metric
        self.trials = Gauge(
            METRIC_NAMES["trials"], "Trials of a search by state", tag_keys=("search", "state")
        )
        self.best = Gauge(
            METRIC_NAMES["best"],
            "Best value so far of the search metric",
            tag_keys=("search", "metric"),
        )
        self.images_per_s = Gauge(
            METRIC_NAMES["images_per_s"],
            "Training images per second of a running trial (last epoch, all workers)",
            tag_keys=("search", "trial"),
        )
        self.epoch_s = Gauge(
            METRIC_NAMES["epoch_s"],
            "Wall time of a running trial's last epoch",
            tag_keys=("search", "trial"),
        )

    def publish(
        self,
        counts: dict[str, int],
        best: float | None,
        running: dict[str, tuple[float, float]],
    ) -> None:
        """Set every series: ``running`` maps a trial name to (images/s, epoch seconds)."""
        for state in STATES:
            self.trials.set(counts.get(state, 0), tags={"search": self.search_id, "state": state})
        if best is not None:
            self.best.set(best, tags={"search": self.search_id, "metric": self.metric})
        for name, (images_per_s, epoch_s) in running.items():
            tags = {"search": self.search_id, "trial": name}
            self.images_per_s.set(images_per_s, tags=tags)
            self.epoch_s.set(epoch_s, tags=tags)


@dataclass
class _Best:
    value: float
    trial: str


class LiveView(tune.Callback):
    """Driver-side view of a search: progress lines on stdout and the Ray metrics.

    A line is printed when a trial starts or ends, and at most every ``print_every_s`` seconds
    while results arrive (Tune's own tables are off). ``name_of(trial)`` gives the trial's
    readable name (its MLflow run name)."""

    def __init__(
        self,
        search_id: str,
        metric: str,
        tune_metric: str,
        mode: str,
        name_of: Callable[[Trial], str],
        print_every_s: float = 5.0,
        publish_every_s: float = 2.0,
    ) -> None:
        self.metric, self.tune_metric = metric, tune_metric
        self.sign = sign(mode)
        self.name_of = name_of
        self.print_every_s, self.publish_every_s = print_every_s, publish_every_s
        self.metrics = SearchMetrics(search_id, metric)
        self.start = time.monotonic()
        self.last_print = self.last_publish = float("-inf")
        self.trials: Sequence[Trial] = ()
        self.best: _Best | None = None
        self.throughput: dict[str, tuple[float, float]] = {}  # trial id -> (images/s, epoch s)
        # Tune calls on_trial_complete while the trial's status is still RUNNING.
        self.ended: dict[str, str] = {}

    def state_of(self, trial: Trial) -> str:
        return self.ended.get(trial.trial_id) or trial_state(trial)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for trial in self.trials:
            out[self.state_of(trial)] += 1
        return out

    def line(self) -> str:
        counts = self.counts()
        elapsed = int(time.monotonic() - self.start)
        shown = [s for s in STATES if s not in ("pending", "paused", "infeasible") or counts[s]]
        text = ", ".join(f"{counts[s]} {s.replace('_', ' ')}" for s in shown)
        best = ""
        if self.best:
            best = f" | best {self.metric} {self.best.value:.4f} ({self.best.trial})"
        return f"[{elapsed // 60:02d}:{elapsed % 60:02d}] trials: {text}{best}"

    def _update(self, trials: Sequence[Trial], force_print: bool) -> None:
        """Print (on a trial event, else at most every ``print_every_s``) and publish the
        metrics (every call: a short trial's throughput must be set while it runs)."""
        self.trials = trials
        now = time.monotonic()
        if force_print or now - self.last_print >= self.print_every_s:
            line = self.line()
            print(line, flush=True)
            _log.info(line)  # the search's log (search/driver.py's _route_ray_logs) keeps them too
            self.last_print = now
        running = {
            self.name_of(t): self.throughput[t.trial_id]
            for t in trials
            if self.state_of(t) == "running" and t.trial_id in self.throughput
        }
        best = None if self.best is None else self.best.value
        self.metrics.publish(self.counts(), best, running)
        self.last_publish = now

    def _track_best(self, trial: Trial, result: dict[str, Any]) -> None:
        if infeasible(result):  # an untrained model's value: not a candidate
            return
        value = result.get(self.tune_metric)
        if value is not None and (
            self.best is None or self.sign * value > self.sign * self.best.value
        ):
            self.best = _Best(float(value), self.name_of(trial))

    def on_step_begin(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        # Keeps the gauges alive between events (Ray drops a gauge not set for ~20 s).
        if time.monotonic() - self.last_publish >= self.publish_every_s:
            self._update(trials, force_print=False)

    def on_trial_start(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self._update(trials, force_print=True)

    def on_trial_result(
        self,
        iteration: int,
        trials: list[Trial],
        trial: Trial,
        result: dict[str, Any],
        **info: Any,
    ) -> None:
        self._track_best(trial, result)
        if "images_per_s" in result and "epoch_s" in result:
            self.throughput[trial.trial_id] = (
                float(result["images_per_s"]),
                float(result["epoch_s"]),
            )
        self._update(trials, force_print=False)

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        # The result that made ASHA stop a trial never reaches on_trial_result.
        result = trial.last_result or {}
        self._track_best(trial, result)
        self.ended[trial.trial_id] = str(outcome_of(result))
        self.throughput.pop(trial.trial_id, None)
        self._update(trials, force_print=True)

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self.ended[trial.trial_id] = str(Outcome.FAILED)
        self.throughput.pop(trial.trial_id, None)
        self._update(trials, force_print=True)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self._update(trials, force_print=False)
