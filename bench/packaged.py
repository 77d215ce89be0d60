"""Benchmark 18, BioImage.IO: the registered package's masks against predict's, on real images
at their own pixel scale and bit depth.

Per set (a real set built by ``shared/realdata``, or a synthetic style): the planned default
(quick.yaml's trial 1, ``--epochs`` of the planned patches) searched alone and registered, as
``bench/equal_compute.py``'s default arm; its registered version carries the BioImage.IO
package (tested at registration). Every held-out image, whole and at its own size, is then
segmented (a) by ``predict`` (``load_model``) and (b) by the package run in bioimageio.core as
a tiling tool runs it: blocks of the package's sizes (``--blocks`` steps over its smallest),
its halo cropped, the threshold or arg-max on its probabilities. Printed per set: held-out Dice
of each against the truth, the share of pixels where the two masks agree, the package's
export-and-test seconds (registration's tag is not timed: the package is written again here,
timed) and its sizes.

    python bench/packaged.py [--data REAL_SET ...] [--styles fluorescence] [--epochs 12]
        [--blocks 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
import numpy as np
from equal_compute import arms, run_arm


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (pred & truth).sum() / total)


def _through_package(descr: Any, image: np.ndarray, blocks: int) -> np.ndarray:
    """The package's probabilities of ``image`` (H, W, C), as a tiling tool gets them: the
    image mirrored out at the bottom and right to a size its axes allow, tiled by
    bioimageio.core in blocks ``blocks`` steps over the smallest, cropped back."""
    from bioimageio.core import predict

    h, w = image.shape[:2]
    sides = {str(a.id): a.size for a in descr.inputs[0].axes if str(a.id) in ("y", "x")}

    def allowed(n: int, size: Any) -> int:
        low, step = getattr(size, "min", size), getattr(size, "step", 0)
        return low + (step * -(-max(0, n - low) // step) if step else 0)

    pad = ((0, allowed(h, sides["y"]) - h), (0, allowed(w, sides["x"]) - w), (0, 0))
    padded = np.pad(image, pad, mode="symmetric")
    sample = predict(
        model=descr, inputs=padded.transpose(2, 0, 1)[None], blocksize_parameter=blocks
    )
    return np.asarray(next(iter(sample.members.values())).data.values[0])[:, :h, :w]


def compare(model: str, heldout: Path, tracking_uri: str, blocks: int) -> dict[str, float]:
    """Held-out Dice through predict and through the registered package, and their
    agreement; the package written again and tested, timed."""
    from bioimageio.spec import load_model_description

    from unet_search.data.decode import read_image
    from unet_search.serve.bioimageio import write_package
    from unet_search.serve.bioimageio_files import PackageInfo
    from unet_search.serve.inference import load_model, resolve_model

    root, model_dir = resolve_model(model, tracking_uri)
    descr = load_model_description(root / "bioimageio" / "rdf.yaml", perform_io_checks=False)
    predictor = load_model(model, tracking_uri=tracking_uri)
    threshold = predictor.pre.threshold
    ours, theirs, agree = [], [], []
    for path in sorted(p for p in (heldout / "images").iterdir() if not p.name.startswith(".")):
        image = read_image(path)
        truth = np.asarray(read_image(heldout / "masks" / f"{path.stem}.png"))[..., 0] > 0
        mask = predictor.predict([image])[0] > 0
        p = _through_package(descr, image, blocks)
        # binary: the foreground above the threshold; an instance target: interior or boundary
        package = p[0] > threshold if p.shape[0] == 1 else p.argmax(axis=0) > 0
        ours.append(_dice(mask, truth))
        theirs.append(_dice(package, truth))
        agree.append(float((mask == package).mean()))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        image = read_image(next(iter(sorted((heldout / "images").iterdir()))))
        write_package(model_dir, Path(tmp) / "pkg", image, PackageInfo("bench"), "bench")
        seconds = time.perf_counter() - start
    sizes = [a for a in descr.inputs[0].axes if str(a.id) in ("y", "x")]
    return {
        "dice_predict": float(np.mean(ours)),
        "dice_package": float(np.mean(theirs)),
        "agree": float(np.mean(agree)),
        "agree_min": float(np.min(agree)),
        "write_s": seconds,
        "min": float(getattr(sizes[0].size, "min", sizes[0].size)),
        "step": float(getattr(sizes[0].size, "step", 0)),
        "images": float(len(ours)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="*", default=[])
    parser.add_argument("--styles", nargs="*", default=["fluorescence"])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--blocks", type=int, default=2)
    args = parser.parse_args()
    _common.header("18: BioImage.IO, the registered package against predict")
    from unet_search.data.synthetic import make_synthetic
    from unet_search.tracking.client import resolve_tracking_uri

    sets: list[tuple[str, Path, Path]] = []
    with tempfile.TemporaryDirectory(prefix="bench-bioimageio-") as tmp:
        root = Path(tmp)
        for style in args.styles:
            data = root / style
            make_synthetic(data / "train", n=30, size=200, max_size=320, seed=0, style=style)
            make_synthetic(data / "heldout_dsb", n=6, size=200, max_size=320, seed=9, style=style)
            sets.append((f"synthetic {style}", data / "train", _images_masks(data)))
        for folder in args.data:
            train, heldout = _common.real_set(folder)
            sets.append((folder.name, train, heldout))
        columns = ("images", "min / step", "Dice predict", "Dice package", "masks agree (min)")
        print("| set | " + " | ".join(columns) + " | write + test s |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, train, heldout in sets:
            home = root / f"home-{name.replace(' ', '-')}"
            arm = run_arm(train, arms(args.epochs)["default"], 0, home)
            row = compare(arm["model"], heldout, resolve_tracking_uri(home), args.blocks)
            print(
                f"| {name} | {row['images']:.0f} | {row['min']:.0f} / {row['step']:.0f} | "
                f"{row['dice_predict']:.4f} | {row['dice_package']:.4f} | "
                f"{row['agree']:.4f} ({row['agree_min']:.4f}) | {row['write_s']:.1f} |",
                flush=True,
            )


def _images_masks(data: Path) -> Path:
    """A synthetic held-out set (DSB2018 layout) in the images/masks layout real sets use."""
    from PIL import Image

    out = data / "heldout"
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    for item in sorted((data / "heldout_dsb").iterdir()):
        image = item / "images" / f"{item.name}.png"
        (out / "images" / image.name).write_bytes(image.read_bytes())
        masks = [np.asarray(Image.open(p)) > 0 for p in (item / "masks").iterdir()]
        union = np.any(masks, axis=0).astype(np.uint8) * 255
        Image.fromarray(union).save(out / "masks" / f"{item.name}.png")
    return out


if __name__ == "__main__":
    main()
