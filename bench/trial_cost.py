"""Benchmark 2, per-trial fixed cost: seconds from a trial's start (Tune starts it) to its
first training step, and the memory a search's trials take, for in-process trials (1 worker)
and TorchTrainer trials (2 DDP workers). Targets: in-process <= 5 s, TorchTrainer <= 10 s.

Each search runs 3 trials one after the other: the first starts a trial process, the later
ones reuse it (as every search does, ``reuse_actors``); both figures are printed, the target
is checked on the later ones. The trials train 2 epochs of 8 images at 32 px: everything
between the start and the first result (epoch 1, not yet the final one) but the epoch itself
(``epoch_s``) is fixed cost. Memory: the peak, during the search, of the proportional set
size (PSS: shared pages split between their users) summed over Ray's worker processes, over
that sum just before.

    python bench/trial_cost.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _common
from ray import tune

from unet_search.distributed.trainer import init_ray

FIXED = {
    "patch_size": 32,
    "patches_per_epoch": 8,
    "depth": 2,
    "base_filters": 8,
    "epochs": 2,
    "batch_size": 4,
    "val_fraction": 0.5,
    "dsb_every": 0,
    "num_sample_images": 0,
    "loader_workers": 0,
}
TRIALS = 3  # per search, one at a time: the first starts a process, the others reuse it
KINDS = {
    "in-process (1 worker)": {"num_workers": 1, "cpus_per_worker": 1},
    "TorchTrainer (2 DDP workers)": {"num_workers": 2, "cpus_per_worker": 1},
}


class FirstResult(tune.Callback):
    """Driver side: when Tune started each trial, and when its first result came."""

    def __init__(self) -> None:
        self.start: dict[str, float] = {}
        self.first: dict[str, tuple[float, float]] = {}

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.start.setdefault(trial.trial_id, time.time())

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        self.first.setdefault(trial.trial_id, (time.time(), float(result.get("epoch_s", 0.0))))


def _ray_workers_pss_mib() -> float:
    """PSS summed over Ray's worker and actor processes, MiB."""
    return sum(m["pss"] for m in _common.ray_processes_kib().values()) / 1024


class MemoryWatch:
    def __init__(self) -> None:
        self.base = _ray_workers_pss_mib()
        self.high = self.base
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.25):
            self.high = max(self.high, _ray_workers_pss_mib())

    def peak_mib(self) -> float:
        self.stop.set()
        self.thread.join()
        return self.high - self.base


def one_search(
    data: Path, work: Path, name: str, resources: dict[str, Any]
) -> tuple[list[float], float]:
    """A search of TRIALS trials one after the other: each trial's start -> first step, and
    the peak memory of the search's Ray processes over what they held before it."""
    settings = {"num_samples": TRIALS, "max_concurrent_trials": 1, "baseline": "none"}
    raw = {
        "name": name,
        "fixed": {**FIXED, **resources},
        "params": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
        "search": {**settings, "scheduler": {"type": "fifo"}},
    }
    timer = FirstResult()
    watch = MemoryWatch()
    _common.search(raw, data, work, callbacks=[timer])
    memory = watch.peak_mib()
    order = sorted(timer.start, key=timer.start.__getitem__)
    costs = [timer.first[t][0] - timer.start[t] - timer.first[t][1] for t in order]
    return costs, memory


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    _common.header("per-trial fixed cost: trial start -> first training step, memory")
    init_ray()
    results: dict[str, list[tuple[list[float], float]]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory() as tmp:
        data = _common.synthetic(Path(tmp), 16, 32)
        os.environ["UNET_SEARCH_HOME"] = str(Path(tmp) / "home")
        for i in range(args.repeats):
            for k, (kind, resources) in enumerate(KINDS.items()):
                costs, memory = one_search(data, Path(tmp) / "home", f"cost-{i}-{k}", resources)
                print(
                    f"{kind}: " + ", ".join(f"{c:.1f}" for c in costs) + f" s; {memory:.0f} MiB",
                    flush=True,
                )
                results[kind].append((costs, memory))
    for kind, target in zip(KINDS, (5.0, 10.0), strict=True):
        first = statistics.median(costs[0] for costs, _ in results[kind])
        reused = statistics.median(c for costs, _ in results[kind] for c in costs[1:])
        memory = statistics.median(m for _, m in results[kind])
        print(f"{kind}: first trial of a search (a new process) {first:.1f} s", flush=True)
        _common.verdict(
            f"{kind}: start -> first step, later trials, s",
            reused,
            f"<= {target:g}",
            reused <= target,
        )
        print(f"{kind}: peak memory of the search's Ray processes {memory:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
