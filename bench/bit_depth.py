"""Benchmark 16, bit depth: does a 16-bit image keep what its bits hold? One real set whose
images are 16-bit (``shared/realdata/mnfinder_nuclei.py OUT --raw``: nuclei, the package's
own files: 16-bit for the RPE-1 and U2OS images, 8-bit for the others), in four forms, each
trained the same way (the planned default of quick.yaml,
``--epochs`` of the planned patches: bench 12's ``default`` arm, a real search of one trial)
and scored on its held-out images through ``predict`` (Dice, DSB score; Otsu beside them):

- ``16-bit``: the files as shipped (what unet-search now reads: every level kept, each
  image by its percentiles, the plan's choice for images deeper than 8 bits);
- ``16-bit / 257``: the 16-bit values divided by 257 into 8 bits, the 8-bit images as they
  are (what the decoder did before: a 14-bit camera's 800..9600 become 3..37);
- ``8-bit stretched``: each image stretched between its 0.5th and 99.8th percentile into 8
  bits (what the set's builder writes without ``--raw``: the best 8-bit copy);
- ``8-bit in 16-bit``: the stretched 8-bit values stored in a 16-bit TIFF (the 2018 Data
  Science Bowl's nuclei TIFF; before: black after the division by 257).

    python bench/bit_depth.py --data OUT [--epochs 24] [--seed 0] [--forms 16-bit ...]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import _common
import numpy as np
import tifffile
from equal_compute import arms, run_arm

from unet_search.data.decode import read_image


def _stretched(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, [0.5, 99.8])
    return np.round(np.clip((image - low) / max(high - low, 1), 0, 1) * 255).astype(np.uint8)


FORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "16-bit": lambda image: image,
    "16-bit / 257": lambda image: (
        np.round(image / 257.0).astype(np.uint8) if image.dtype == np.uint16 else image
    ),
    "8-bit stretched": _stretched,
    "8-bit in 16-bit": lambda image: _stretched(image).astype(np.uint16),
}


def _copy(src: Path, dst: Path, form: Callable[[np.ndarray], np.ndarray]) -> None:
    """``src`` (a real set: train/ in the DSB2018 layout, heldout/) with every image as
    ``form`` makes it, written as a TIFF (any type) in place of the PNG."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.part"))
    for path in [*dst.glob("train/*/images/*.png"), *dst.glob("heldout/images/*.png")]:
        image = read_image(path)[..., 0]
        tifffile.imwrite(path.with_suffix(".tif"), form(image))
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a real set of 16-bit images")
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--forms", nargs="+", default=list(FORMS), choices=list(FORMS))
    args = parser.parse_args()
    _common.real_set(args.data)
    _common.header(f"bit depth: {args.data.name}, the planned default at {args.epochs} epochs")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.forms:
            data = Path(tmp) / name.replace(" ", "_").replace("/", "over")
            _copy(args.data, data, FORMS[name])
            kinds = {read_image(p).dtype.name for p in data.glob("train/*/images/*.tif")}
            kind = " and ".join(sorted(kinds))
            home = data / "home"
            run = run_arm(data / "train", arms(args.epochs)["default"], args.seed, home)
            from unet_search.tracking.client import resolve_tracking_uri

            scores = _common.score_heldout(
                run["model"], data / "heldout", resolve_tracking_uri(home)
            )
            rows.append((name, kind, scores, run))
            print(
                f"{name:16s} {kind}: held-out Dice {scores['dice']:.4f} DSB "
                f"{scores.get('dsb', float('nan')):.4f} Otsu {scores['otsu']:.4f} "
                f"({run['seconds']:.0f} s)",
                flush=True,
            )
    print("\n| form | type | held-out Dice | DSB | Otsu |")
    print("|---|---|---|---|---|")
    for name, kind, scores, _ in rows:
        print(
            f"| {name} | {kind} | {scores['dice']:.4f} | {scores.get('dsb', float('nan')):.4f} "
            f"| {scores['otsu']:.4f} |"
        )


if __name__ == "__main__":
    main()
