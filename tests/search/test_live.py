"""The search's Ray metrics, the Grafana dashboard and the Prometheus config, checked against
what the real Ray nodes exported while a real search ran (scraped, as Prometheus would)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml
from conftest import WatchedSearch
from ray.tune.experiment import Trial

from unet_search.search.live import METRIC_NAMES, STATES, LiveSettings, LiveView, trial_state

pytestmark = pytest.mark.slow
DASHBOARDS = Path(__file__).parents[2] / "dashboards"
# Ray records these only on nodes that have GPUs (reporter_agent.py): a CPU node cannot
# export them, so they are checked against Ray's own metric definitions instead.
GPU_ONLY = {
    "ray_node_gpus_utilization",
    "ray_node_gram_used",
    "ray_node_gram_available",
    "ray_node_gpus_available",
}


def _queried_metrics() -> set[str]:
    """Every metric name the dashboard's queries (panels and template variables) use."""
    board = json.loads((DASHBOARDS / "grafana" / "unet-search.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in board["templating"]["list"] if v.get("definition")]
    names = {m for e in exprs for m in re.findall(r"\b(ray_[a-z0-9_]+)\b", e)}
    assert len(exprs) >= 12 and names, "the dashboard lost its queries"
    return names


def _latest(watched: WatchedSearch, name: str, **labels: str) -> list[float]:
    """Values of ``name`` with these labels in the last scrape that had any."""
    for scrape in reversed(watched.scrapes):
        found = [
            v for lab, v in scrape.get(name, []) if all(lab.get(k) == x for k, x in labels.items())
        ]
        if found:
            return found
    return []


def test_every_metric_the_dashboard_queries_is_exported(watched_search: WatchedSearch) -> None:
    import ray
    from ray.dashboard.modules.reporter.reporter_agent import METRICS_GAUGES

    queried = _queried_metrics()
    ours = {f"ray_{name}" for name in METRIC_NAMES.values()}
    assert ours <= queried  # the dashboard shows all four of our metrics
    assert {"ray_node_cpu_utilization", "ray_node_mem_used"} <= queried
    missing = queried - watched_search.exported
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    if has_gpu:
        assert missing == set()
    else:
        assert missing <= GPU_ONLY, f"queried but never exported: {sorted(missing - GPU_ONLY)}"
        assert {m.removeprefix("ray_") for m in missing} <= set(METRICS_GAUGES)


def test_search_metrics_carry_the_search_state(watched_search: WatchedSearch) -> None:
    out = watched_search.outcome
    sid = out.search_id
    final = {
        s: _latest(watched_search, "ray_unet_search_trials", search=sid, state=s) for s in STATES
    }
    assert final["finished"] == [4.0]
    assert all(final[s] == [0.0] for s in STATES if s != "finished")
    # At some point during the search a trial was running.
    running = [
        v
        for scrape in watched_search.scrapes
        for lab, v in scrape.get("ray_unet_search_trials", [])
        if lab.get("search") == sid and lab.get("state") == "running"
    ]
    assert max(running) >= 1
    best = _latest(watched_search, "ray_unet_search_best_metric", search=sid, metric="val_dice")
    assert best == [pytest.approx(max(t.value for t in out.trials))]

    names = {t.name for t in out.trials}
    for metric in ("ray_unet_search_images_per_s", "ray_unet_search_epoch_seconds"):
        per_trial = {
            lab["trial"]: v
            for scrape in watched_search.scrapes
            for lab, v in scrape.get(metric, [])
            if lab.get("search") == sid
        }
        assert len(per_trial) >= 2 and set(per_trial) <= names, metric
        assert all(v > 0 for v in per_trial.values()), metric


def test_prometheus_config_finds_the_nodes_ray_announces(watched_search: WatchedSearch) -> None:
    """The shipped config reads the file Ray's own Prometheus config reads; that path is a
    link Ray's head keeps to its session's file, which lists the endpoints scraped above.

    The session's file is read, not the link: every Ray cluster on a machine (the CLI tests
    start their own) points the one link at its own session and mends it every 5 s."""
    import ray
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

    config = yaml.safe_load((DASHBOARDS / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ray"]
    (sd_path,) = job["file_sd_configs"][0]["files"]
    rays = Path(ray.__file__).parent / "dashboard/modules/metrics/export/prometheus"
    (ray_job,) = yaml.safe_load((rays / "prometheus.yml").read_text())["scrape_configs"]
    assert [sd_path] == ray_job["file_sd_configs"][0]["files"]
    node = ray._private.worker._global_node
    assert Path(sd_path).name == PROMETHEUS_SERVICE_DISCOVERY_FILE
    if Path(node.get_temp_dir_path()) == Path(sd_path).parent:  # Ray's default temp dir
        link = Path(sd_path)
        assert link.is_symlink() and Path(os.readlink(link)).name == link.name
    discovered = json.loads(
        (Path(node.get_session_dir_path()) / PROMETHEUS_SERVICE_DISCOVERY_FILE).read_text()
    )
    targets = {t for group in discovered for t in group["targets"]}
    assert set(watched_search.targets) <= targets


def test_the_progress_line_shows_trials_asha_holds_at_a_rung_as_paused() -> None:
    trials = [Trial("t", config={}, stub=True) for _ in range(4)]
    statuses = [Trial.PAUSED, Trial.PAUSED, Trial.RUNNING, Trial.PENDING]
    for trial, status in zip(trials, statuses, strict=True):
        trial.set_status(status)
    assert [trial_state(t) for t in trials] == ["paused", "paused", "running", "pending"]
    view = LiveView(LiveSettings("s", "val_dice", "best_val_dice", "max"), lambda t: "n")
    view.trials = trials
    assert "trials: 1 pending, 2 paused, 1 running, 0 finished" in view.line()
    trials[0].set_status(Trial.RUNNING)
    trials[1].set_status(Trial.RUNNING)
    trials[3].set_status(Trial.RUNNING)
    assert "trials: 4 running, 0 finished" in view.line()  # none paused or pending: not shown


def test_lines_come_only_when_something_changed_and_the_panel_draws_the_same_state(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Not on a terminal: a line for each change (a trial started, paused), none while
    nothing changes, until the heartbeat. The panel's state is the line's, with the trials'
    epochs and values."""
    import time

    trials = [Trial("t", config={}, stub=True) for _ in range(2)]
    for trial in trials:
        trial.set_status(Trial.RUNNING)
    follows = LiveSettings(
        "s", "val_dice", "best_val_dice", "max", max_t=4, num_samples=2, otsu=0.5, heartbeat_s=0.3
    )
    view = LiveView(follows, lambda t: t.trial_id)
    view.on_trial_start(0, trials, trials[0])  # an event: a line
    for _ in range(5):  # the driver's loop while nothing changes: no line
        view._update(trials)
    trials[1].set_status(Trial.PAUSED)  # a change without an event of its own: a line
    view._update(trials)
    view._update(trials)
    time.sleep(0.35)
    view._update(trials)  # nothing changed for the heartbeat: a line
    lines = [line for line in capsys.readouterr().out.splitlines() if "] trials: " in line]
    assert [line.split("] ", 1)[1] for line in lines] == [
        "trials: 2 running, 0 finished, 0 stopped early, 0 failed",
        "trials: 1 paused, 1 running, 0 finished, 0 stopped early, 0 failed",
        "trials: 1 paused, 1 running, 0 finished, 0 stopped early, 0 failed",
    ]
    result = {"epoch": 2.0, "val_dice": 0.61, "best_val_dice": 0.7}
    view.on_trial_result(0, trials, trials[0], result)
    snap = view.snapshot()
    assert (snap.done, snap.total, snap.unit) == (0.0, 2.0, "trials")
    assert snap.best == (0.7, trials[0].trial_id) and snap.otsu == 0.5
    assert [(r.state, r.epoch, r.max_t, r.value) for r in snap.rows] == [
        ("running", 2, 4, 0.61),
        ("paused", 0, 4, None),
    ]
    assert snap.counts == "1 paused, 1 running, 0 finished, 0 stopped early, 0 failed"
