"""Subcommands run in this process (``main``): what they say about the user's input before
anything starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unet_search.cli.app import main

ROOT = Path(__file__).parents[2]


def _tiny_images(folder: Path, sizes: list[tuple[int, int]]) -> Path:
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i, (h, w) in enumerate(sizes):
        image = np.zeros((h, w), np.uint8)
        image[: h // 2] = 200
        Image.fromarray(image).save(folder / "images" / f"i{i}.png")
        Image.fromarray(np.where(image > 0, 255, 0).astype(np.uint8)).save(
            folder / "masks" / f"i{i}.png"
        )
    return folder


def test_check_data_and_plan_warn_of_images_too_small_to_segment(
    workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _tiny_images(tmp_path / "d", [(1, 1), (64, 64), (64, 64), (12, 40), (64, 64)])
    assert main(["check-data", str(data)]) == 0
    out, err = capsys.readouterr()
    assert "valid: every image decodes" in out
    warning = (
        "warning: 2 image(s) under 16 px on a side, too small to segment (the smallest patch "
        "a plan makes): i0 (1x1), i3 (12x40)"
    )
    assert warning in err.splitlines()
    assert main(["plan", str(data)]) == 0
    assert warning in capsys.readouterr().err.splitlines()
    fine = _tiny_images(tmp_path / "fine", [(64, 64)] * 5)
    assert main(["check-data", str(fine)]) == 0
    assert "too small" not in capsys.readouterr().err


def test_best_refuses_a_top_below_one(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["best", "quick-1", "--top", "-1"]) == 1
    assert capsys.readouterr().err == "error: --top must be at least 1, but got -1.\n"


def test_the_shrink_examples_of_the_readme_and_the_help_are_one_and_shrink_the_budget() -> None:
    """`search --help`'s example and the README's: the same `--set`s, which scale quick.yaml's
    budget with the trials' epochs (their run, on 24 images of 96 px, measured 1 min 19 s)."""
    import re

    from unet_search.cli.app import EXAMPLES
    from unet_search.space.load import load_space

    sets = re.findall(r"--set (\S+)", EXAMPLES["search"])
    assert sets == ["epochs=2", "search.num_samples=4"]
    readme = (ROOT / "README.md").read_text()
    assert "--set epochs=2 --set search.num_samples=4" in readme
    spec = load_space(ROOT / "search_spaces" / "quick.yaml", sets)
    assert spec.settings.compute is not None and spec.settings.compute.epochs == 8
    assert spec.base_config().train.epochs == 2 and spec.settings.num_samples == 4
