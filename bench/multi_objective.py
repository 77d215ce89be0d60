"""Benchmark 15, several objectives: the front of Dice against latency a two-objective search
(``objectives: [val_dice, inference_ms]``: multi-objective TPE + MO-ASHA) finds, against the
one a single-objective search (``metric: val_dice``, TPE + ASHA) of the same trials, epochs
and space happens to find. Every trial of both measures ``inference_ms`` (one 256-px image
through the predictor, 2 threads) before its first epoch, so both fronts are of the same
numbers. Reported: each front's hypervolume in (Dice, -ms) above the reference point (Dice 0,
the slowest trial of both searches), and MO / single (target > 1: the search that is asked
for the trade-off covers more of it); seeds in turn.

    python bench/multi_objective.py [--seeds 0 1 2] [--trials 12]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import _common

from unet_search.distributed.trainer import init_ray
from unet_search.search.pareto import hypervolume


def space(name: str, seed: int, trials: int, objectives: bool) -> dict[str, Any]:
    search: dict[str, Any] = {
        "num_samples": trials,
        "seed": seed,
        "baseline": "none",
        "default_trial": False,
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "latency_image": 256,
        "onnx": False,
        "champion_must_beat_otsu": False,
    }
    if objectives:
        search["objectives"] = [{"metric": "val_dice"}, {"metric": "inference_ms"}]
    return {
        "name": name,
        "fixed": {
            **{"patch_size": 64, "patches_per_epoch": 64, "batch_size": 8, "epochs": 4},
            **{"val_fraction": 0.25, "dsb_every": 0, "num_sample_images": 0},
        },
        "params": {
            "depth": {"type": "int", "low": 2, "high": 4},
            "base_filters": {"type": "choice", "values": [8, 16, 32, 64]},
            "lr": {"type": "loguniform", "low": 1.0e-3, "high": 1.0e-2},
        },
        "search": search,
    }


def points(outcome: Any) -> list[tuple[float, float]]:
    """(Dice, ms) of every finished trial: the kept weights' Dice, the untrained latency."""
    from mlflow.tracking import MlflowClient

    from unet_search.tracking.client import resolve_tracking_uri

    client = MlflowClient(resolve_tracking_uri(Path(os.environ["UNET_SEARCH_HOME"])))
    out = []
    for t in outcome.trials:
        if t.status == "FINISHED" and t.run_id and t.value is not None:
            ms = client.get_run(t.run_id).data.metrics.get("inference_ms")
            if ms is not None:
                out.append((float(t.value), float(ms)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=12)
    args = parser.parse_args()
    _common.header(f"bench 15: two-objective vs single-objective search, {args.trials} trials")
    init_ray()
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "home"
        work.mkdir()
        os.environ["UNET_SEARCH_HOME"] = str(work)
        data = _common.synthetic(Path(tmp), 48, 128)
        for seed in args.seeds:
            fronts = {}
            for kind, multi in (("single", False), ("mo", True)):
                raw = space(f"{kind}{seed}", seed, args.trials, multi)
                fronts[kind] = points(_common.search(raw, data, work))
            slowest = max(ms for pts in fronts.values() for _, ms in pts)
            reference = (0.0, -1.05 * slowest)
            volume = {
                kind: hypervolume([(d, -ms) for d, ms in pts], reference)
                for kind, pts in fronts.items()
            }
            ratio = volume["mo"] / volume["single"] if volume["single"] else float("inf")
            ratios.append(ratio)
            for kind, pts in fronts.items():
                shown = ", ".join(f"{d:.3f}@{ms:.0f}ms" for d, ms in sorted(pts))
                print(f"seed {seed} {kind}: {len(pts)} finished: {shown}", flush=True)
            print(
                f"seed {seed}: hypervolume MO {volume['mo']:.2f}, single {volume['single']:.2f}, "
                f"MO / single {ratio:.3f}",
                flush=True,
            )
    median = statistics.median(ratios)
    _common.verdict("hypervolume, two objectives / one (median)", median, "> 1", median > 1)


if __name__ == "__main__":
    main()
