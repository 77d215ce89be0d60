"""What the napari widget does to an image layer, without Qt: a boundary model's instances
are predict's, a stack's planes each segmented and numbered on, the object table as the
layer's features; a semantic model gives its mask; layers with no plane are one message."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TargetModels

from unet_search.core.errors import UserError
from unet_search.data.decode import read_image
from unet_search.napari_plugin.segment import planes, segment, tracking_text
from unet_search.serve.inference import Predictor


def _held_out(models: TargetModels) -> list[np.ndarray]:
    return [read_image(p) for p in sorted(models.held_out.glob("*/images/*.png"))]


def test_a_stack_is_segmented_plane_by_plane_into_predicts_instances(
    epithelium_models: TargetModels,
) -> None:
    images = [im[:120, :120] for im in _held_out(epithelium_models)[:2]]
    stack = np.stack(images)  # (2, 120, 120, 3): two RGB planes
    model = epithelium_models.models["boundary"]
    result = segment(str(model), stack, rgb=True, name="cells")
    want = Predictor.from_dir(model).predict(images, instances=True)
    assert result.kind == "instances" and result.labels.shape == (2, 120, 120)
    first = int(want[0].max())
    assert first >= 5  # the held-out cells, found
    assert np.array_equal(result.labels[0], want[0])
    # the second plane's objects numbered on from the first's
    assert np.array_equal(result.labels[1], np.where(want[1] > 0, want[1] + first, 0))
    assert result.features["index"] == list(range(1, int(result.labels.max()) + 1))
    assert result.features["plane"][0] == [0] and result.features["plane"][-1] == [1]
    areas = np.bincount(result.labels.ravel())[1:]
    assert result.features["area"] == areas.tolist()


def test_a_semantic_model_gives_its_mask_and_bad_layers_are_one_message(
    epithelium_models: TargetModels,
) -> None:
    image = _held_out(epithelium_models)[0]
    model = epithelium_models.models["semantic"]
    result = segment(str(model), image, rgb=True)
    assert result.kind == "mask" and result.features == {}
    assert np.array_equal(result.labels, Predictor.from_dir(model).predict([image])[0])
    with pytest.raises(UserError, match="no height and width"):
        planes(np.zeros(5), rgb=False)
    assert planes(np.zeros((3, 4, 6, 7)), rgb=False) == ((3, 4, 6, 7), list(np.ndindex(3, 4)))


def test_models_resolve_where_every_command_resolves_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_text() == "http://127.0.0.1:5999"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("UNET_SEARCH_HOME", str(tmp_path))
    assert tracking_text() == f"sqlite:///{tmp_path / 'mlflow.db'}"
