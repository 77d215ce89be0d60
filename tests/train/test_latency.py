"""``inference_ms`` measured one way: the fixed image, the warm-up, the median (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unet_search.core.config import RunConfig
from unet_search.models.build import build_model
from unet_search.train.latency import REPEATS, inference_ms, latency_image, median_ms


def test_every_latency_is_measured_on_the_same_noise_image() -> None:
    image = latency_image((40, 30))
    assert image.shape == (40, 30, 3) and image.dtype == np.uint8
    assert np.array_equal(image, latency_image((40, 30)))
    assert image.std() > 50  # noise: no model can skip work on it


def test_the_median_is_of_the_timed_passes_after_one_warm_up() -> None:
    calls: list[str] = []
    ms = median_ms(lambda: calls.append("timed"), "cpu", lambda: calls.append("warm-up"))
    assert calls == ["warm-up"] + ["timed"] * REPEATS
    assert 0.0 <= ms < 50.0
    calls.clear()
    median_ms(lambda: calls.append("timed"))  # no warm-up given: one more pass
    assert calls == ["timed"] * (REPEATS + 1)


def test_a_larger_image_takes_longer_through_the_predictors_tiles() -> None:
    torch.manual_seed(0)
    cfg = RunConfig.from_dict({"base_filters": 4, "depth": 2, "patch_size": 32})
    model = build_model(cfg.model, 1).eval()
    small = min(inference_ms(model, cfg, (32, 32)) for _ in range(2))
    large = min(inference_ms(model, cfg, (128, 128)) for _ in range(2))  # 16+ tiles, not 1
    assert 0.0 < small < large
    assert large / small > 3, (small, large)
    with pytest.raises(RuntimeError):  # a model that cannot run is not timed as fast
        inference_ms(torch.nn.Conv2d(5, 1, 1), cfg, (32, 32))
