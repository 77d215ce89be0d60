"""The napari plugin in a real viewer (napari's make_napari_viewer, Qt offscreen): opened
from its npe2 manifest, it segments the chosen image layer off the UI thread into a Labels
layer equal to `unet-search predict --output-kind instances`, with `--objects`' table as
its features; a model that does not load is one line in the widget, and no layer."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TargetModels
from PIL import Image

from unet_search.cli.app import main
from unet_search.data.decode import read_image

pytestmark = pytest.mark.usefixtures("display")


def test_the_widget_gives_predicts_instances_and_objects(
    make_napari_viewer: Any, qtbot: Any, epithelium_models: TargetModels, tmp_path: Path
) -> None:
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("unet-search", "Segment")
    path = sorted(epithelium_models.held_out.glob("*/images/*.png"))[0]
    viewer.add_image(read_image(path), name="cells", rgb=True)
    model = epithelium_models.models["boundary"]
    widget.model.setText(str(model))
    widget.layer.setCurrentText("cells")
    widget.button.click()
    qtbot.waitUntil(lambda: "cells labels" in viewer.layers, timeout=120_000)
    layer = viewer.layers["cells labels"]
    args = ["predict", "--model", str(model), "--input", str(path), "--output", str(tmp_path)]
    objects = tmp_path / "objects.csv"
    assert main([*args, "--output-kind", "instances", "--objects", str(objects)]) == 0
    want = np.asarray(Image.open(tmp_path / f"{path.stem}.png"))
    assert want.max() >= 5 and np.array_equal(layer.data, want)
    with objects.open() as f:
        rows = list(csv.DictReader(f))
    assert layer.features["index"].tolist() == [int(r["id"]) for r in rows]
    assert layer.features["area"].tolist() == [int(r["area"]) for r in rows]
    assert widget.status.text() == f"cells labels: {len(rows)} objects"
    qtbot.waitUntil(lambda: widget.button.isEnabled(), timeout=10_000)


def test_a_model_that_does_not_load_is_one_line_and_no_layer(
    make_napari_viewer: Any, qtbot: Any, tmp_path: Path
) -> None:
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("unet-search", "Segment")
    viewer.add_image(np.zeros((32, 32), np.uint8), name="blank")
    widget.model.setText(str(tmp_path / "no-such-model"))
    worker = widget.segment()
    assert worker is not None
    qtbot.waitUntil(lambda: widget.button.isEnabled(), timeout=60_000)
    assert widget.status.text().startswith(str(tmp_path / "no-such-model"))
    assert "\n" not in widget.status.text()
    assert [layer.name for layer in viewer.layers] == ["blank"]
