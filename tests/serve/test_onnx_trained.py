"""ONNX of a model trained here (the suite's ``trained_model``, in the main pytest: the side
run's test_onnx.py exports untrained models of every family and trains none): onnxruntime
gives its masks and validation numbers, `unet-search export` writes the graph and its
preprocessing, `load_model(runtime="onnx")` exports a model that has none."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import TrainedModel

from unet_search.cli.app import main
from unet_search.models.build import load_model_dir
from unet_search.serve.inference import Predictor, load_model, score_images
from unet_search.serve.onnx import OnnxNetwork, export_onnx
from unet_search.train.engine import val_indices
from unet_search.train.transforms import to_tensor


def test_onnx_predicts_the_trained_models_masks_and_validation_numbers(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    """On a trained model: onnxruntime scores the validation images as the kept epoch did."""
    cfg, arrays = trained_model.cfg, trained_model.arrays
    indices = [int(i) for i in val_indices(cfg, arrays)]
    diff = export_onnx(trained_model.path, tmp_path / "onnx", arrays.image(indices[0]))
    assert diff is not None and diff < 1e-4  # measured 2e-6
    onnx = Predictor.from_dir(trained_model.path, runtime="onnx", onnx_dir=tmp_path / "onnx")
    scores = score_images(onnx, arrays, indices, "val_")
    assert scores["val_dice"] == pytest.approx(trained_model.best["val_dice"], abs=1e-4)
    assert scores["val_dice"] > 0.5
    images = [arrays.image(i) for i in indices]
    pytorch = Predictor.from_dir(trained_model.path)
    for want, got in zip(pytorch.predict(images), onnx.predict(images), strict=True):
        assert (want == got).mean() >= 0.999


def test_export_command_writes_a_graph_of_any_size_and_its_preprocessing(
    trained_model: TrainedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "exported" / "nuclei.onnx"
    assert main(["export", str(trained_model.path), "--format", "onnx", "--out", str(out)]) == 0
    sidecar = out.with_name("nuclei.preprocessing.json")
    assert capsys.readouterr().out.strip() == (
        f"wrote {out} (ONNX) and {sidecar} (its preprocessing)"
    )
    pre = json.loads(sidecar.read_text())
    # the contract: normalize as the JSON says, any batch, height and width, logits at the
    # input's size, equal to the PyTorch model's
    model, card = load_model_dir(trained_model.path)
    assert pre["mean"] == card.preprocessing["mean"] and pre["onnx"]["size"] is None
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(2)
    for n, h, w in ((1, 32, 32), (3, 29, 53)):
        images = (rng.random((n, h, w, 3)) * 255).astype(np.uint8)
        x = torch.stack([to_tensor(im, pre["normalization"], 3) for im in images])
        (logits,) = session.run(["logits"], {"image": x.numpy()})
        assert logits.shape == (n, 1, h, w)
        with torch.no_grad():
            assert np.abs(logits - model(x).numpy()).max() < 1e-4

    # neither file is overwritten, and the name must say ONNX
    before = out.read_bytes()
    assert main(["export", str(trained_model.path), "--out", str(out)]) == 1
    assert "exists; remove it or choose another --out" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["export", str(trained_model.path), "--out", str(tmp_path / "m.bin")]) == 1
    assert "an ONNX file's name ends in .onnx" in capsys.readouterr().err
    assert not (tmp_path / "m.bin").exists()


def test_load_model_onnx_exports_a_model_that_has_none(trained_model: TrainedModel) -> None:
    """A model folder without ONNX files (saved before ONNX, or search.onnx false) runs on
    onnxruntime all the same: exported to a temporary folder, gone with the predictor."""
    predictor = load_model(trained_model.path, runtime="onnx")
    assert isinstance(predictor.model, OnnxNetwork)
    assert not (trained_model.path / "onnx").exists()
    image = trained_model.arrays.image(0)
    want = Predictor.from_dir(trained_model.path).predict([image])[0]
    assert (predictor.predict([image])[0] == want).mean() >= 0.999
    assert ort.get_device() in ("CPU", "GPU")
