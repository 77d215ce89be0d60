"""The registry on a real MLflow store: champion gate, pyfunc, a real `mlflow models serve`."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from unet_search import tracking
from unet_search.config import ModelConfig, UserError
from unet_search.inference import load_model
from unet_search.models import build_model, save_model_dir
from unet_search.registry import log_and_register


def _model_dir(tmp_path: Path, seed: int) -> Path:
    import torch

    torch.manual_seed(seed)
    cfg = ModelConfig(depth=2, base_filters=4)
    out = tmp_path / f"m{seed}"
    save_model_dir(
        out,
        build_model(cfg, 1),
        cfg,
        1,
        {
            "image_size": 32,
            "resize": "bilinear",
            "normalization": "unit",
            "mean": [0, 0, 0],
            "std": [1, 1, 1],
            "in_channels": 3,
            "num_classes": 1,
            "threshold": 0.5,
        },
    )
    return out


@pytest.fixture()
def store(tmp_path: Path) -> tuple[str, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = tracking.ensure_experiment(uri, "reg", tmp_path)
    return uri, experiment


def _register(
    store: tuple[str, str],
    tmp_path: Path,
    seed: int,
    value: float,
    fp: str = "fp1",
    metric: str = "val_dice",
):
    uri, experiment = store
    run = tracking.create_run(uri, experiment, f"s{seed}", {}, {})
    return log_and_register(
        uri,
        run,
        _model_dir(tmp_path, seed),
        "unet-test",
        metric,
        value,
        "max",
        {tracking.TAG_FINGERPRINT: fp, "unet_search.trial_id": f"t{seed}"},
    )


def test_champion_moves_only_when_beaten_on_the_same_data(
    store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = MlflowClient(store[0])
    first = _register(store, tmp_path, 1, 0.60)
    # Registering points MLflow's fluent API at the store only for the while: a later search
    # in this process must not log to this store (MLflow exports MLFLOW_TRACKING_URI).
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert (first.version, first.alias, first.reason) == ("1", "champion", "no champion yet")
    worse = _register(store, tmp_path, 2, 0.55)
    assert (worse.alias, worse.previous_version) == ("challenger", "1")
    assert str(client.get_model_version_by_alias("unet-test", "champion").version) == "1"
    other_data = _register(store, tmp_path, 3, 0.99, fp="fp2")
    assert other_data.alias == "challenger" and "not comparable" in other_data.reason
    assert str(client.get_model_version_by_alias("unet-test", "champion").version) == "1"
    better = _register(store, tmp_path, 4, 0.70)
    assert (better.alias, better.version, better.previous_value) == ("champion", "4", 0.60)
    assert str(client.get_model_version_by_alias("unet-test", "champion").version) == "4"
    tags = client.get_model_version("unet-test", "4").tags
    assert tags["unet_search.metric_value"] == "0.7" and tags["unet_search.trial_id"] == "t4"
    other_metric = _register(store, tmp_path, 5, 0.99, metric="val_iou")  # same data
    assert other_metric.alias == "challenger"
    assert "chosen by val_dice (max), this model by val_iou (max)" in other_metric.reason
    assert str(client.get_model_version_by_alias("unet-test", "champion").version) == "4"


def test_registered_model_loads_by_uri_and_predicts_original_sizes(
    store, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store[0])
    _register(store, tmp_path, 1, 0.6)
    predictor = load_model("models:/unet-test@champion")
    images = [np.full((97, 131, 3), 30, np.uint8), np.full((20, 45), 200, np.uint8)]
    masks = predictor.predict(images)
    assert [m.shape for m in masks] == [(97, 131), (20, 45)]
    assert all(m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1} for m in masks)
    with pytest.raises(UserError, match="cannot be loaded"):
        load_model("models:/unet-test@nope")
    with pytest.raises(UserError, match="cannot be loaded"):
        load_model("models:/no-such-model@champion")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
