"""Benchmark 9, memory: what a search's trial processes hold with a dataset 10 times larger.

The same search (2 trials in turn, 1 epoch of 16 patches, a tiny UNet) runs on N images and
on 10 N images of the same size. The dataset sits once in Ray's object store; each trial
reads zero-copy views of it (patches are cut from those views, validation images are read
whole one at a time). So a trial process's private memory (USS) should barely grow with the
dataset; its PSS grows by its share of the object store's pages it touched. Printed: per
search the peak USS and PSS of the largest trial process, and the driver's RSS (it decoded
the dataset); the verdict is the USS ratio (target: well under 10x; 1 means no copy).

    python bench/memory.py [--n 40] [--size 384]

With ``--cached FOLDER ...`` it measures instead what each dataset's decoded images take
(arrays and the cache file, per image and per pixel), beside what the same images took when
every image was decoded to 8-bit RGB (3 bytes a pixel): a grey image now takes one channel,
a 16-bit one two bytes.

    python bench/memory.py --cached DATA [DATA ...]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import threading
from pathlib import Path

import _common

from unet_search.data.synthetic import make_synthetic

FIXED = {
    "patch_size": 64,
    "patches_per_epoch": 16,
    "depth": 3,
    "base_filters": 8,
    "epochs": 1,
    "batch_size": 8,
    "val_fraction": 0.2,
    "val_max_images": 8,
    "dsb_every": 0,
    "num_sample_images": 0,
    "num_workers": 1,
    "cpus_per_worker": 1,
}


class PeakPerProcess:
    """Polls Ray's processes; the peak USS and PSS of any one of them, KiB."""

    def __init__(self) -> None:
        self.uss = self.pss = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            for mem in _common.ray_processes_kib().values():
                self.uss, self.pss = max(self.uss, mem["uss"]), max(self.pss, mem["pss"])

    def done(self) -> tuple[float, float]:
        self.stop.set()
        self.thread.join()
        return self.uss / 1024, self.pss / 1024


def one_search(data: Path, work: Path, name: str) -> tuple[float, float]:
    raw = {
        "name": name,
        "fixed": FIXED,
        "params": {"lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}},
        "search": {
            "num_samples": 2,
            "baseline": "none",
            "max_concurrent_trials": 1,
            "scheduler": {"type": "fifo"},
        },
    }
    watch = PeakPerProcess()
    out = _common.search(raw, data, work)
    assert all(t.status == "FINISHED" for t in out.trials), out.trials
    return watch.done()


def cached(folders: list[Path]) -> None:
    """What each dataset's decoded images take: arrays and cache file, against 8-bit RGB."""
    from unet_search.core.sections import DataConfig
    from unet_search.data.dataset import load_dataset

    _common.header("memory: the decoded images of each dataset, per image")
    print("| data | images | pixels | type | bytes / pixel | MiB an image (was) | cache MiB |")
    print("|---|---|---|---|---|---|---|")
    for folder in folders:
        with tempfile.TemporaryDirectory() as tmp:
            arrays = load_dataset(folder, DataConfig(), Path(tmp))
            (cache,) = Path(tmp).glob("*.npz")
            pixels, n = len(arrays.pixels), len(arrays)
            per_pixel = arrays.pixels.nbytes / pixels
            name = folder.parent.name if folder.name == "train" else folder.name
            print(
                f"| {name} | {n} | {pixels / 1e6:.1f} M | {arrays.summary.pixels} | "
                f"{per_pixel:g} (was 3) | {arrays.pixels.nbytes / n / 2**20:.2f} "
                f"({3 * pixels / n / 2**20:.2f}) | {cache.stat().st_size / 2**20:.1f} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=40, help="images of the small dataset")
    parser.add_argument("--size", type=int, default=384, help="image side, px")
    parser.add_argument("--cached", type=Path, nargs="+", help="datasets whose images to weigh")
    args = parser.parse_args()
    if args.cached:
        cached(args.cached)
        return
    _common.header("memory: trial processes with a 10x larger dataset")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sizes = {"1x": args.n, "10x": 10 * args.n}
        peaks = {}
        for label, n in sizes.items():
            data = root / label
            make_synthetic(data, n=n, size=args.size, seed=0, object_px=12, style="fluorescence")
            megabytes = n * args.size**2 * 6 / 2**20  # RGB + mask + uint16 instances
            peaks[label] = one_search(data, root / "work", f"mem{label}")
            driver = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            uss, pss = peaks[label]
            print(
                f"{label}: {n} images of {args.size} px ({megabytes:.0f} MiB of arrays): "
                f"largest trial process USS {uss:.0f} MiB, PSS {pss:.0f} MiB; "
                f"driver peak RSS so far {driver:.0f} MiB",
                flush=True,
            )
        ratio = peaks["10x"][0] / peaks["1x"][0]
        _common.verdict("trial USS, 10x data / 1x data", ratio, "<< 10 (1: no copy)", ratio < 2)


if __name__ == "__main__":
    main()
