"""The stand-alone network (what a BioImage.IO package runs): the image's unit values in,
probabilities out, equal to what ``predict`` computes on an image of one tile at the model's
scale, whatever the scale, flips, classes, normalization or input mode; sizes rounded as
Python rounds them, area resampling as OpenCV's; the models no graph of any size can be."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from conftest import TrainedModel

from unet_search.models.build import build_model, load_model_dir, save_model_dir
from unet_search.models.card import ModelCard
from unet_search.serve.inference import Predictor
from unet_search.serve.standalone import (
    StandaloneNetwork,
    _area,
    _rounded,
    fixed_tile,
    unsupported,
)
from unet_search.train.sliding import Preprocessing


@pytest.mark.parametrize("scale", [0.5, 0.37, 1.5, 2 / 3])
def test_sizes_round_as_python_rounds_them(scale: float) -> None:
    from fractions import Fraction

    f = Fraction(scale).limit_denominator(10_000)
    got = [_rounded(n, f.numerator, f.denominator) for n in range(1, 400)]
    assert got == [max(1, round(n * scale)) for n in range(1, 400)]


@pytest.mark.parametrize("size", [(32, 40), (24, 30), (7, 5)])
def test_area_resampling_is_opencvs_inter_area(size: tuple[int, int]) -> None:
    image = np.random.default_rng(0).random((64, 80, 3)).astype(np.float32)
    want = cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(image.transpose(2, 0, 1))[None]
    got = torch.einsum("oh,nchw,pw->ncop", _area(64, size[0]), x, _area(80, size[1]))
    assert np.abs(got[0].numpy().transpose(1, 2, 0) - want).max() < 1e-5


def _variant(trained: Path, folder: Path, **preprocessing: Any) -> Path:
    """The trained model's weights saved with other preprocessing."""
    model, card = load_model_dir(trained)
    card = dataclasses.replace(card, preprocessing={**card.preprocessing, **preprocessing})
    save_model_dir(folder, model, card)
    return folder


def _image(model: TrainedModel, side: int) -> np.ndarray:
    """A (side, side) image of the model's data (mirrored out where the image is smaller)."""
    image = model.arrays.image(0)
    pad = [(0, max(0, side - n)) for n in image.shape[:2]]
    return np.pad(image, [*pad, (0, 0)], mode="symmetric")[:side, :side]


def _probabilities(folder: Path, image: np.ndarray) -> torch.Tensor:
    logits = Predictor.from_dir(folder).predict_logits([image])[0]
    return torch.sigmoid(logits) if logits.shape[0] == 1 else torch.softmax(logits, 0)


def _standalone(folder: Path, image: np.ndarray) -> torch.Tensor:
    card = ModelCard.read(folder)
    net = StandaloneNetwork(card.to_dict())
    net.load_state_dict(load_model_dir(folder)[0].state_dict())
    unit = image.astype(np.float32).transpose(2, 0, 1)[None] / 255.0
    with torch.no_grad():
        return net.eval()(torch.from_numpy(unit))[0]


# (preprocessing, image side, largest difference): one tile at the model's scale (its patch:
# 32 px). Where the model's scale resamples the image, predict resamples the 8-bit image in 8
# bits, the graph in float32: 3e-3 at most in these probabilities (measured).
VARIANTS: dict[str, tuple[dict[str, Any], int, float]] = {
    "as trained": ({}, 32, 1e-4),
    "scale 0.5, flips": ({"scale": 0.5, "tta": "flips"}, 64, 5e-3),
    "scale 1.5": ({"scale": 1.5}, 21, 5e-3),
    "imagenet statistics": (
        {"normalization": "imagenet", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        32,
        1e-4,
    ),
    "resize mode (area by 1.5)": ({"input_mode": "resize", "image_size": 32}, 48, 5e-3),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_graph_gives_predicts_probabilities_on_one_tile(
    variant: str, trained_model: TrainedModel, tmp_path: Path
) -> None:
    preprocessing, side, largest = VARIANTS[variant]
    folder = _variant(trained_model.path, tmp_path / "model", **preprocessing)
    image = _image(trained_model, side)
    want, got = _probabilities(folder, image), _standalone(folder, image)
    assert got.shape == want.shape == (1, side, side)
    assert float((got - want).abs().max()) < largest
    assert float(want.std()) > 0.05  # a trained model's probabilities, not a constant
    threshold = Preprocessing.of_card(ModelCard.read(folder)).threshold
    masks = Predictor.from_dir(folder).predict([image])[0]
    assert np.mean((got[0].numpy() > threshold) == (masks > 0)) > 0.995


def test_a_grey_network_takes_the_channel_mean_and_a_softmax_of_three_classes(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    cfg = trained_model.cfg.model.model_copy(update={"in_channels": 1})
    torch.manual_seed(0)
    model = build_model(cfg, 3)
    _, card = load_model_dir(trained_model.path)
    pre = {**card.preprocessing, "in_channels": 1, "num_classes": 3}
    save_model_dir(tmp_path / "m", model, ModelCard(cfg, 3, pre))
    image = _image(trained_model, 32)
    want, got = _probabilities(tmp_path / "m", image), _standalone(tmp_path / "m", image)
    assert got.shape == (3, 32, 32)
    assert float((got - want).abs().max()) < 1e-4
    assert torch.allclose(got.sum(0), torch.ones(32, 32), atol=1e-5)


def test_an_unpadded_unet_cannot_be_one_graph_and_aspp_takes_its_tile_only(
    trained_model: TrainedModel,
) -> None:
    _, card = load_model_dir(trained_model.path)
    pre = Preprocessing.of_card(card)
    valid = build_model(trained_model.cfg.model.model_copy(update={"padding": "valid"}), 1)
    reason = unsupported(valid, pre)
    assert reason is not None and "overlap-tile" in reason
    aspp = build_model(trained_model.cfg.model.model_copy(update={"bottleneck": "aspp"}), 1)
    assert unsupported(aspp, pre) is None and fixed_tile(aspp, pre)
    plain = load_model_dir(trained_model.path)[0]
    assert unsupported(plain, pre) is None and not fixed_tile(plain, pre)
