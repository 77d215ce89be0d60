from __future__ import annotations

from pathlib import Path

import numpy as np

from unet_search.core.sections import DataConfig
from unet_search.data.dataset import load_dataset
from unet_search.data.scan import scan_dataset
from unet_search.data.synthetic import make_synthetic


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    make_synthetic(tmp_path / "a", n=2, size=32, seed=5)
    make_synthetic(tmp_path / "b", n=2, size=32, seed=5)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    assert files_a == files_b
    assert all(
        (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files_a
    )


def test_dsb_layout_with_many_instances(synth_dir: Path) -> None:
    index = scan_dataset(synth_dir)
    assert index.layout == "dsb2018" and len(index.samples) == 12
    assert min(len(s.masks) for s in index.samples) >= 3
    assert np.mean([len(s.masks) for s in index.samples]) >= 5


def test_global_threshold_does_not_solve_it(tmp_path: Path) -> None:
    make_synthetic(tmp_path / "s", n=16, size=64, seed=3)
    arrays = load_dataset(tmp_path / "s", DataConfig())
    grays = [arrays.image(i).mean(-1) for i in range(len(arrays))]
    truths = [arrays.mask(i) > 0 for i in range(len(arrays))]
    best = 0.0
    for t in range(0, 256, 4):
        for above in (True, False):
            dices = []
            for gray, truth in zip(grays, truths, strict=True):
                pred = gray > t if above else gray < t
                total = pred.sum() + truth.sum()
                dices.append(2 * (pred & truth).sum() / total if total else 1.0)
            best = max(best, float(np.mean(dices)))
    assert 0.2 < best < 0.65  # the learning test (test_engine) must beat 0.75


def test_three_classes_are_stained_apart_in_class_index_masks(tmp_path: Path) -> None:
    """`make-data synthetic --classes 3`: images/masks layout, masks 0/1/2, each nucleus one
    class, class 2 green (its red channel well below its green), class 1 grey."""
    make_synthetic(tmp_path / "m", n=3, size=48, seed=1, style="fluorescence", classes=3)
    arrays = load_dataset(tmp_path / "m", DataConfig(num_classes=3, val_fraction=0.34))
    assert scan_dataset(tmp_path / "m").layout == "images_masks"
    assert arrays.instances(0) is None  # class indices, no instances
    for i in range(3):
        image, mask = arrays.image(i).astype(float), arrays.mask(i)
        assert set(np.unique(mask)) == {0, 1, 2}
        grey, green = image[mask == 1], image[mask == 2]
        assert abs(grey[:, 0] - grey[:, 1]).mean() < 3
        assert (green[:, 0] < 0.6 * green[:, 1]).mean() > 0.9
