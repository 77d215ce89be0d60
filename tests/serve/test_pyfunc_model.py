"""The MLflow pyfunc of a unet-search model (models-from-code), logged and loaded for real."""

from __future__ import annotations

import json
import shutil
import sys
import tarfile
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import TargetModels, TrainedModel, store_in

from unet_search.core.names import CONFIG_FILE
from unet_search.serve.inference import Predictor
from unet_search.serve.packaging import Candidate, log_and_register
from unet_search.tracking.client import create_run, ensure_experiment
from unet_search.tracking.registry import download_model


@pytest.fixture(scope="module")
def logged(
    trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory, empty_store: Path
) -> str:
    """The trained model logged and registered as a search registers it; its models:/ URI."""
    root = tmp_path_factory.mktemp("pyfunc")
    uri = store_in(root, empty_store)
    run = create_run(uri, ensure_experiment(uri, "pyfunc", root), "r", {}, {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log_and_register(
            uri, run, "unet-pyfunc", Candidate(trained_model.path, "val_dice", 0.5, "max")
        )
    # The pyfunc's predict is typed: MLflow no longer asks for type hints at each registration.
    assert not [w for w in caught if "type hints" in str(w.message)], [
        str(w.message) for w in caught
    ]
    return uri


def test_the_pyfunc_segments_as_the_predictor_does(
    logged: str, trained_model: TrainedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged)
    model = mlflow.pyfunc.load_model("models:/unet-pyfunc/1")
    arrays = trained_model.arrays
    predictor = Predictor.from_dir(trained_model.path)
    same = np.stack([arrays.image(0)[:40, :44], arrays.image(1)[:40, :44]])
    masks = model.predict(same)  # (N, H, W, 3) uint8 -> (N, H, W) uint8
    assert masks.shape == (2, 40, 44) and masks.dtype == np.uint8
    expected = predictor.predict(list(same))
    assert all((m == e).all() for m, e in zip(masks, expected, strict=True))
    assert masks.any()  # a trained model finds nuclei in them
    other = model.predict(arrays.image(1)[None, :30, :35])  # any size, call by call
    assert other.shape == (1, 30, 35)
    assert (other[0] == predictor.predict([arrays.image(1)[:30, :35]])[0]).all()


def test_the_logged_model_is_code_and_weights_never_a_pickle(logged: str) -> None:
    local = download_model("models:/unet-pyfunc/1", logged)
    files = {p.name for p in local.rglob("*") if p.is_file()}
    assert {"model.safetensors", "model_config.json", "pyfunc_model.py", "MLmodel"} <= files
    assert not [name for name in files if name.endswith((".pkl", ".pickle", ".pt"))]
    assert "python_model.pkl" not in (local / "MLmodel").read_text()


def test_the_logged_model_pins_what_the_package_declares_less_the_search(logged: str) -> None:
    """Its requirements.txt is the package's own dependencies from its installed metadata
    (not a list kept by hand, which had missed pydantic), pinned as installed; what only a
    search or a report needs is left out."""
    from importlib.metadata import version

    local = download_model("models:/unet-pyfunc/1", logged)
    pins = (local / "requirements.txt").read_text().split()
    names = {p.split("==")[0] for p in pins}
    assert f"pydantic=={version('pydantic')}" in pins
    assert f"torch=={version('torch').split('+')[0]}" in pins
    assert {"opencv-python-headless", "segmentation-models-pytorch", "mlflow"} <= names
    assert not names & {
        "ray",
        "optuna",
        "matplotlib",
        "pytest",
        "onnx",
        "onnxruntime",
        "onnxscript",
    }


def _dice(mask: np.ndarray, truth: np.ndarray) -> float:
    return float(2 * (mask.astype(bool) & truth.astype(bool)).sum() / (mask.sum() + truth.sum()))


def test_a_model_registered_before_the_subpackages_still_loads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """tests/fixtures/pyfunc_model_16a26c8 (see its README): logged by the flat-layout code.
    Its ``pyfunc_model.py`` imports ``unet_search.inference``; in a process that has today's
    package imported that name resolves in today's package (MLflow only puts the model's
    code copy on ``sys.path``), so it must still be there."""
    import unet_search

    fixture = Path(__file__).parents[1] / "fixtures" / "pyfunc_model_16a26c8"
    want = np.load(fixture / "expected.npz")
    with tarfile.open(fixture / "model.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    images = [want["image0"], want["image1"]]
    masks = unet_search.load_model(str(tmp_path / "model")).predict(images)
    for mask, key in zip(masks, ("0", "1"), strict=True):
        assert (mask == want[f"mask{key}"]).all()
        assert _dice(mask, want[f"truth{key}"]) > 0.65
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_model prepends the code copy
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    for image, key in zip(images, ("0", "1"), strict=True):
        assert (model.predict(image[None])[0] == want[f"mask{key}"]).all()


def test_an_attention_unet_model_saved_before_the_attention_option_still_loads(
    tmp_path: Path,
) -> None:
    """tests/fixtures/attention_unet_9f76b77 (see its README): ``arch: attention_unet`` on
    mobilenet_v2, saved before issue 17 made attention an option. Today it reads as ``unet``
    + ``attention: scse``, the same smp model: same weights, same masks."""
    fixture = Path(__file__).parents[1] / "fixtures" / "attention_unet_9f76b77"
    want = np.load(fixture / "expected.npz")
    with tarfile.open(fixture / "model.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    predictor = Predictor.from_dir(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / CONFIG_FILE).read_text())
    assert saved["model"]["arch"] == "attention_unet"  # as it was saved
    cfg = predictor.card.model
    assert (cfg.arch, cfg.attention, cfg.encoder) == ("unet", "scse", "mobilenet_v2")
    masks = predictor.predict([want["image0"], want["image1"]])
    for mask, key in zip(masks, ("0", "1"), strict=True):
        assert (mask == want[f"mask{key}"]).all()
        assert _dice(mask, want[f"truth{key}"]) > 0.55


def test_the_pyfunc_returns_instances_when_asked(
    epithelium_models: TargetModels, tmp_path: Path
) -> None:
    """``params={"instances": True}`` (in the logged signature, so MLflow passes it on):
    the instance labels ``Predictor.predict(..., instances=True)`` gives; without it, masks."""
    from unet_search.core.sections import DataConfig
    from unet_search.data.dataset import load_dataset
    from unet_search.serve.packaging import pyfunc_model
    from unet_search.tracking.models import save_pyfunc

    folder = epithelium_models.models["boundary"]
    save_pyfunc(pyfunc_model(folder), tmp_path / "pyfunc")
    model = mlflow.pyfunc.load_model(str(tmp_path / "pyfunc"))
    assert [p.name for p in model.metadata.get_params_schema().params] == ["instances"]
    image = load_dataset(epithelium_models.held_out, DataConfig()).image(0)[None, :96, :112]
    predictor = Predictor.from_dir(folder)
    instances = model.predict(image, params={"instances": True})
    assert instances.shape == (1, 96, 112) and instances.dtype == np.int32
    np.testing.assert_array_equal(instances[0], predictor.predict(list(image), instances=True)[0])
    assert instances.max() > 10  # the cells, each its own object
    masks = model.predict(image)
    assert masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
    np.testing.assert_array_equal(masks[0], instances[0] > 0)


def test_a_16_bit_grey_models_pyfunc_takes_what_it_was_trained_on(
    trained_model: TrainedModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    empty_store: Path,
) -> None:
    """The signature follows the training images (``image_dtype``, ``image_channels`` in the
    preprocessing): a model trained on 16-bit grey images takes (N, H, W, 1) uint16 arrays,
    their values as they are (this model's x / full scale: x 257 segments as the 8-bit)."""
    folder = tmp_path / "model"
    shutil.copytree(trained_model.path, folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["preprocessing"] |= {"image_dtype": "uint16", "image_channels": 1}
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    uri = store_in(tmp_path, empty_store)
    run = create_run(uri, ensure_experiment(uri, "grey16", tmp_path), "r", {}, {})
    log_and_register(uri, run, "unet-grey16", Candidate(folder, "val_dice", 0.5, "max"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model("models:/unet-grey16/1")
    (spec,) = model.metadata.get_input_schema().inputs
    assert (spec.type, spec.shape) == (np.dtype("uint16"), (-1, -1, -1, 1))
    grey = np.round(trained_model.arrays.image(0)[:40, :44].mean(axis=2)).astype(np.uint8)
    masks = model.predict((grey.astype(np.uint16) * 257)[None, ..., None])
    expected = Predictor.from_dir(trained_model.path).predict([grey])[0]
    assert (masks[0] == expected).mean() >= 0.999 and masks[0].any()
    with pytest.raises(mlflow.exceptions.MlflowException, match="dtype"):
        model.predict(grey[None, ..., None])  # 8-bit into a 16-bit model: the schema says no
