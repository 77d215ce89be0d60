"""The seeded train / val / test split and its names."""

from __future__ import annotations

from pathlib import Path

import pytest

from unet_search.core.errors import DataError
from unet_search.core.sections import DataConfig
from unet_search.data.split import split_indices, split_names


def test_split_is_deterministic_disjoint_and_complete() -> None:
    cfg = DataConfig(val_fraction=0.2, split_seed=3)
    train, val, test = split_indices(50, cfg)
    assert [part.tolist() for part in split_indices(50, cfg)] == [
        train.tolist(),
        val.tolist(),
        test.tolist(),
    ]
    # 50 images: 10% held out for the test by default, disjoint from train and val
    assert (len(train), len(val), len(test)) == (35, 10, 5)
    assert sorted([*train, *val, *test]) == list(range(50))
    # the test images do not depend on the validation split (a plan reads the same images)
    other_val = split_indices(50, cfg.with_values(val_fraction=0.3))
    assert other_val.test.tolist() == test.tolist() and len(other_val.val) == 15
    assert len(split_indices(50, cfg.with_values(test_fraction=0.0)).test) == 0
    assert split_indices(50, cfg.with_values(split_seed=4)).val.tolist() != val.tolist()
    # fewer than 20 images: no test split unless asked for
    assert len(split_indices(19, cfg).test) == 0
    assert len(split_indices(19, cfg.with_values(test_fraction=0.1)).test) == 2
    with pytest.raises(DataError, match=r"2 image\(s\) are too few .* test_fraction=0.4"):
        split_indices(2, cfg.with_values(val_fraction=0.4, test_fraction=0.4))


def test_the_test_split_is_named_in_split_json_order(tmp_path: Path) -> None:
    names = [f"img{i:02d}" for i in range(20)]
    cfg = DataConfig(val_fraction=0.2)
    parts = split_names(names, cfg)
    split = split_indices(20, cfg)
    assert parts == {
        "train": [names[i] for i in split.train],
        "val": [names[i] for i in split.val],
        "test": [names[i] for i in split.test],
    }
    assert (len(parts["val"]), len(parts["test"])) == (4, 2)
