"""Small datasets of each layout written for the data tests (images and masks as PNGs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["dsb", "images_masks", "png"]


def png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def images_masks(root: Path, n: int = 4, size: int = 20, mask_value: int = 255) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        png(root / "images" / f"img {i}.png", rng.integers(0, 255, (size, size + 3, 3), np.uint8))
        mask = np.zeros((size, size + 3), np.uint8)
        mask[2:8, 3:9] = mask_value
        png(root / "masks" / f"img {i}.png", mask)
    return root


def dsb(root: Path, n: int = 3) -> Path:
    for i in range(n):
        image_id = f"id{i}"
        png(
            root / image_id / "images" / f"{image_id}.png",
            np.full((16, 16, 4), 100 + i, np.uint8),
            "RGBA",
        )
        a, b = np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8)
        a[0:6, 0:6], b[4:10, 4:10] = 255, 255  # overlapping instances
        png(root / image_id / "masks" / "m1.png", a)
        png(root / image_id / "masks" / "m2.png", b)
    return root
