"""Benchmark 2, per-trial fixed cost: seconds from a trial's start (Tune starts it) to its
first training step, and the machine memory a running trial takes, for an in-process trial
(1 worker) and a TorchTrainer trial (2 DDP workers). Targets: in-process <= 5 s,
TorchTrainer <= 10 s.

The trials train 2 epochs of 8 images at 32 px: everything between the start and the first
result (epoch 1, not yet the final one) but the epoch itself (``epoch_s``) is fixed cost.
Memory: the peak, while the trial runs, of the proportional set size (PSS: shared pages split
between their users) summed over Ray's worker processes, over that sum just before.

    python bench/trial_cost.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _common
import yaml
from ray import tune

from unet_search.data import load_dataset
from unet_search.search import run_search
from unet_search.spaces import load_space
from unet_search.worker import init_ray

FIXED = {
    "image_size": 32,
    "depth": 2,
    "base_filters": 8,
    "epochs": 2,
    "batch_size": 4,
    "val_fraction": 0.5,
    "dsb_every": 0,
    "num_sample_images": 0,
    "loader_workers": 0,
}
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
    """PSS summed over Ray's worker and actor processes (``ray::...``), MiB (Linux /proc)."""
    total_kib = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if not (proc / "cmdline").read_bytes().startswith(b"ray::"):
                continue
            for line in (proc / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kib += int(line.split()[1])
    return total_kib / 1024


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
) -> tuple[float, float]:
    space = work / f"{name}.yaml"
    space.parent.mkdir(parents=True, exist_ok=True)
    space.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "fixed": {**FIXED, **resources},
                "params": {},
                "search": {"num_samples": 1, "baseline": "none", "scheduler": {"type": "fifo"}},
            }
        )
    )
    spec = load_space(space)
    arrays = load_dataset(data, spec.base_config().data)
    timer = FirstResult()
    watch = MemoryWatch()
    run_search(spec, arrays, data, work, callbacks=[timer])
    memory = watch.peak_mib()
    (trial_id,) = timer.first
    first, epoch_s = timer.first[trial_id]
    return first - timer.start[trial_id] - epoch_s, memory


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    _common.header("per-trial fixed cost: trial start -> first training step, memory")
    init_ray()
    with tempfile.TemporaryDirectory() as tmp:
        data = _common.synthetic(Path(tmp), 16, 32)
        os.environ["UNET_SEARCH_HOME"] = str(Path(tmp) / "home")
        results: dict[str, list[tuple[float, float]]] = {kind: [] for kind in KINDS}
        for i in range(args.repeats + 1):  # the first round warms Ray's worker pool up
            for kind, resources in KINDS.items():
                name = f"cost-{len(results[kind])}-{i}-{list(KINDS).index(kind)}"
                seconds, memory = one_search(data, Path(tmp) / "home", name, resources)
                print(
                    f"{'(warm-up) ' if i == 0 else ''}{kind}: {seconds:.1f} s, {memory:.0f} MiB",
                    flush=True,
                )
                if i:
                    results[kind].append((seconds, memory))
    for kind, target in zip(KINDS, (5.0, 10.0), strict=True):
        seconds = statistics.median(s for s, _ in results[kind])
        memory = statistics.median(m for _, m in results[kind])
        _common.verdict(
            f"{kind}: start -> first step, s", seconds, f"<= {target:g}", seconds <= target
        )
        print(f"{kind}: memory while running {memory:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
