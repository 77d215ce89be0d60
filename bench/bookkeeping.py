"""Benchmark 5, bookkeeping: 200 trivial trials (each sleeps SLEEP s and reports once) at full
concurrency (one per CPU): wall time over the theoretical minimum (ceil(200 / CPUs) x SLEEP),
target <= 1.3 (Ray's own release gate for Tune is 1.28).

Measured side by side: plain Tune (random variants, no callbacks, actors reused as a search
reuses them) and Tune with everything a
unet-search search adds around its trials: the Optuna TPE searcher (with its define-by-run
space and pruning-aware bookkeeping), the live view and Ray metrics, the MLflow run of every
trial (opened by the trial, ended by the driver's callback) on SQLite.

    python bench/bookkeeping.py [--trials 200] [--sleep 1.0]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
import optuna
import ray
from ray import tune

from unet_search.core.tags import TAG_KIND, TAG_SEARCH_ID, TAG_TRIAL_ID
from unet_search.distributed.trainer import init_ray
from unet_search.search.context import SearchContext
from unet_search.search.driver import _tuner
from unet_search.search.searcher import PruningAwareOptunaSearch
from unet_search.tracking.client import (
    create_run,
    ensure_experiment,
    log_metrics,
    open_child_run,
    resolve_tracking_uri,
)
from unet_search.tracking.read import find_child_runs

SPACE = {
    "name": "bookkeeping",
    "fixed": {"patch_size": 32, "patches_per_epoch": 8, "epochs": 1},
    "params": {
        "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
        "base_filters": {"type": "choice", "values": [8, 16, 32]},
        "dropout": {"type": "uniform", "low": 0.0, "high": 0.3},
    },
    "search": {"baseline": "none", "scheduler": {"type": "fifo"}},
}


def plain_trial(config: dict[str, Any], sleep: float) -> None:
    time.sleep(sleep)
    tune.report({"score": float(config["x"])})


def search_trial(config: dict[str, Any], ctx: SearchContext, sleep: float) -> None:
    """What trial_main does around training: open the trial's MLflow run, log, report."""
    trial_id = tune.get_context().get_trial_id()
    run_id = open_child_run(
        ctx.tracking_uri,
        ctx.experiment_id,
        ctx.parent_run_id,
        name=f"t{trial_id}",
        params=config,
        tags={TAG_SEARCH_ID: ctx.search_id, TAG_TRIAL_ID: trial_id},
    )
    time.sleep(sleep)
    value = float(config.get("dropout", 0.1))
    metrics = {"val_dice": value, "best_val_dice": value, "epoch": 1.0, "finished": 1.0}
    log_metrics(ctx.tracking_uri, run_id, metrics, step=1)
    tune.report(metrics)


def run_plain(trials: int, sleep: float, cpus: int, storage: str) -> float:
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(plain_trial, sleep=sleep), {"cpu": 1}),
        param_space={"x": tune.uniform(0, 1)},
        tune_config=tune.TuneConfig(
            num_samples=trials, max_concurrent_trials=cpus, reuse_actors=True
        ),
        run_config=tune.RunConfig(name="plain", storage_path=storage, verbose=0),
    )
    start = time.perf_counter()
    tuner.fit()
    return time.perf_counter() - start


def run_search_like(trials: int, sleep: float, cpus: int, work: Path) -> float:
    spec = _common.space({**SPACE, "search": {**SPACE["search"], "num_samples": trials}})
    uri = resolve_tracking_uri(work)
    experiment = ensure_experiment(uri, spec.name, work)
    search_id = f"bookkeeping-{int(time.time())}"
    parent = create_run(
        uri,
        experiment,
        search_id,
        {},
        {TAG_SEARCH_ID: search_id, TAG_KIND: "search"},
    )
    ctx = SearchContext(spec, search_id, uri, experiment, parent, str(work / "ray"), "-", "-")
    searcher = PruningAwareOptunaSearch(
        space=spec.define_by_run,
        metric=spec.tune_metric,
        mode=spec.settings.mode,
        sampler=optuna.samplers.TPESampler(seed=0),
    )
    trainable = tune.with_resources(
        tune.with_parameters(search_trial, ctx=ctx, sleep=sleep), {"cpu": 1}
    )
    tuner = _tuner(ctx, trainable, cpus, searcher)
    start = time.perf_counter()
    tuner.fit()
    elapsed = time.perf_counter() - start
    runs = find_child_runs(uri, experiment, search_id)
    assert len(runs) == trials, f"{len(runs)} MLflow runs for {trials} trials"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--sleep", type=float, default=1.0)
    args = parser.parse_args()
    _common.header(f"bookkeeping: {args.trials} trivial trials of {args.sleep:g} s")
    init_ray()
    cpus = int(ray.cluster_resources()["CPU"])
    minimum = math.ceil(args.trials / cpus) * args.sleep
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["UNET_SEARCH_HOME"] = tmp
        plain = run_plain(args.trials, args.sleep, cpus, str(Path(tmp) / "ray"))
        ours = run_search_like(args.trials, args.sleep, cpus, Path(tmp))
    print(
        f"theoretical minimum {minimum:.0f} s ({cpus} at once); plain Tune {plain:.0f} s; "
        f"unet-search bookkeeping {ours:.0f} s"
    )
    print(f"plain Tune / minimum: {plain / minimum:.3f}")
    _common.verdict("unet-search / minimum", ours / minimum, "<= 1.3", ours <= 1.3 * minimum)


if __name__ == "__main__":
    main()
