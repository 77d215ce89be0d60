"""The one whole-image predictor (sliding window, overlap-tile, resize, flips) that validation
and every way to predict share."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from unet_search.core.sections import ModelConfig
from unet_search.data.synthetic import render_sample
from unet_search.models.build import build_model
from unet_search.serve.inference import Predictor, load_model
from unet_search.train.sliding import (
    FLIPS,
    Tiling,
    gaussian_weights,
    predict_logits,
    predict_logits_many,
    tile_starts,
)

FIXTURE = Path(__file__).parents[1] / "fixtures" / "legacy_resize_model"


def _image(seed: int, h: int, w: int) -> np.ndarray:
    return render_sample(np.random.default_rng(seed), h, w)[0][..., :3]


def _model(padding: str = "same", depth: int = 2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(depth=depth, base_filters=4, padding=padding, batchnorm=False)
    return build_model(cfg, 1).eval()


@pytest.mark.parametrize(
    ("size", "tile", "overlap"), [(100, 32, 0.5), (64, 32, 0.5), (33, 32, 0.5), (200, 48, 0.25)]
)
def test_tiles_cover_the_image_with_at_most_the_step(size: int, tile: int, overlap: float) -> None:
    starts = tile_starts(size, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == size
    steps = np.diff(starts)
    assert (steps > 0).all() and (steps <= int(tile * (1 - overlap))).all()


def test_gaussian_weights_peak_in_the_middle_with_sigma_an_eighth_of_the_tile() -> None:
    w = gaussian_weights(64, 32)
    assert w.shape == (64, 32) and float(w.max()) == pytest.approx(1.0, abs=0.02)
    assert float(w.min()) > 0  # corners stay defined
    # Along the 64-px side, sigma = 8 px: the weight falls as exp(-d^2 / (2 * 8^2)).
    column = w[:, 15:17].mean(1)
    for y in (23, 40, 50, 60):
        d = y - 31.5
        want = np.exp(-(d**2) / 128) / np.exp(-(0.5**2) / 128)  # the peak pixel is 0.5 off
        assert float(column[y] / column.max()) == pytest.approx(want, rel=1e-4)


def test_a_tiled_prediction_has_no_seams() -> None:
    """A trained model (the legacy fixture's weights), tiles of 64 px with half overlap,
    against one pass over the whole 192x160 image."""
    model, image = Predictor.from_dir(FIXTURE / "model").model, _image(1, 192, 160)
    whole = predict_logits(model, image, Tiling(patch=(192, 160)), "unit", 3)
    tiled = predict_logits(model, image, Tiling(patch=(64, 64)), "unit", 3)
    assert whole.shape == tiled.shape == (1, 192, 160)
    # Measured: the mean |difference| is 0.45% of the logits' spread and the labels agree on
    # 99.94% of the pixels (tiles of 96 px: 0.05% and 100%; of 32 px, about this model's
    # receptive field: 5.4% and 98.97%). Only what a tile's own border sees differs, and the
    # Gaussian weights it down.
    spread = float(whole.std())
    assert spread > 0.5  # a model that says something
    assert float((whole - tiled).abs().mean()) < 0.01 * spread
    assert float(((whole > 0) == (tiled > 0)).float().mean()) > 0.999


def test_an_image_smaller_than_a_tile_is_padded_and_cropped_back() -> None:
    model, image = _model(), _image(2, 20, 45)
    out = predict_logits(model, image, Tiling(patch=(32, 32)), "unit", 3)
    assert out.shape == (1, 20, 45) and torch.isfinite(out).all()


def test_overlap_tile_of_a_valid_unet_equals_one_pass_over_the_mirrored_image() -> None:
    """The unpadded UNet's output tiles cover the image exactly, each seeing real pixels:
    the same logits as one pass of the network over the whole mirror-padded image."""
    model, image = _model(padding="valid", depth=2), _image(3, 70, 90)
    tiled = predict_logits(model, image, Tiling(patch=(24, 24)), "unit", 3)
    whole = predict_logits(model, image, Tiling(patch=(70, 90)), "unit", 3)
    assert tiled.shape == (1, 70, 90)
    assert torch.allclose(tiled, whole, atol=1e-4)


@pytest.mark.parametrize("dims", FLIPS[1:])
def test_flip_tta_is_exactly_equivariant(dims: tuple[int, ...]) -> None:
    model, image = _model(), _image(4, 64, 48)
    plan = Tiling(patch=(32, 32), tta="flips")
    flipped = np.ascontiguousarray(np.flip(image, axis=tuple(d + 2 for d in dims)))
    a = predict_logits(model, flipped, plan, "unit", 3)
    b = torch.flip(predict_logits(model, image, plan, "unit", 3), dims)
    assert torch.allclose(a, b, atol=1e-5)
    plain = predict_logits(model, image, Tiling(patch=(32, 32)), "unit", 3)
    assert not torch.allclose(plain, torch.flip(b, dims), atol=1e-3)  # flips did something


@pytest.mark.parametrize("tta", ["none", "flips"])
def test_resize_mode_predicts_a_batch_as_it_predicts_each_image(tta: str) -> None:
    model = _model(depth=2)
    images = [_image(k, h, w) for k, (h, w) in enumerate([(40, 70), (97, 33), (64, 64)] * 7)]
    plan = Tiling(input_mode="resize", image_size=48, tta=tta)
    together = predict_logits_many(model, images, plan, "zscore", 3)  # 2 batches (16 + 5)
    assert [t.shape[-2:] for t in together] == [im.shape[:2] for im in images]
    for image, batched in zip(images, together, strict=True):
        alone = predict_logits(model, image, plan, "zscore", 3)
        assert torch.allclose(alone, batched, atol=1e-5)


def test_a_model_registered_before_patch_mode_predicts_as_before() -> None:
    """tests/fixtures/legacy_resize_model: saved, with its masks, by the code before patch
    mode (see its README); its preprocessing has no input_mode."""
    expected = np.load(FIXTURE / "expected.npz")
    predictor = load_model(FIXTURE / "model")
    assert predictor.tiling.input_mode == "resize" and predictor.tiling.image_size == 64
    masks = predictor.predict([expected["image0"], expected["image1"]])
    for mask, want in zip(masks, (expected["mask0"], expected["mask1"]), strict=True):
        assert mask.shape == want.shape
        assert float((mask == want).mean()) > 0.999, float((mask == want).mean())


def test_a_4000_pixel_image_predicts_in_bounded_memory(tmp_path: Path) -> None:
    """Tiles are accumulated: the peak memory of predicting a 4000x4000 image stays well
    below what one pass over the whole image would need; its zscore statistics come from
    histograms (a float64 copy of the image, as before, took 384 MB more: 918 MB)."""
    code = """
import resource, numpy as np, torch
from unet_search.core.sections import ModelConfig
from unet_search.models.build import build_model
from unet_search.train.sliding import Tiling, predict_logits
torch.manual_seed(0)
model = build_model(ModelConfig(depth=2, base_filters=2, batchnorm=False), 1).eval()
image = np.random.default_rng(0).integers(0, 255, (4000, 4000, 3), dtype=np.uint8)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
plan = Tiling(patch=(512, 512), overlap=0.0, batch_size=2)
out = predict_logits(model, image, plan, "zscore", 3)  # whole-image statistics too
assert out.shape == (1, 4000, 4000), out.shape
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    before_kb, peak_kb = (int(v) for v in proc.stdout.split())
    # The image (48 MB as uint8, 192 MB as float32), the logits and the weight sum (64 MB
    # each): ~400 MB over the start. A whole-image pass of this model would hold its
    # activations, 2 + 2 + 4 + 4 + 8 + ... channels at 4000x4000: over 2 GB.
    assert (peak_kb - before_kb) / 1024 < 700, (before_kb, peak_kb)
