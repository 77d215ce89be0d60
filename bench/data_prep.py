"""Benchmark 4, data preparation: the wall time to prepare the data of a search of 8 trials
over the time for one trial's (target <= 1.5), as a search does it (decode once in the
driver, share through Ray's object store), side by side with decoding in every trial.

A trial's preparation = getting the arrays (object store, or decode from disk) + building its
loaders + its first training batch. Trials are Ray tasks with 1 CPU each, as in-process
trials are (on 2 cores: 2 at a time).

    python bench/data_prep.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import _common
import ray

from unet_search.core.config import RunConfig
from unet_search.data.dataset import load_dataset
from unet_search.distributed.trainer import init_ray
from unet_search.train.engine import build_loaders

N_IMAGES, SIZE, TRIALS = 200, 256, 8
CONFIG = {"patch_size": 128, "batch_size": 8, "val_fraction": 0.2, "loader_workers": 0}


def _first_batch(cfg: RunConfig, arrays: Any) -> None:
    train, _ = build_loaders(cfg, arrays, 0, 1)
    next(iter(train))


@ray.remote(num_cpus=1)
def trial_shared(raw: dict[str, Any], refs: list[ray.ObjectRef]) -> None:
    _first_batch(RunConfig.from_dict(raw), ray.get(refs[0]))


@ray.remote(num_cpus=1)
def trial_decoding(raw: dict[str, Any], root: str) -> None:
    cfg = RunConfig.from_dict(raw)
    _first_batch(cfg, load_dataset(Path(root), cfg.data))


def shared(root: Path, trials: int) -> None:
    cfg = RunConfig.from_dict(CONFIG)
    ref = ray.put(load_dataset(root, cfg.data))  # the search driver: decode once
    ray.get([trial_shared.remote(CONFIG, [ref]) for _ in range(trials)])
    del ref


def decoding(root: Path, trials: int) -> None:
    ray.get([trial_decoding.remote(CONFIG, str(root)) for _ in range(trials)])


def main() -> None:
    _common.header(
        f"data preparation: {TRIALS} trials vs 1 ({N_IMAGES} images {SIZE}px, 128-px patches)"
    )
    init_ray()
    with tempfile.TemporaryDirectory() as tmp:
        root = _common.synthetic(Path(tmp), N_IMAGES, SIZE)
        start = time.perf_counter()
        load_dataset(root, RunConfig.from_dict(CONFIG).data)
        print(f"decode alone (this process): {time.perf_counter() - start:.2f} s")
        t = _common.interleaved(
            {
                "one": lambda: shared(root, 1),
                "shared": lambda: shared(root, TRIALS),
                "decoding": lambda: decoding(root, TRIALS),
            },
            repeats=3,
        )
    print(
        f"one trial {t['one']:.2f} s, {TRIALS} shared {t['shared']:.2f} s, "
        f"{TRIALS} decoding each {t['decoding']:.2f} s"
    )
    ratio = t["shared"] / t["one"]
    _common.verdict(
        f"{TRIALS} trials / 1 trial, decode once + share", ratio, "<= 1.5", ratio <= 1.5
    )
    print(f"{TRIALS} trials / 1 trial, decode per trial: {t['decoding'] / t['one']:.3f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
