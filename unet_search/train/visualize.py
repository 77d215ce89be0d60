"""Pictures a person looks at: image | truth | prediction overlays (numpy + PIL only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from unet_search.data.stats import PERCENTILES, intensity

__all__ = ["PALETTE", "displayed", "overlay", "triptych"]

# Class colors (class 1 first); class 0 (background) is never tinted.
PALETTE = np.array(
    [[0, 255, 0], [255, 0, 255], [0, 200, 255], [255, 200, 0], [255, 64, 64], [128, 128, 255]],
    dtype=np.float32,
)


def displayed(image: np.ndarray) -> np.ndarray:
    """(H, W, C) image in its own values -> (H, W, 3) uint8 to look at: 8-bit as it is, deeper
    ones stretched from their 1st to their 99.8th percentile (grey: one channel repeated)."""
    if image.dtype != np.uint8:
        stats = intensity(image, grey=True, q=PERCENTILES)
        low, high = float(stats.low[0]), float(stats.high[0])
        scaled = (image.astype(np.float32) - low) * (255.0 / max(high - low, 1e-12))
        image = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    return np.repeat(image, 3, axis=2) if image.ndim == 3 and image.shape[2] == 1 else image


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Tint each labelled class of (H, W) ``labels`` over an (H, W, 3) uint8 image."""
    out = image.astype(np.float32).copy()
    for c in range(1, int(labels.max(initial=0)) + 1):
        where = labels == c
        out[where] = (1 - alpha) * out[where] + alpha * PALETTE[(c - 1) % len(PALETTE)]
    return np.clip(out, 0, 255).astype(np.uint8)


def triptych(
    images: Sequence[np.ndarray],
    truth: Sequence[np.ndarray],
    pred: Sequence[np.ndarray],
    min_side: int = 160,
) -> np.ndarray:
    """One row per sample: image | truth overlay | prediction overlay, each sample at its own
    size (rows are padded with white to the widest).

    Args:
        images: (H, W, C) each, in their own values (:func:`displayed`); truth, pred:
            (H, W) integer labels each.
        min_side: a small sample is enlarged (nearest, by a whole factor) until its shorter
            side has at least this many pixels.
    Returns:
        (rows, cols, 3) uint8 with 4-pixel white gutters.
    """
    gutter = 4
    rows = []
    for img, t, p in zip(map(displayed, images), truth, pred, strict=True):
        scale = max(1, -(-min_side // min(img.shape[:2])))
        tiles = [img, overlay(img, t), overlay(img, p)]
        tiles = [np.repeat(np.repeat(x, scale, 0), scale, 1) for x in tiles]
        h = tiles[0].shape[0]
        sep = np.full((h, gutter, 3), 255, np.uint8)
        rows.append(np.concatenate([tiles[0], sep, tiles[1], sep, tiles[2]], axis=1))
    width = max(row.shape[1] for row in rows)
    parts: list[np.ndarray] = []
    for row in rows:
        if parts:
            parts.append(np.full((gutter, width, 3), 255, np.uint8))
        pad = np.full((row.shape[0], width - row.shape[1], 3), 255, np.uint8)
        parts.append(np.concatenate([row, pad], axis=1))
    return np.concatenate(parts, axis=0)
