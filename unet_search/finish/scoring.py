"""The best model scored once on the held-out test split, through ``predict``: nothing in the
search saw these images, and these are the numbers its registered version carries."""

from __future__ import annotations

from pathlib import Path

import torch

from unet_search.core.names import BEST_MODEL_DIR
from unet_search.data.dataset import DatasetArrays
from unet_search.data.split import split_indices
from unet_search.search.context import SearchContext
from unet_search.search.summaries import TrialSummary
from unet_search.serve.inference import Predictor, find_model_dir, score_images
from unet_search.tracking.client import download_artifacts

__all__ = ["download_best_model", "test_scores"]


def download_best_model(ctx: SearchContext, best: TrialSummary, tmp: Path) -> Path:
    """The best trial's kept model (its ``best_model`` artifact), downloaded under ``tmp``."""
    assert best.run_id is not None
    return download_artifacts(ctx.tracking_uri, best.run_id, BEST_MODEL_DIR, tmp)


def test_scores(ctx: SearchContext, model: Path, arrays: DatasetArrays) -> dict[str, float]:
    """The kept model's scores on the held-out test images, segmented as ``unet-search
    predict`` does (whole images at their original sizes), and Otsu's on the same images;
    empty without a test split. Nothing in the search saw these images: this is the number
    the registered version carries."""
    test = split_indices(len(arrays), ctx.spec.base_config().data).test
    if not len(test):
        return {}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    predictor = Predictor.from_dir(find_model_dir(model), device)
    scores = score_images(predictor, arrays, [int(i) for i in test], "test_")
    return {**scores, "test_images": float(len(test))}
