"""What ``predict`` writes about each object: one row per instance of an image (``--objects``).

Columns: ``image`` (the file's stem), ``id`` (its label in the instance PNG), ``area`` (pixels),
``centroid_y`` / ``centroid_x``, the bounding box ``bbox_top`` / ``bbox_left`` (inclusive) and
``bbox_bottom`` / ``bbox_right`` (exclusive), as scikit-image's regionprops gives them, and
``mean_intensity``: the mean over its pixels of the image's grey value (the channel mean, in
the image's own values: 0-255 for 8-bit images, 0-65535 for 16-bit ones).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from skimage.measure import regionprops_table

from unet_search.core.files import written_whole

__all__ = ["OBJECT_COLUMNS", "object_rows", "write_objects"]

OBJECT_COLUMNS = (
    "image",
    "id",
    "area",
    "centroid_y",
    "centroid_x",
    "bbox_top",
    "bbox_left",
    "bbox_bottom",
    "bbox_right",
    "mean_intensity",
)


def object_rows(name: str, image: np.ndarray, labels: np.ndarray) -> list[dict[str, Any]]:
    """One row per object of ``labels`` ((H, W) ints, 0 the background) in ``image``
    ((H, W) or (H, W, C), its own values), in label order."""
    grey = image if image.ndim == 2 else image[..., :3].mean(axis=2)
    table = regionprops_table(
        np.asarray(labels, np.int32),
        intensity_image=grey.astype(np.float64),
        properties=("label", "area", "centroid", "bbox", "intensity_mean"),
    )
    columns = (
        "label",
        "area",
        "centroid-0",
        "centroid-1",
        "bbox-0",
        "bbox-1",
        "bbox-2",
        "bbox-3",
        "intensity_mean",
    )
    return [
        {
            "image": name,
            **{
                key: (
                    round(float(value), 3) if key.startswith(("centroid", "mean")) else int(value)
                )
                for key, value in zip(OBJECT_COLUMNS[1:], values, strict=True)
            },
        }
        for values in zip(*(table[c] for c in columns), strict=True)
    ]


def write_objects(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write ``rows`` as a CSV with :data:`OBJECT_COLUMNS` (whole or not at all: written
    beside ``path``, then renamed onto it); returns how many were written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with written_whole(path) as partial, open(partial, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=OBJECT_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            count += 1
    return count
