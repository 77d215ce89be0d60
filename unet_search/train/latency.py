"""``inference_ms``, measured one way everywhere: the median milliseconds per image of one
fixed image of ``search.latency_image`` pixels predicted whole through the predictor's path
(:func:`unet_search.train.sliding.predict_logits`: the model's tiles, overlap and TTA), on
the device given, at PyTorch's thread count (stated beside the number), after one warm-up
pass. Latency does not depend on the weights, so a trial measures its untrained model, before
its first epoch, and a limit on it is checked before anything trains.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from unet_search.core.config import RunConfig
from unet_search.train.sliding import Network, predict_logits, tiling_of
from unet_search.train.transforms import Normalization

__all__ = ["REPEATS", "inference_ms", "latency_image", "median_ms"]

REPEATS = 3  # timed passes after the warm-up; the median is the number


def latency_image(size: tuple[int, int]) -> np.ndarray:
    """The fixed (H, W, 3) uint8 image every latency is measured on (noise: no model can
    skip work on it)."""
    return np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)


def median_ms(
    predict: Callable[[], object],
    device: torch.device | str = "cpu",
    warm_up: Callable[[], object] | None = None,
) -> float:
    """The median ms of ``predict()`` over :data:`REPEATS` passes after a warm-up
    (``warm_up()``, else one more ``predict()``)."""
    (warm_up or predict)()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        predict()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def inference_ms(
    model: Network, cfg: RunConfig, size: tuple[int, int], device: torch.device | str = "cpu"
) -> float:
    """The latency of ``model`` predicting :func:`latency_image` of ``size`` as run ``cfg``
    predicts (one image at a time)."""
    tiling, unit = tiling_of(cfg), Normalization.named("unit")  # normalizing costs the same
    channels = cfg.model.in_channels

    def predict(image: np.ndarray) -> object:
        return predict_logits(model, image, tiling, unit, channels, device)

    # Warmed up on one tile: the first call's allocations, not a whole image's time.
    tile = latency_image(cfg.data.input_size)
    return median_ms(partial(predict, latency_image(size)), device, partial(predict, tile))
