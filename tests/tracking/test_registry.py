"""The registry on a real MLflow store: champion gate, pyfunc, a real `mlflow models serve`."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import store_in
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from unet_search.core.errors import UserError
from unet_search.core.sections import ModelConfig
from unet_search.core.tags import (
    TAG_CONSTRAINTS,
    TAG_DATA,
    TAG_FINGERPRINT,
    TAG_METRIC,
    TAG_MODE,
    TAG_OBJECTIVES,
    TAG_SPLIT,
    TAG_VALUE,
)
from unet_search.models.build import build_model, save_model_dir
from unet_search.models.card import ModelCard
from unet_search.serve.inference import load_model
from unet_search.serve.packaging import Candidate, log_and_register
from unet_search.tracking.client import create_run, ensure_experiment
from unet_search.tracking.registry import (
    champion_lock,
    download_model,
    missing_alias,
    promote,
    registered_versions,
)


def _model_dir(tmp_path: Path, seed: int) -> Path:
    import torch

    torch.manual_seed(seed)
    cfg = ModelConfig(depth=2, base_filters=4)
    out = tmp_path / f"m{seed}"
    save_model_dir(
        out,
        build_model(cfg, 1),
        ModelCard(
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
        ),
    )
    return out


@pytest.fixture()
def store(tmp_path: Path, empty_store: Path) -> tuple[str, str]:
    uri = store_in(tmp_path, empty_store)
    experiment = ensure_experiment(uri, "reg", tmp_path)
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
    run = create_run(uri, experiment, f"s{seed}", {}, {})
    tags = {TAG_FINGERPRINT: fp, "unet_search.trial_id": f"t{seed}"}
    candidate = Candidate(_model_dir(tmp_path, seed), metric, value, "max", tags)
    return log_and_register(uri, run, "unet-test", candidate)


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
    assert other_data.alias == "challenger"
    assert "other data or split (fingerprint fp1 != fp2): not comparable" in other_data.reason
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


def _version(client: MlflowClient, value: float, test: float | None = None, **tags: str) -> str:
    """A version of ``unet-test`` as a search registers it (tags only: the registry's
    decision reads nothing else), without an alias yet."""
    every = {
        TAG_METRIC: "val_dice",
        TAG_MODE: "max",
        TAG_VALUE: repr(value),
        TAG_FINGERPRINT: "fp",
        TAG_DATA: "d1",
        TAG_SPLIT: "val=0.2 test=0.1 seed=0",
        **({} if test is None else {"unet_search.test_dice": repr(test)}),
        **tags,
    }
    with contextlib.suppress(MlflowException):
        client.create_registered_model("unet-test")
    return str(client.create_model_version("unet-test", "file:///m", tags=every).version)


def test_the_gate_compares_test_values_and_names_what_differs(store) -> None:
    client = MlflowClient(store[0])
    first = promote(client, "unet-test", _version(client, 0.80, test=0.70))
    assert (first.alias, first.reason) == ("champion", "no champion yet")
    # a better validation value but a worse test value: the test decides
    worse = promote(client, "unet-test", _version(client, 0.90, test=0.65))
    assert (worse.alias, worse.previous_value) == ("challenger", 0.70)
    assert worse.reason == "test_dice 0.6500 does not beat champion v1's 0.7000"
    better = promote(client, "unet-test", _version(client, 0.75, test=0.72))
    assert better.alias == "champion" and better.reason.startswith("test_dice 0.7200 beats")
    # another split, other data, another mode: each named, never compared
    split = promote(client, "unet-test", _version(client, 0.99, 0.99, **{TAG_SPLIT: "val=0.1"}))
    assert split.alias == "challenger"
    assert split.reason == (
        "champion v3 was split otherwise (val=0.2 test=0.1 seed=0; this model val=0.1): "
        "not comparable"
    )
    both = promote(
        client, "unet-test", _version(client, 0.99, 0.99, **{TAG_DATA: "d2", TAG_MODE: "min"})
    )
    assert both.alias == "challenger"
    assert "chosen by val_dice (max), this model by val_dice (min); " in both.reason
    assert "was trained on other data (data d1 != d2)" in both.reason
    # chosen among several objectives, or within limits: only against versions chosen alike
    front = {TAG_OBJECTIVES: "val_dice:max,inference_ms:min"}
    limits = {TAG_CONSTRAINTS: "num_parameters<=5e+06"}
    mo = promote(client, "unet-test", _version(client, 0.99, 0.99, **front))
    assert mo.alias == "challenger"
    assert mo.reason == (
        "champion v3 was chosen with objectives none, this model with "
        "val_dice:max,inference_ms:min: not comparable"
    )
    limited = promote(client, "unet-test", _version(client, 0.99, 0.99, **limits))
    assert limited.reason == (
        "champion v3 was chosen with limits none, this model with num_parameters<=5e+06: "
        "not comparable"
    )
    assert str(client.get_model_version_by_alias("unet-test", "champion").version) == "3"


def test_registrations_at_the_same_moment_leave_the_best_as_champion(store) -> None:
    """Six searches end at once: each promotes its version from a thread of its own, all
    released together against a champion every one of them beats. Without the lock each
    would compare with that champion and the last write would win; with it the best does."""
    uri = store[0]
    client = MlflowClient(uri)
    promote(client, "unet-test", _version(client, 0.50, test=0.50))
    values = [0.61, 0.74, 0.58, 0.90, 0.66, 0.83]
    versions = [_version(client, v, test=v) for v in values]
    start = threading.Barrier(len(versions))

    def register(version: str):
        mine = MlflowClient(uri)
        start.wait()
        return promote(mine, "unet-test", version)

    with ThreadPoolExecutor(len(versions)) as pool:
        done = list(pool.map(register, versions))
    champion = client.get_model_version_by_alias("unet-test", "champion")
    assert float(champion.tags["unet_search.test_dice"]) == 0.90
    assert [r.alias for r in done].count("champion") >= 1
    for reg, value in zip(done, values, strict=True):  # every decision compared truly
        assert (reg.alias == "champion") == (value > reg.previous_value), reg
    assert [m.name for m in client.search_registered_models()] == ["unet-test"]  # no lock left


def test_a_lock_left_by_a_dead_registration_is_broken_and_a_live_one_waited_for(store) -> None:
    client = MlflowClient(store[0])
    client.create_registered_model("unet-test.champion-lock")  # a holder that died
    held = champion_lock(client, "unet-test", wait_s=0.3, stale_s=60)
    with pytest.raises(UserError, match=r"unet-test.champion-lock: another registration"):
        held.__enter__()
    time.sleep(1.1)
    with champion_lock(client, "unet-test", wait_s=5, stale_s=1):
        assert client.get_registered_model("unet-test.champion-lock")  # ours now
    assert client.search_registered_models() == []


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


def test_a_vetoed_version_is_a_challenger_even_as_the_first_of_its_name(store) -> None:
    """The Otsu rule (unet_search.search.summaries.otsu_veto) vetoes the champion alias: the
    version is registered, as challenger, with the veto as its reason; a champion stays."""
    client = MlflowClient(store[0])
    why = "its val_dice 0.4000 is below a plain Otsu threshold's 0.8000"
    first = promote(client, "unet-test", _version(client, 0.40, test=0.40), veto=why)
    assert (first.alias, first.reason, first.previous_version) == ("challenger", why, None)
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("unet-test", "champion")
    # the URI the README prints names what exists instead, and why
    said = (
        f"unet-test has no @champion: v1 is @challenger ({why}); use models:/unet-test@challenger"
    )
    assert missing_alias(store[0], "unet-test", "champion") == said
    with pytest.raises(UserError) as err:
        download_model("models:/unet-test@champion", store[0])
    assert str(err.value) == f"models:/unet-test@champion: cannot be loaded: {said}."
    assert missing_alias(store[0], "nope", "champion") == (
        f"there is no registered model named 'nope' in {store[0]}"
    )
    good = promote(client, "unet-test", _version(client, 0.85, test=0.85))
    assert (good.alias, good.reason) == ("champion", "no champion yet")
    better = promote(client, "unet-test", _version(client, 0.95, test=0.95), veto=why)
    assert (better.alias, better.previous_value) == ("challenger", 0.85)
    assert str(client.get_model_version_by_alias("unet-test", "champion").version) == "2"
    shown = registered_versions(store[0], "unet-test")  # what `best` lists, newest first
    assert [(v.version, v.aliases, v.reason) for v in shown] == [
        ("3", ("challenger",), why),
        ("2", ("champion",), "no champion yet"),
        ("1", (), why),
    ]
    assert [(v.metric, v.value, v.test) for v in shown][1] == (
        "val_dice",
        0.85,
        {"test_dice": 0.85},
    )
