"""What a person watching a running search sees: a live panel on a terminal, else one concise
progress line per change on stdout (:class:`LiveView`), and the search's own Ray metrics
(exported by every Ray node's Prometheus endpoint, charted by
``dashboards/grafana/unet-search.json``).

Both come from one Tune callback in the search driver, so they can never disagree. Ray
exports a gauge only while it keeps being set (a value not set again for about 20 s
disappears), so the callback sets every series again every ``publish_every_s`` seconds, and
a trial's throughput and epoch time stop being exported once the trial has ended.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ray import tune
from ray.tune.experiment import Trial
from ray.util.metrics import Gauge

from unet_search.core.metrics import sign
from unet_search.core.outcome import Outcome, infeasible, outcome_of
from unet_search.search.panel import LivePanel, Row, Snapshot
from unet_search.space.role import TrialRole

_log = logging.getLogger(__name__)

__all__ = ["LiveSettings", "LiveView", "METRIC_NAMES", "SearchMetrics", "STATES", "trial_state"]

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


@dataclass(frozen=True)
class LiveSettings:
    """What a search's live view follows: the search, its metric as the user names it and as
    Tune's results carry it (``best_val_dice``), its mode; ``max_t`` the epochs a trial
    trains at most; ``budget`` (epochs spent before, the search's epochs) the compute the bar
    counts, else trials ended of ``num_samples``; ``otsu`` the plain threshold's validation
    Dice the best is compared with; a line at least every ``heartbeat_s`` and the Ray metrics
    every ``publish_every_s``."""

    search_id: str
    metric: str
    tune_metric: str
    mode: str
    max_t: int = 0
    budget: tuple[int, int] | None = None
    num_samples: int = 0
    otsu: float | None = None
    heartbeat_s: float = 60.0
    publish_every_s: float = 2.0


class LiveView(tune.Callback):
    """Driver-side view of a search: its progress on stdout, and the Ray metrics.

    Without a ``panel`` (stdout is not a terminal: a Ray job's log, CI, a pipe) a status line
    is printed only when it changed (a trial started, paused, stopped or ended; a report
    brought a new best), and at most every ``heartbeat_s`` seconds when nothing did; Tune's
    own tables are off. With one (a terminal) the
    :class:`~unet_search.search.panel.LivePanel` shows the same state, updated in place, and
    the lines go to the search's log only.
    ``settings``: what it follows (:class:`LiveSettings`); ``name_of(trial)`` gives the
    trial's readable name (its MLflow run name)."""

    def __init__(
        self,
        settings: LiveSettings,
        name_of: Callable[[Trial], str],
        panel: LivePanel | None = None,
    ) -> None:
        s = settings
        self.search_id, self.metric, self.tune_metric = s.search_id, s.metric, s.tune_metric
        self.sign = sign(s.mode)
        self.name_of = name_of
        self.heartbeat_s, self.publish_every_s = s.heartbeat_s, s.publish_every_s
        self.metrics = SearchMetrics(s.search_id, s.metric)
        self.start = time.monotonic()
        self.last_print = self.last_publish = float("-inf")
        self.last_content = ""  # the last line printed, less its clock
        self.trials: Sequence[Trial] = ()
        self.best: _Best | None = None
        self.throughput: dict[str, tuple[float, float]] = {}  # trial id -> (images/s, epoch s)
        # Tune calls on_trial_complete while the trial's status is still RUNNING.
        self.ended: dict[str, str] = {}
        self.panel, self.max_t, self.budget = panel, s.max_t, s.budget
        self.num_samples, self.otsu = s.num_samples, s.otsu
        self.epochs: dict[str, int] = {}  # trial id -> epochs reported
        self.last_value: dict[str, float] = {}  # trial id -> the metric of its last epoch
        self.baseline: float | None = None  # the seed baseline's best so far

    def __getstate__(self) -> dict[str, Any]:
        """Tune saves its callbacks with the experiment: not the panel (a terminal's)."""
        return {**self.__dict__, "panel": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restored by ``resume``: a panel again when this process's stdout is a terminal."""
        self.__dict__.update(state)
        self.panel = LivePanel() if sys.stdout.isatty() else None

    def state_of(self, trial: Trial) -> str:
        return self.ended.get(trial.trial_id) or trial_state(trial)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for trial in self.trials:
            out[self.state_of(trial)] += 1
        return out

    def counts_text(self) -> str:
        """``1 paused, 2 running, 3 finished, ...``: pending, paused and infeasible only when
        there are some."""
        counts = self.counts()
        shown = [s for s in STATES if s not in ("pending", "paused", "infeasible") or counts[s]]
        return ", ".join(f"{counts[s]} {s.replace('_', ' ')}" for s in shown)

    def line(self) -> str:
        elapsed = int(time.monotonic() - self.start)
        text = self.counts_text()
        best = ""
        if self.best:
            best = f" | best {self.metric} {self.best.value:.4f} ({self.best.trial})"
        return f"[{elapsed // 60:02d}:{elapsed % 60:02d}] trials: {text}{best}"

    def snapshot(self) -> Snapshot:
        """What the panel draws: the state the lines show, and the trials running or paused."""
        text = self.counts_text()
        if self.budget is not None:
            spent, total = self.budget
            trained = sum(n for t, n in self.epochs.items() if not self._is_baseline(t))
            done, of, unit = float(spent + trained), float(total), "epochs"
        else:
            ended = sum(self.state_of(t) in STATES[3:] for t in self.trials)
            done, of, unit = float(ended), float(self.num_samples or len(self.trials)), "trials"
        rows = tuple(
            Row(
                self.name_of(t),
                state,
                self.epochs.get(t.trial_id, 0),
                self.max_t,
                self.last_value.get(t.trial_id),
            )
            for t in self.trials
            if (state := self.state_of(t)) in ("running", "paused")
        )
        best = None if self.best is None else (self.best.value, self.best.trial)
        elapsed = time.monotonic() - self.start
        return Snapshot(
            self.search_id, self.metric, elapsed, done, of, unit, text, best,
            self.baseline, self.otsu, rows,
        )  # fmt: skip

    def _is_baseline(self, trial_id: str) -> bool:
        trial = next((t for t in self.trials if t.trial_id == trial_id), None)
        return trial is not None and TrialRole.of(trial.config or {}).baseline

    def _update(self, trials: Sequence[Trial]) -> None:
        """Print the line when it changed (a trial started, paused, ended, or a new best),
        else at most every ``heartbeat_s``, or draw the panel; and publish the metrics
        (every call: a short trial's throughput must be set while it runs)."""
        self.trials = trials
        now = time.monotonic()
        line = self.line()
        content = line.split("] ", 1)[1]
        changed = content != self.last_content or now - self.last_print >= self.heartbeat_s
        if trials and changed:  # before Tune adds a trial there is nothing to say
            if self.panel is None:
                print(line, flush=True)
            _log.info(line)  # the search's log (search/driver.py's _route_ray_logs) keeps them too
            self.last_print, self.last_content = now, content
        if self.panel is not None:
            self.panel.show(self.snapshot())
        running = {
            self.name_of(t): self.throughput[t.trial_id]
            for t in trials
            if self.state_of(t) == "running" and t.trial_id in self.throughput
        }
        best = None if self.best is None else self.best.value
        self.metrics.publish(self.counts(), best, running)
        self.last_publish = now

    def _track_trial(self, trial: Trial, result: dict[str, Any]) -> None:
        """Its epochs and last value (the panel's), and the seed baseline's best so far."""
        if infeasible(result):
            return
        self.epochs[trial.trial_id] = int(result.get("epoch") or 0)
        if result.get(self.metric) is not None:
            self.last_value[trial.trial_id] = float(result[self.metric])
        value = result.get(self.tune_metric)
        if value is not None and TrialRole.of(trial.config or {}).baseline:
            self.baseline = float(value)

    def _track_best(self, trial: Trial, result: dict[str, Any]) -> None:
        if infeasible(result):  # an untrained model's value: not a candidate
            return
        value = result.get(self.tune_metric)
        if value is not None and (
            self.best is None or self.sign * value > self.sign * self.best.value
        ):
            self.best = _Best(float(value), self.name_of(trial))

    def on_step_begin(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        # Keeps the gauges alive between events (Ray drops a gauge not set for ~20 s), and
        # shows what changed without an event of its own (a trial paused at a rung).
        if time.monotonic() - self.last_publish >= self.publish_every_s:
            self._update(trials)

    def on_trial_start(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self._update(trials)

    def on_trial_result(
        self,
        iteration: int,
        trials: list[Trial],
        trial: Trial,
        result: dict[str, Any],
        **info: Any,
    ) -> None:
        self._track_best(trial, result)
        self._track_trial(trial, result)
        if "images_per_s" in result and "epoch_s" in result:
            self.throughput[trial.trial_id] = (
                float(result["images_per_s"]),
                float(result["epoch_s"]),
            )
        self._update(trials)

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        # The result that made ASHA stop a trial never reaches on_trial_result.
        result = trial.last_result or {}
        self._track_best(trial, result)
        self.ended[trial.trial_id] = str(outcome_of(result))
        self.throughput.pop(trial.trial_id, None)
        self._update(trials)

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self.ended[trial.trial_id] = str(Outcome.FAILED)
        self.throughput.pop(trial.trial_id, None)
        self._update(trials)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self._update(trials)
        if self.panel is not None:
            self.panel.close()
