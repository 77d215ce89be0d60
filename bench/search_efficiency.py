"""Benchmark 3, search efficiency on the synthetic dataset: TPE + ASHA against random search
with no early stopping, the same budget of training epochs, several seeds.

- (a) epochs TPE + ASHA needs to reach the best val_dice random search reaches with its whole
  budget, over the epochs random search needs for it (target <= 0.33);
- (b) 16 trials of TPE + ASHA: total epochs over 16 x max_t (target <= 0.4), for ASHA with
  promotions (``asha``, the default) and Tune's stopping rule (``asha_stopping``) side by side;
- (c) the best val_dice of each at equal budget.

Both run the real search (in-process trials, the quick space's parameters at 32 px, no
baseline trial). Random search: 16 trials x max_t epochs = the budget. TPE + ASHA: up to
3 x 16 trials (ASHA trains about a third of each), cut when the budget is spent (a stopper
counts every epoch any trial trains). Epochs are counted in the order the driver receives
them.

    python bench/search_efficiency.py [--seeds 0 1 2] [--max-t 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import _common
import yaml
from ray import tune

from unet_search.distributed.trainer import init_ray

ROOT = Path(__file__).resolve().parents[1]
TRIALS = 16


class EpochLog(tune.Callback):
    """Every result in arrival order: (epochs trained so far by all trials, val_dice)."""

    def __init__(self) -> None:
        self.points: list[tuple[int, float]] = []

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        self.points.append((len(self.points) + 1, float(result["val_dice"])))

    def best(self) -> float:
        return max(v for _, v in self.points)

    def epochs_to_reach(self, target: float) -> int | None:
        return next((n for n, v in self.points if v >= target - 1e-9), None)


class EpochBudget(tune.Stopper):
    def __init__(self, log: EpochLog, budget: int) -> None:
        self.log, self.budget = log, budget

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return len(self.log.points) >= self.budget


def space(
    name: str,
    sampler: str,
    scheduler: dict[str, Any],
    samples: int,
    seed: int,
    max_t: int,
) -> dict[str, Any]:
    raw = yaml.safe_load((ROOT / "search_spaces" / "quick.yaml").read_text())
    raw["name"] = name
    raw["fixed"].update(
        {
            "patch_size": 32,
            "patches_per_epoch": 16,
            "image_size": 32,
            "epochs": max_t,
            "dsb_every": 0,
            "num_sample_images": 0,
            "batch_size": 8,
            "val_fraction": 0.25,
        }
    )
    raw["search"].update(
        {
            "num_samples": samples,
            "seed": seed,
            "baseline": "none",
            "sampler": sampler,
            "scheduler": scheduler,
        }
    )
    return raw


def search(data: Path, work: Path, raw: dict[str, Any], budget: int | None) -> EpochLog:
    log = EpochLog()
    stopper = EpochBudget(log, budget) if budget else None
    _common.search(raw, data, work, callbacks=[log], stopper=stopper)
    return log


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-t", type=int, default=6)
    args = parser.parse_args()
    budget = TRIALS * args.max_t
    _common.header(f"search efficiency: TPE+ASHA vs random, budget {budget} epochs")
    init_ray()
    asha = {"type": "asha", "grace_period": 1, "reduction_factor": 3}
    stopping = {**asha, "type": "asha_stopping"}
    ratios, fractions, stopping_fractions, bests = [], [], [], []
    needs: list[int] = []  # epochs random search needed for its own best
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "home"
        work.mkdir()
        os.environ["UNET_SEARCH_HOME"] = str(work)
        data = _common.synthetic(Path(tmp), 96, 48)
        for seed in args.seeds:
            random = search(
                data,
                work,
                space(f"rnd{seed}", "random", {"type": "fifo"}, TRIALS, seed, args.max_t),
                None,
            )
            tpe = search(
                data,
                work,
                space(f"tpe{seed}", "tpe", asha, 3 * TRIALS, seed, args.max_t),
                budget,
            )
            tpe16 = search(
                data,
                work,
                space(f"tpe16s{seed}", "tpe", asha, TRIALS, seed, args.max_t),
                None,
            )
            tpe16_stopping = search(
                data,
                work,
                space(f"tpe16x{seed}", "tpe", stopping, TRIALS, seed, args.max_t),
                None,
            )
            target = random.best()
            need_random = random.epochs_to_reach(target) or budget
            need_tpe = tpe.epochs_to_reach(target)
            ratio = (need_tpe / need_random) if need_tpe else float("inf")
            fraction = len(tpe16.points) / budget
            ratios.append(ratio)
            needs.append(need_random)
            fractions.append(fraction)
            stopping_fractions.append(len(tpe16_stopping.points) / budget)
            bests.append((random.best(), tpe.best()))
            print(
                f"seed {seed}: random best {random.best():.4f} after {need_random} epochs; "
                f"TPE+ASHA reaches it after {need_tpe} epochs (ratio {ratio:.3f}), best "
                f"{tpe.best():.4f} in {len(tpe.points)} epochs; 16 TPE+ASHA trials used "
                f"{len(tpe16.points)} epochs ({fraction:.3f} of 16 x {args.max_t}; Tune's "
                f"stopping rule {stopping_fractions[-1]:.3f})",
                flush=True,
            )
    ratio = statistics.median(ratios)
    _common.verdict(
        "(a) epochs to random's best, TPE+ASHA / random (median)", ratio, "<= 0.33", ratio <= 0.33
    )
    print(
        "(a) the same over random's whole budget: "
        f"{statistics.median(r * n / budget for r, n in zip(ratios, needs, strict=True)):.3f}"
        " (median)"
    )
    fraction = statistics.median(fractions)
    _common.verdict("(b) ASHA epochs / (16 x max_t) (median)", fraction, "<= 0.4", fraction <= 0.4)
    print(
        "(b) the same with Tune's stopping rule (asha_stopping): "
        f"{statistics.median(stopping_fractions):.3f} (median)"
    )
    print(
        "(c) best val_dice at equal budget, random vs TPE+ASHA: "
        + ", ".join(f"{r:.4f} vs {t:.4f}" for r, t in bests)
    )


if __name__ == "__main__":
    main()
