"""The files of a BioImage.IO package besides its description, by hand: the axes' sizes and
halo, the values the graph takes (as the BioImage.IO runtimes compute them), the test image
in the type and channels the package takes, the class names, the documentation and cover."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from unet_search.core.config import RunConfig
from unet_search.models.card import ModelCard
from unet_search.serve.bioimageio_files import (
    AxisSizes,
    PackageInfo,
    as_trained,
    axis_sizes,
    class_names,
    cover,
    cut_test_input,
    documentation,
    unit_values,
)
from unet_search.train.sliding import preprocessing_of


def _card(leaves: dict[str, Any], **preprocessing: Any) -> ModelCard:
    cfg = RunConfig.from_dict({"depth": 3, "base_filters": 4, **leaves})
    pre = {**preprocessing_of(cfg), **preprocessing}
    return ModelCard(cfg.model, cfg.data.network_classes, pre)


def test_sizes_are_one_tile_and_steps_of_the_networks_multiple_at_the_models_scale() -> None:
    # 96 x 64 patches at scale 0.5 cover 192 x 128 px; depth 3 steps by 8 there, 16 here;
    # the halo half of the 0.5 overlap of those tiles
    card = _card({"patch_size": [96, 64], "scale": 0.5})
    assert axis_sizes(card, 8) == AxisSizes(min=(192, 128), step=16, halo=(48, 32))
    # scale 0.3: a step of ceil(8 / 0.3) = 27; tiles of ceil(64 / 0.3) = 214, rounded up to
    # 216 (8 steps); overlap 0.25: halo round(214 * 0.125) = 27
    card = _card({"patch_size": 64, "scale": 0.3, "tile_overlap": 0.25})
    assert axis_sizes(card, 8) == AxisSizes(min=(216, 216), step=27, halo=(27, 27))
    # a graph of its tile only (ASPP): the side scale 0.7 rounds to the 32-px tile, 46; halo
    # a quarter of it, 11.5, rounded to even
    card = _card({"patch_size": 32, "scale": 0.7})
    assert axis_sizes(card, 8, fixed=True) == AxisSizes(min=(46, 46), step=0, halo=(12, 12))
    resize = _card({"input_mode": "resize", "image_size": 64})
    assert axis_sizes(resize, 8) == AxisSizes(min=(16, 16), step=1, halo=(0, 0))


def test_unit_values_are_the_runtimes_preprocessing() -> None:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 4096, (1, 2, 8, 8)).astype(np.uint16)
    unit = unit_values(raw, _card({}, normalization="unit", image_dtype="uint16"))
    assert np.allclose(unit, raw / 65535.0)
    low, high = np.percentile(raw[0, 1], (1.0, 99.8))
    unit = unit_values(raw, _card({"normalization": "percentile"}))
    assert np.allclose(unit[0, 1], (raw[0, 1] - low) / (high - low + 1e-6), atol=1e-6)
    unit = unit_values(raw, _card({"normalization": "zscore"}))
    x = raw[0, 0].astype(np.float64)
    assert np.allclose(unit[0, 0], (x - x.mean()) / (x.std() + 1e-6), atol=1e-5)


def test_the_test_image_takes_the_packages_type_and_channels_and_one_tile() -> None:
    grey16 = _card({"patch_size": 32}, image_dtype="uint16", image_channels=1)
    rgb8 = (np.arange(40 * 50 * 3) % 256).astype(np.uint8).reshape(40, 50, 3)
    converted = as_trained(rgb8, grey16)  # the mean of the channels, 8 bits to 16
    assert converted.dtype == np.uint16 and converted.shape == (40, 50, 1)
    want = np.rint(rgb8.mean(axis=-1) / 255 * 65535)
    assert np.array_equal(converted[..., 0], want.astype(np.uint16))
    sizes = AxisSizes(min=(48, 32), step=8, halo=(8, 8))
    tile = cut_test_input(rgb8, _card({"patch_size": 32}), sizes)
    assert tile.shape == (1, 3, 48, 32) and tile.dtype == np.uint8
    assert np.array_equal(tile[0, :, :40].transpose(1, 2, 0), rgb8[:, 9:41])  # centre of x
    assert np.array_equal(tile[0, :, 40:], tile[0, :, 32:40][:, ::-1])  # mirrored below


@pytest.mark.parametrize(
    ("leaves", "names"),
    [
        ({}, ["foreground"]),
        ({"target": "boundary"}, ["background", "interior", "boundary"]),
        ({"target": "distance"}, ["background", "level1", "level2", "level3", "level4"]),
        ({"num_classes": 3}, ["background", "class1", "class2"]),
    ],
)
def test_each_output_channel_is_named(leaves: dict[str, Any], names: list[str]) -> None:
    assert class_names(_card(leaves)) == names


def test_the_documentation_says_how_to_tile_and_how_to_get_instances() -> None:
    card = _card({"patch_size": 32, "target": "boundary"})
    info = PackageInfo("cells", provenance={"test": {"test_dice": 0.91234}, "run_id": "abc"})
    text = documentation(card, info, axis_sizes(card, 8))
    assert "Tile with a halo of 8 (y) and 8 (x) pixels" in text
    assert "--output-kind instances" in text and "watershed" in text
    assert "test_dice 0.9123" in text and '"run_id": "abc"' in text


def test_the_cover_shows_the_image_beside_its_prediction_two_to_one(tmp_path: Path) -> None:
    raw = np.zeros((1, 3, 32, 32), np.uint8)
    raw[..., 8:24, 8:24] = 200
    probabilities = (raw[:, :1] > 0).astype(np.float32)
    cover(raw, probabilities, 0.5, tmp_path / "cover.png")
    picture = np.asarray(Image.open(tmp_path / "cover.png"))
    assert picture.shape == (256, 512, 3)  # 64 x 32 shown 8 times larger
    left, right = picture[128, 128], picture[128, 384]
    assert left.tolist() == [255, 255, 255] and right[0] > right[1]  # the object tinted red
