"""Search-space files for the space tests: the shipped ones, and a small space written with
changes (``small_space(search__num_samples=3)``)."""

from __future__ import annotations

import functools
from pathlib import Path

import yaml

from unet_search.space.load import load_space
from unet_search.space.spec import SearchSpec

__all__ = ["QUICK", "shipped", "small_space", "SPACES", "write_space"]

SPACES = sorted(Path(__file__).parents[2].joinpath("search_spaces").glob("*.yaml"))
QUICK = Path(__file__).parents[2] / "search_spaces" / "quick.yaml"


@functools.cache
def shipped(path: Path) -> SearchSpec:
    """A shipped space, loaded once for this module (full.yaml walks 40,000 combinations)."""
    return load_space(path)


def write_space(tmp_path: Path, raw: dict | str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False))
    return path


def small_space(**overrides: object) -> dict:
    raw: dict = {
        "name": "t",
        "fixed": {"image_size": 32, "epochs": 2},
        "params": {
            "encoder": {"type": "choice", "values": ["none", "resnet18"]},
            "upsampling": [
                {"type": "choice", "values": ["transpose"], "when": {"encoder": "none"}},
                {"type": "choice", "values": ["nearest"], "when": {"encoder": ["resnet18"]}},
            ],
            "depth": {"type": "int", "low": 3, "high": 4},
            "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
        },
        "search": {"num_samples": 4, "metric": "val_dice"},
    }
    for key, value in overrides.items():
        section, _, leaf = key.partition("__")
        if leaf:
            if value is None:
                raw[section].pop(leaf, None)
            else:
                raw[section][leaf] = value
        else:
            raw[section] = value
    return raw
