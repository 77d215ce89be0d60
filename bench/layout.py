"""The package in subpackages with pydantic settings (issue 16) against the flat layout before
it, side by side: what a Ray worker and the CLI pay to import, building run configs, reading a
search space, and training steps of the same model on the same data.

Each side runs in fresh processes, in turn: ``before`` from a git worktree of ``--before``
(default 16a26c8, the last flat-layout commit), ``after`` from this checkout. Ratios are
after / before (1.0: no change; below 1: faster now).

    .venv/bin/python bench/layout.py [--before REV] [--repeats 5]

A ``--before`` that already has the subpackages (e.g. 8e8ad2d, the last commit before issue 25's
typed hand-offs) runs the same module names on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import ROOT, header

# The same work, spelled in each layout's module names.
IMPORT_WORKER = {
    "before": "import unet_search.worker",
    "after": "import unet_search.distributed.recipe, unet_search.distributed.trainer",
}
IMPORT_CLI = {"before": "import unet_search.cli", "after": "import unet_search.cli"}
CONFIGS = {
    "before": "from unet_search.config import RunConfig",
    "after": "from unet_search.core.config import RunConfig",
}
SPACE = {
    "before": "from unet_search.spaces import load_space",
    "after": "from unet_search.space.load import load_space",
}
TRAIN = {
    "before": (
        "from unet_search.config import RunConfig\n"
        "from unet_search.data import load_dataset\n"
        "from unet_search.engine import build_loaders, fit, new_training_state, seed_everything\n"
        "from unet_search.losses import build_loss\n"
        "from unet_search.models import build_model\n"
    ),
    "after": (
        "from unet_search.core.config import RunConfig\n"
        "from unet_search.data.dataset import load_dataset\n"
        "from unet_search.train.engine import build_loaders, fit, new_training_state, "
        "seed_everything\n"
        "from unet_search.train.losses import build_loss\n"
        "from unet_search.models.build import build_model\n"
    ),
}

TIMED = """
import json, time
t0 = time.perf_counter()
{imports}
t1 = time.perf_counter()
{body}
print(json.dumps({{"import_s": t1 - t0, "body_s": time.perf_counter() - t1}}))
"""
BUILD_CONFIGS = """
for i in range(3000):
    RunConfig.from_dict({"depth": 2 + i % 3, "epochs": 5, "lr": 1e-3 * (1 + i % 7)})
"""
LOAD_SPACE = "load_space(SPACE_FILE)"
FIT = """
import torch
torch.set_num_threads(2)
cfg = RunConfig.from_dict({"depth": 3, "base_filters": 8, "patch_size": 64,
                           "patches_per_epoch": 256, "epochs": 2, "dsb_every": 0,
                           "samples_every": 0, "val_fraction": 0.25})
arrays = load_dataset(DATA, cfg.data)
seed_everything(0)
train, val = build_loaders(cfg, arrays, rank=0, world=1)
cpu = torch.device("cpu")
state = new_training_state(build_model(cfg.model, 1), cfg, len(train), cpu)
fit(state, cfg, train, val, build_loss(cfg.loss), cpu)
"""


def _run(tree: Path, code: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run(  # run from the tree: `python -c` puts the current folder first
        [sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True
    )
    if out.returncode:
        raise SystemExit(f"{tree}: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", default="16a26c8")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    header(f"layout: this checkout against {args.before}, {args.repeats} rounds")
    work = Path(tempfile.mkdtemp(prefix="bench-layout-"))
    old = work / "before"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(old), args.before],
        check=True,
    )
    try:
        from _common import synthetic

        data = synthetic(work, n=16, size=96)
        space = "@TREE@/search_spaces/full.yaml"
        trees = {"before": old, "after": ROOT}
        # A --before from after the subpackages (e.g. 8e8ad2d, before issue 25) is spelled
        # in today's module names.
        names = {"before": "after" if (old / "unet_search" / "core").is_dir() else "before"}
        names["after"] = "after"
        jobs = {
            "worker import": (IMPORT_WORKER, "pass", "import_s"),
            "CLI import": (IMPORT_CLI, "pass", "import_s"),
            "3000 run configs": (CONFIGS, BUILD_CONFIGS, "body_s"),
            # each side reads its own full.yaml (a newer one may have keys the older lacks)
            "load full.yaml": (SPACE, f"SPACE_FILE = {space!r}\n" + LOAD_SPACE, "body_s"),
            "2 training epochs": (TRAIN, f"DATA = {str(data)!r}\n" + FIT, "body_s"),
        }
        for name, (imports, body, measure) in jobs.items():
            times: dict[str, list[float]] = {"before": [], "after": []}
            for _ in range(args.repeats):
                for side, tree in trees.items():
                    code = TIMED.format(
                        imports=imports[names[side]], body=body.replace("@TREE@", str(tree))
                    )
                    times[side].append(_run(tree, code)[measure])
            before, after = (statistics.median(times[s]) for s in ("before", "after"))
            print(
                f"{name:>18}: before {before:.3f} s, after {after:.3f} s, "
                f"after / before {after / before:.3f}",
                flush=True,
            )
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)])


if __name__ == "__main__":
    main()
