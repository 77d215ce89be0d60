"""ONNX: every architecture family exports, onnxruntime predicts through the same tiles, TTA
and decoding as PyTorch (masks and logits), the graph keeps its contract (any batch, height
and width; logits at the input's size), and `unet-search export` writes the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from unet_search.core.config import RunConfig
from unet_search.core.errors import UserError
from unet_search.models.build import build_model, save_model_dir
from unet_search.models.card import ModelCard
from unet_search.serve.inference import Predictor
from unet_search.serve.onnx import TOLERANCE, OnnxNetwork, _export, _Graph, export_onnx
from unet_search.train.sliding import preprocessing_of

# One model of each family: the from-scratch UNet with every kind of option, unpadded,
# UNet 3+, smp encoders (UNet, UNet++), resize mode with three classes and flips.
FAMILIES: dict[str, dict[str, Any]] = {
    "scratch residual+dilated+gate, strided": {
        **{"block": "residual", "bottleneck": "dilated", "attention": "gate"},
        **{"pooling": "strided", "upsampling": "transpose"},
    },
    "scratch separable+transformer+scse, bilinear": {
        **{"block": "separable", "bottleneck": "transformer", "attention": "scse"},
        **{"pooling": "avg", "upsampling": "bilinear"},
    },
    "scratch aspp (a graph of its tile), nearest": {"bottleneck": "aspp", "upsampling": "nearest"},
    "unpadded (overlap-tile)": {"padding": "valid", "patch_size": 36},
    "unet3plus": {"arch": "unet3plus", "depth": 3},
    "smp resnet18": {"encoder": "resnet18", "depth": 3},
    "smp unet++ resnet18": {"arch": "unetplusplus", "encoder": "resnet18", "depth": 3},
    "resize, 3 classes, flips": {
        **{"input_mode": "resize", "image_size": 32, "num_classes": 3, "tta": "flips"},
    },
}


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    shapes = ((45, 70), (23, 31))  # over one tile (overlapping tiles), under one (padded)
    return [(rng.random((*s, 3)) * 255).astype(np.uint8) for s in shapes]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_exports_and_onnxruntime_predicts_as_pytorch(
    family: str, tmp_path: Path
) -> None:
    leaves = {"depth": 2, "base_filters": 4, "patch_size": 32}
    cfg = RunConfig.from_dict({**leaves, **FAMILIES[family]})
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.network_classes)
    for param in model.parameters():  # random weights that give logits of both signs
        param.data.normal_(0.0, 0.3)
    folder = tmp_path / "model"
    save_model_dir(
        folder, model, ModelCard(cfg.model, cfg.data.network_classes, preprocessing_of(cfg))
    )
    images = _images()
    diff = export_onnx(folder, folder / "onnx", images[0])
    assert diff is not None

    pytorch, onnx = Predictor.from_dir(folder), Predictor.from_dir(folder, runtime="onnx")
    assert isinstance(onnx.model, OnnxNetwork)
    for image, want, got in zip(
        images, pytorch.predict_logits(images), onnx.predict_logits(images), strict=True
    ):
        assert got.shape == want.shape == (want.shape[0], *image.shape[:2])
        scale = max(1.0, float(want.abs().max()))
        assert float((got - want).abs().max()) <= TOLERANCE * scale
    for want, got in zip(pytorch.predict(images), onnx.predict(images), strict=True):
        assert (want == got).mean() >= 0.999

    info = json.loads((folder / "onnx" / "preprocessing.json").read_text())["onnx"]
    assert info["opset"] >= 17 and info["input_name"] == "image"
    assert info["logits"] == (3 if cfg.data.num_classes == 3 else 1)
    assert info["network"] == ("valid" if cfg.model.padding == "valid" else "same")
    assert info["size"] == ([32, 32] if cfg.model.bottleneck == "aspp" else None)
    if info["network"] == "valid":  # windows of input_size give the central output_size
        assert info["output_size"] == [36, 36]
        assert info["input_size"] == [
            s + 2 * m for s, m in zip([36, 36], info["margin"], strict=True)
        ]


def test_a_network_the_exporter_cannot_trace_is_one_clear_error(tmp_path: Path) -> None:
    """Where torch's exporter fails (here: a branch on the data, which no graph of fixed
    operators holds), one line says so, with the reason and the model code that raised,
    and no file is left."""

    class OnTheData(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :1] if x.sum() > 0 else -x[:, :1]

    graph = _Graph(OnTheData(), torch.rand(2, 3, 32, 32), {"size": None})
    with pytest.raises(UserError) as err:
        _export(graph, tmp_path / "model.onnx", "model X")
    message = str(err.value)
    assert message.startswith("model X: cannot be exported to ONNX: TorchExportError: ")
    assert "data-dependent" in message and "in forward" in message
    assert "\n" not in message and len(message) <= 700
    assert not (tmp_path / "model.onnx").exists()
