"""The files of a BioImage.IO package besides its description
(:mod:`unet_search.serve.bioimageio`): the test input cut from an image and the values the
graph takes from it, the axes' sizes and halo, the names of the channels and classes, the
cover, the documentation and the conda environment of the PyTorch weights' source."""

from __future__ import annotations

import getpass
import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unet_search.data.stats import as_channels, value_range
from unet_search.models.card import ModelCard
from unet_search.serve.standalone import input_channels
from unet_search.train.sliding import Preprocessing

__all__ = [
    "channel_names",
    "class_names",
    "cover",
    "default_author",
    "DEFAULT_LICENSE",
    "documentation",
    "environment",
    "EPS",
    "as_trained",
    "axis_sizes",
    "AxisSizes",
    "INPUT_ID",
    "OUTPUT_ID",
    "PackageInfo",
    "cut_test_input",
    "unit_values",
]

INPUT_ID, OUTPUT_ID = "image", "probabilities"
# The model zoo's most common license; the package says which, and `--license` changes it.
DEFAULT_LICENSE = "CC-BY-4.0"
EPS = 1e-6  # the spec's eps of scale_range and zero_mean_unit_variance


@dataclass(frozen=True)
class PackageInfo:
    """What the package says besides the model: its ``name``, ``license`` (an SPDX id),
    ``authors`` (default: git's user.name, else the login name), a ``description`` and the
    search's provenance (``config.unet_search``: data fingerprint, test scores, run)."""

    name: str
    license: str = DEFAULT_LICENSE
    authors: Sequence[str] = ()
    description: str = ""
    provenance: Mapping[str, Any] = field(default_factory=dict)


def default_author() -> str:
    try:
        name = subprocess.run(
            ["git", "config", "user.name"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        name = ""
    return name or getpass.getuser()


@dataclass(frozen=True)
class AxisSizes:
    """The sizes of the package's y and x axes, in the image's own pixels: the input is any
    ``min + n * step`` (``step`` 0: exactly ``min``); a tiling tool crops ``halo`` from each
    side of an output tile."""

    min: tuple[int, int]
    step: int
    halo: tuple[int, int]


def _fixed_side(tile: int, scale: float) -> int:
    """The image side that the model's scale resamples to ``tile`` (Python's rounding)."""
    start = int(tile / scale)
    for side in range(max(1, start - 2), start + 3):
        if max(1, round(side * scale)) == tile:
            return side
    raise ValueError(f"no image side becomes its {tile}-px tile at scale {scale:g}")


def axis_sizes(card: ModelCard, multiple: int, fixed: bool = False) -> AxisSizes:
    """``step``: the network's ``multiple`` (``2**depth``) at the model's scale, rounded up;
    ``min``: one tile at the model's scale, rounded up to a step (the graph does not pad a
    smaller image to a tile as ``predict`` does, so it never sees one); ``halo``: half of
    ``predict``'s tile overlap on each side. ``fixed`` (a graph of its tile only,
    :func:`unet_search.serve.standalone.fixed_tile`): exactly the image size that becomes
    the tile. Resize mode sees the image whole: any size of 16 pixels or more, no halo."""
    tiling = Preprocessing.of_card(card).tiling
    if tiling.input_mode == "resize":
        return AxisSizes((16, 16), 1, (0, 0))
    scale = tiling.scale
    tile = [int(np.ceil(t / scale - 1e-9)) for t in tiling.patch]
    halos = [round(t * tiling.overlap / 2) for t in tile]
    if fixed:
        sides = [_fixed_side(t, scale) for t in tiling.patch]
        return AxisSizes((sides[0], sides[1]), 0, (halos[0], halos[1]))
    step = int(np.ceil(multiple / scale - 1e-9))
    mins = [step * -(-max(t, 2 * h + 1) // step) for t, h in zip(tile, halos, strict=True)]
    return AxisSizes((mins[0], mins[1]), step, (halos[0], halos[1]))


def unit_values(image: np.ndarray, card: ModelCard) -> np.ndarray:
    """(1, C, H, W) raw image -> its values after the package's preprocessing (float32): what
    the graph takes. As the BioImage.IO runtimes compute them (per-channel percentiles with
    linear interpolation, mean and std over y and x, eps 1e-6)."""
    norm = Preprocessing.of_card(card).normalization
    x = image.astype(np.float64)
    if norm.name == "percentile":
        low, high = (np.percentile(x, p, axis=(2, 3), keepdims=True) for p in norm.percentiles)
        x = (x - low) / (high - low + EPS)
    elif norm.name == "zscore":
        x = (x - x.mean(axis=(2, 3), keepdims=True)) / (x.std(axis=(2, 3), keepdims=True) + EPS)
    else:
        x = x / value_range(image.dtype)
    return x.astype(np.float32)


def as_trained(image: np.ndarray, card: ModelCard) -> np.ndarray:
    """(H, W, C) ``image`` in the type and channels the package takes (the training images'):
    its values mapped from its type's full scale to theirs, its channels as the network's
    predictor would take them (a grey image's channel repeated, a colour one's mean)."""
    dtype = np.dtype(str(card.preprocessing.get("image_dtype", "uint8")))
    channels = input_channels(card)
    if image.dtype == dtype and image.shape[-1] == channels:
        return image
    unit = as_channels(image.astype(np.float64) / value_range(image.dtype), channels)
    full = value_range(dtype)
    out = np.clip(np.rint(unit * full), 0, full) if dtype.kind == "u" else unit
    return out.astype(dtype)


def cut_test_input(image: np.ndarray, card: ModelCard, sizes: AxisSizes) -> np.ndarray:
    """(1, C, h, w) raw test tensor: one tile at the model's scale (the axes' smallest size)
    from the centre of ``image`` (H, W, C), mirrored out where the image is smaller."""
    image = as_trained(image[..., None] if image.ndim == 2 else image, card)
    pad = [(0, max(0, s - have)) for s, have in zip(sizes.min, image.shape[:2], strict=True)]
    image = np.pad(image, [*pad, (0, 0)], mode="symmetric") if any(p for _, p in pad) else image
    top, left = ((have - s) // 2 for have, s in zip(image.shape[:2], sizes.min, strict=True))
    crop = image[top : top + sizes.min[0], left : left + sizes.min[1]]
    return np.ascontiguousarray(crop.transpose(2, 0, 1)[None])


def channel_names(count: int) -> list[str]:
    if count == 1:
        return ["grey"]
    if count == 3:
        return ["red", "green", "blue"]
    return [f"channel{i}" for i in range(count)]


def class_names(card: ModelCard) -> list[str]:
    target = str(card.preprocessing.get("target", "semantic"))
    if card.num_classes == 1:
        return ["foreground"]
    if target == "boundary":
        return ["background", "interior", "boundary"]
    if target == "distance":
        return ["background", *(f"level{i}" for i in range(1, card.num_classes))]
    return ["background", *(f"class{i}" for i in range(1, card.num_classes))]


def _display(raw: np.ndarray) -> np.ndarray:
    """(1, C, H, W) raw image -> (H, W, 3) uint8, stretched over its 1st-99.8th percentile."""
    x = raw[0].astype(np.float64).mean(axis=0) if raw.shape[1] != 3 else raw[0].transpose(1, 2, 0)
    low, high = np.percentile(x, (1.0, 99.8))
    x = np.clip((x - low) / max(high - low, 1e-9), 0, 1)
    x = x if x.ndim == 3 else np.repeat(x[..., None], 3, axis=-1)
    return (x * 255).astype(np.uint8)


def cover(raw: np.ndarray, probabilities: np.ndarray, threshold: float, path: Path) -> None:
    """The image | the image with its predicted classes tinted, 2:1 as the model zoo shows
    covers."""
    from PIL import Image

    image = _display(raw)
    p = probabilities[0]
    classes = (p[0] > threshold).astype(int) if p.shape[0] == 1 else p.argmax(axis=0)
    colours = np.array([[0, 0, 0], [255, 64, 64], [64, 200, 255], [255, 220, 0], [120, 255, 120]])
    tint = colours[np.minimum(classes, len(colours) - 1)]
    overlay = np.where(classes[..., None] > 0, 0.45 * image + 0.55 * tint, image)
    both = np.concatenate([image, overlay.astype(np.uint8)], axis=1)
    zoom = max(1, 512 // both.shape[1])  # a tile of a few dozen pixels, shown at 512 or more
    both = both.repeat(zoom, axis=0).repeat(zoom, axis=1)
    h, w = both.shape[:2]
    canvas = np.zeros((max(h, w // 2), max(w, 2 * h), 3), np.uint8)
    canvas[:h, :w] = both
    Image.fromarray(canvas).save(path)


def documentation(card: ModelCard, info: PackageInfo, sizes: AxisSizes) -> str:
    """The package's README.md: what goes in and comes out, how to tile, how to get
    instances, how it was validated and where it comes from."""
    pre = Preprocessing.of_card(card)
    (min_y, min_x), step, (halo_y, halo_x) = sizes.min, sizes.step, sizes.halo
    channels = input_channels(card)
    if step:
        sizes_text = (
            f"Any height of {min_y} + n x {step} pixels and width of {min_x} + n x {step}: "
            "one tile or more."
        )
    else:
        sizes_text = (
            f"A height of {min_y} and a width of {min_x} pixels exactly, the model's tile: its "
            "ASPP bottleneck's atrous rates are fitted to it."
        )
    predict = "unet-search predict --model MODEL --input IMAGES --output OUT"
    if card.num_classes == 1:
        output = f"the foreground's probability; a pixel is foreground above {pre.threshold:g}."
    else:
        output = "the classes' probabilities (a softmax); a pixel's class is the most probable."
    if pre.tiling.input_mode == "resize":
        tiling = "The model sees the whole image resized to its square: predict whole images."
    else:
        tiling = (
            f"Tile with a halo of {halo_y} (y) and {halo_x} (x) pixels on each side, half of "
            "the overlap unet-search predicts with. unet-search blends overlapping tiles with "
            "Gaussian weights, so its probabilities differ slightly where tiles meet."
        )
    if pre.target in ("boundary", "distance"):
        instances = (
            "The classes are a watershed's input, not instances: touching objects are parted "
            f"by unet-search's own decoding, `{predict} --output-kind instances` (or "
            "`unet_search.load_model(MODEL).predict(images, instances=True)`)."
        )
    else:
        instances = (
            "Objects are the connected regions of the mask; "
            f"`{predict} --output-kind instances` labels them and tables them."
        )
    scores = dict(info.provenance.get("test") or {})
    validation = (
        "Held-out test images no trial saw, segmented whole as `unet-search predict` "
        "segments them: " + ", ".join(f"{k} {float(v):.4f}" for k, v in scores.items()) + "."
        if scores
        else "Not scored on held-out images here: see the search that made the model."
    )
    lines = [
        f"# {info.name}",
        "",
        info.description or "A UNet trained and chosen by unet-search.",
        "",
        "## Input",
        f"`{INPUT_ID}`: (batch, channel, y, x), {channels} channel(s) "
        f"({', '.join(channel_names(channels))}) in the training images' own type and pixel "
        f"size (the graph resamples by the model's scale, {pre.tiling.scale:g}). {sizes_text} "
        f"The normalization (`{pre.normalization.name}`) is the package's preprocessing.",
        "",
        "## Output",
        f"`{OUTPUT_ID}`: (batch, channel, y, x) at the input's size, a channel per class "
        f"({', '.join(class_names(card))}): {output}",
        "",
        "## Tiling",
        tiling,
        "",
        "## Instances",
        instances,
        "",
        "## Validation",
        validation,
        "",
        "## Provenance",
        "```json",
        json.dumps(dict(info.provenance), indent=2, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)


def environment() -> str:
    """The conda environment the PyTorch weights' source needs: this package and PyTorch."""
    from importlib.metadata import version

    return "\n".join(
        [
            "name: unet-search",
            "channels: [conda-forge]",
            "dependencies:",
            "  - python=3.11",
            "  - pip",
            "  - pip:",
            f"    - unet-search=={version('unet-search')}",
            f"    - torch=={torch.__version__.split('+')[0]}",
            "",
        ]
    )
