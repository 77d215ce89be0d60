"""Shared helpers of the bench scripts: a machine line, a synthetic dataset, timing, memory.

Every script measures its sides interleaved in one run and prints ratios: absolute times on a
shared 2-core machine are noise, ratios of side-by-side runs are not."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def machine() -> str:
    """One line: CPUs, memory, GPU, torch/ray versions."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.node()}: {os.cpu_count()} CPUs, {mem:.0f} GiB, {gpu}; "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def header(title: str) -> None:
    print(f"# {title}\n# {time.strftime('%Y-%m-%d %H:%M')} {machine()}", flush=True)


def synthetic(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """A synthetic nuclei dataset (made once per root)."""
    from unet_search.data.synthetic import make_synthetic

    out = root / f"synth-{n}-{size}-{seed}"
    if not out.exists():
        make_synthetic(out, n=n, size=size, seed=seed)
    return out


def interleaved(
    sides: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Median seconds of each side, the sides run in turn ``repeats`` times (after
    ``warmup`` untimed rounds), so slow phases of a shared machine hit all of them."""
    for _ in range(warmup):
        for call in sides.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, call in sides.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def space(raw: dict[str, Any]) -> Any:
    """A search space given as a dict, validated as its YAML file would be (keys in order)."""
    import yaml

    from unet_search.space.load import load_space_text

    return load_space_text(yaml.safe_dump(raw, sort_keys=False), f"{raw['name']}.yaml")


def search(raw: dict[str, Any], data: Path, work: Path, **options: Any) -> Any:
    """The real search of space ``raw`` on ``data`` (work dir ``work``); ``options`` go to
    :func:`unet_search.finish.run.run_search` (callbacks, stopper)."""
    from unet_search.data.dataset import load_dataset
    from unet_search.finish.run import run_search

    spec = space(raw)
    arrays = load_dataset(data, spec.base_config().data)
    return run_search(spec, arrays, data, work, **options)


def verdict(name: str, value: float, target: str, ok: bool) -> None:
    print(f"{name}: {value:.3f} (target {target}) {'MET' if ok else 'MISSED'}", flush=True)


def ray_processes_kib() -> dict[int, dict[str, int]]:
    """Memory of each of Ray's worker and actor processes (``ray::...``), KiB from Linux's
    ``/proc/PID/smaps_rollup``: ``pss`` (shared pages split between their users) and ``uss``
    (private pages: what the process holds alone; the object store's shared pages are not)."""
    import contextlib

    out: dict[int, dict[str, int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if not (proc / "cmdline").read_bytes().startswith(b"ray::"):
                continue
            fields = {}
            for line in (proc / "smaps_rollup").read_text().splitlines():
                key, _, rest = line.partition(":")
                if key in ("Pss", "Private_Clean", "Private_Dirty"):
                    fields[key] = int(rest.split()[0])
            out[int(proc.name)] = {
                "pss": fields.get("Pss", 0),
                "uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
            }
    return out


def real_set(folder: Path) -> tuple[Path, Path]:
    """A set built by ``shared/realdata`` (``train/`` and ``heldout/``), or a clear exit."""
    train, heldout = folder / "train", folder / "heldout"
    if not (train.is_dir() and (heldout / "images").is_dir()):
        raise SystemExit(
            f"{folder}: not a real set (train/ and heldout/images/): build one with "
            "shared/realdata/<set>.py OUT"
        )
    return train, heldout


def score_heldout(
    model: str | Path, heldout: Path, tracking_uri: str | None = None
) -> dict[str, float]:
    """Held-out ``dice`` (mean per image, of the masks), ``dsb`` (mean per image, of the
    instances against ``labels/<id>.npy`` where the set has them) and ``otsu`` (Otsu's
    threshold's Dice) of ``model`` (a model URI or folder) through ``load_model().predict``,
    the images read from their files exactly as ``predict`` reads them."""
    import numpy as np

    from unet_search.data.decode import read_image
    from unet_search.serve.inference import load_model
    from unet_search.train.metrics import instance_scores, otsu_mask

    predictor = load_model(str(model), tracking_uri=tracking_uri)
    images = sorted(p for p in (heldout / "images").iterdir() if not p.name.startswith("."))
    dice, dsb, otsu = [], [], []

    def dice_of(pred: Any, truth: Any) -> float:
        total = pred.sum() + truth.sum()
        return 1.0 if total == 0 else float(2 * (pred & truth).sum() / total)

    for path in images:
        truth = np.asarray(read_image(heldout / "masks" / f"{path.stem}.png"))[..., 0] > 0
        mask, objects = predictor.predict_both([path])[0]
        dice.append(dice_of(mask > 0, truth))
        otsu.append(dice_of(otsu_mask(read_image(path)) > 0, truth))
        labels = heldout / "labels" / f"{path.stem}.npy"
        if labels.exists():
            dsb.append(instance_scores(objects, np.load(labels))[0])
    out = {"dice": float(np.mean(dice)), "otsu": float(np.mean(otsu))}
    return out | ({"dsb": float(np.mean(dsb))} if dsb else {})
