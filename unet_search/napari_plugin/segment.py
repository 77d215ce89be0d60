"""What the napari widget does to an image, without Qt: load the model once, segment each 2D
plane of the layer as ``predict`` segments an image, and say what the Labels layer holds.

A layer's data is (H, W), (H, W, C) when it is RGB(A), or a stack of such planes (leading
axes: time, z, ...), each segmented on its own. The labels are what ``unet-search predict
--output-kind instances`` writes for a model with an instance target (``boundary``,
``distance``; ``semantic`` binary models too, their connected regions, when asked), else the
mask; the object table (:mod:`unet_search.serve.objects`) becomes the layer's features, one
row a label, ``index`` its value (napari's convention), ``plane`` its plane in a stack (a
stack's instances are numbered on through its planes, so that each label is one object).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unet_search.core.errors import UserError
from unet_search.serve.inference import Predictor, load_model
from unet_search.serve.objects import object_rows

__all__ = [
    "INSTANCE_TARGETS",
    "planes",
    "Segmentation",
    "segment",
    "segmenting",
    "tracking_text",
]

INSTANCE_TARGETS = ("boundary", "distance")  # the targets made to part touching objects


@dataclass(frozen=True)
class Segmentation:
    """``labels``: (..., H, W) int32, the layer's shape less its colour axis; ``kind``:
    ``instances`` or ``mask``; ``features``: the object table's columns (empty for a mask)."""

    labels: np.ndarray
    kind: str
    features: dict[str, list[Any]] = field(default_factory=dict)


def tracking_text() -> str:
    """Where ``models:/`` URIs resolve: the environment's ``MLFLOW_TRACKING_URI``, else the
    work dir's store (``UNET_SEARCH_HOME``), as every command reads it."""
    from unet_search.core.env import work_dir
    from unet_search.tracking.client import tracking_uri_of

    return tracking_uri_of(work_dir())


def planes(data: Any, rgb: bool) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """(the labels' shape, the index of each 2D plane) of an image layer's ``data``."""
    shape = tuple(int(n) for n in np.shape(data))
    spatial = shape[:-1] if rgb else shape
    if len(spatial) < 2:
        raise UserError(f"an image layer of shape {shape} has no height and width to segment.")
    return spatial, list(np.ndindex(*spatial[:-2]))


def segmenting(
    model: str | Predictor,
    data: Any,
    rgb: bool = False,
    name: str = "image",
    instances: bool | None = None,
) -> Generator[int, None, Segmentation]:
    """Segment an image layer's ``data`` with ``model`` (a URI or folder :func:`load_model`
    reads, or a loaded predictor), yielding the planes done after each (a progress bar's
    steps), returning the :class:`Segmentation`. ``instances``: None as the model's target
    says."""
    predictor = load_model(model) if isinstance(model, str) else model
    # a multi-class model asked for instances: Predictor.predict's one-line refusal
    as_instances = predictor.pre.target in INSTANCE_TARGETS if instances is None else instances
    shape, index = planes(data, rgb)
    labels = np.zeros(shape, np.int32)
    columns: dict[str, list[Any]] = {}
    for done, where in enumerate(index, 1):
        image = np.asarray(data[where])
        plane = predictor.predict([image], instances=as_instances)[0].astype(np.int32)
        if as_instances:
            plane[plane > 0] += int(labels.max())
            for row in object_rows(name, image, plane):
                row = {"index": row["id"], **({"plane": list(where)} if where else {}), **row}
                for key, value in row.items():
                    columns.setdefault(key, []).append(value)
        labels[where] = plane
        yield done
    return Segmentation(labels, "instances" if as_instances else "mask", columns)


def segment(
    model: str | Predictor,
    data: Any,
    rgb: bool = False,
    name: str = "image",
    instances: bool | None = None,
) -> Segmentation:
    """:func:`segmenting` to its end."""
    steps = segmenting(model, data, rgb, name, instances)
    while True:
        try:
            next(steps)
        except StopIteration as end:
            result: Segmentation = end.value
            return result
