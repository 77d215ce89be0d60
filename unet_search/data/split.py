"""The seeded split of a dataset into train, validation and held-out test images. The test
images are drawn first, so they depend on the seed and ``test_fraction`` only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from unet_search.core.errors import DataError
from unet_search.core.sections import DataConfig

__all__ = [
    "DEFAULT_TEST_FRACTION",
    "MIN_IMAGES_FOR_TEST",
    "split_text",
    "test_fraction_of",
    "Split",
    "split_indices",
    "split_names",
]


# The held-out test split when `data.test_fraction` is not set: 10% of a dataset of at least
# 20 images (2 test images at the least), none of a smaller one.
DEFAULT_TEST_FRACTION, MIN_IMAGES_FOR_TEST = 0.1, 20


def split_text(cfg: DataConfig, n: int) -> str:
    """The split as one line (``val=0.2 test=0.1 seed=0``): how versions record it."""
    return f"val={cfg.val_fraction} test={test_fraction_of(n, cfg)} seed={cfg.split_seed}"


def test_fraction_of(n: int, cfg: DataConfig) -> float:
    """``data.test_fraction``, or when it is not set 0.1 for a dataset of at least 20
    images and 0 for a smaller one."""
    if cfg.test_fraction is not None:
        return cfg.test_fraction
    return DEFAULT_TEST_FRACTION if n >= MIN_IMAGES_FOR_TEST else 0.0


class Split(NamedTuple):
    """Sorted image indices of the three disjoint parts of a dataset."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_indices(n: int, cfg: DataConfig) -> Split:
    """The seeded (train, val, test) split of ``n`` images; train and val never empty (else
    DataError). The test images depend on the seed and ``test_fraction`` only, not on
    ``val_fraction``: a plan, which never reads them, is the same whatever the validation
    split."""
    test_fraction = test_fraction_of(n, cfg)
    n_val = max(1, round(n * cfg.val_fraction))
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    if n - n_val - n_test < 1:
        test = f" and test_fraction={test_fraction}" if n_test else ""
        one = " and one test image" if n_test else ""
        raise DataError(
            f"{n} image(s) are too few for val_fraction={cfg.val_fraction}{test}: need at "
            f"least one training and one validation image{one}."
        )
    order = np.random.default_rng(cfg.split_seed).permutation(n)
    return Split(
        np.sort(order[n_test + n_val :]),
        np.sort(order[n_test : n_test + n_val]),
        np.sort(order[:n_test]),
    )


def split_names(names: Sequence[str], cfg: DataConfig) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "test": [...]}``: the image ids (the DSB2018 folder
    name, or the file stem) of each part, as a search's ``split.json`` holds them."""
    split = split_indices(len(names), cfg)
    return {part: [names[int(i)] for i in split[k]] for k, part in enumerate(Split._fields)}
