"""Shared fixtures: tiny synthetic datasets, an isolated work dir, one Ray per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 synthetic images, 48 px high, DSB2018 layout (read-only for tests)."""
    from unet_search.synthetic import make_synthetic

    out = tmp_path_factory.mktemp("synth") / "data"
    make_synthetic(out, n=12, size=48, seed=7)
    return out


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh UNET_SEARCH_HOME (SQLite MLflow, cache, Ray results) per test."""
    home = tmp_path / "home"
    monkeypatch.setenv("UNET_SEARCH_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A real local Ray, started once for the whole session."""
    import ray

    from unet_search.worker import init_ray

    init_ray()
    yield
    ray.shutdown()
