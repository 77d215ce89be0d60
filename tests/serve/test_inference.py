"""unet_search.serve.inference on a model trained here: the predictor `predict`, `load_model`,
the pyfunc and the held-out test scoring all use."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TrainedModel
from PIL import Image

from unet_search.core.errors import UserError
from unet_search.serve.inference import Predictor, find_model_dir, load_model, score_images
from unet_search.train.engine import otsu_val_dice, val_indices


def test_scores_of_whole_images_are_the_kept_epochs_validation_numbers(
    trained_model: TrainedModel,
) -> None:
    """Validation equals prediction: `score_images` of the validation images (segmented as
    `predict` does) gives the kept epoch's val_dice, val_iou and DSB score; Otsu's too."""
    cfg, arrays, best = trained_model.cfg, trained_model.arrays, trained_model.best
    predictor = Predictor.from_dir(trained_model.path)
    indices = [int(i) for i in val_indices(cfg, arrays)]
    scores = score_images(predictor, arrays, indices, "val_")
    for key in ("val_dice", "val_iou", "val_dsb_score"):
        assert scores[key] == pytest.approx(best[key], abs=1e-6), key
    assert scores["otsu_val_dice"] == pytest.approx(otsu_val_dice(arrays, cfg), abs=1e-9)
    assert scores["val_dice"] > 0.5  # trained: an untrained net scores < 0.3 here


def test_paths_arrays_and_a_batch_give_the_same_masks_at_original_sizes(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    arrays = trained_model.arrays
    predictor = load_model(trained_model.path)  # a local folder: no MLflow involved
    image = arrays.image(0)
    path = tmp_path / "a.png"
    Image.fromarray(image).save(path)
    rgba = np.concatenate([image, np.full((*image.shape[:2], 1), 255, np.uint8)], axis=2)
    from_path, from_array, from_rgba = predictor.predict([path, image, rgba])
    assert from_path.shape == image.shape[:2] and from_path.dtype == np.uint8
    assert (from_path == from_array).all() and (from_array == from_rgba).all()
    assert set(np.unique(from_array)) <= {0, 1} and from_array.any()
    odd = image[:29, :41]
    (alone,) = predictor.predict([odd])
    batch = predictor.predict(np.stack([odd, odd]))  # one (N, H, W, 3) array
    assert alone.shape == (29, 41) and all((m == alone).all() for m in batch)
    gray = predictor.predict([image.mean(axis=2).astype(np.uint8)])[0]
    assert gray.shape == image.shape[:2]
    # any bit depth, as the files decode: a float image in [0, 1] is the 8-bit one / 255
    # (the model's normalization is x over the type's full scale), a 16-bit one x 257
    for same in (image.astype(np.float32) / 255, image.astype(np.uint16) * 257):
        assert (predictor.predict([same])[0] == from_array).mean() >= 0.999


def test_bad_inputs_are_clear_errors(trained_model: TrainedModel, tmp_path: Path) -> None:
    predictor = Predictor.from_dir(trained_model.path)
    with pytest.raises(
        UserError, match=r"must be 2-D gray, RGB or RGBA, but has shape \(8, 8, 5\)"
    ):
        predictor.predict([np.zeros((8, 8, 5), np.uint8)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is not a unet-search model"):
        find_model_dir(tmp_path / "empty")
    nested = tmp_path / "mlflow_model" / "artifacts" / "model_dir"
    shutil.copytree(trained_model.path, nested)
    assert find_model_dir(tmp_path / "mlflow_model") == nested
