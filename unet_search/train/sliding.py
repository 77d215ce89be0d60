"""Whole-image prediction at the data's own scale: the one predictor that validation and every
way to predict (``predict``, ``load_model``, the pyfunc, ``mlflow models serve``) share.

Patch mode (REFERENCE.md section 5, as nnU-Net and MONAI do it): the image is cut into tiles
of the training patch size that overlap by ``overlap`` (0.5: a step of half a tile); each
tile's logits are weighted by a Gaussian (sigma = 1/8 of the tile), accumulated in float32
and divided by the summed weights, so no seam shows where tiles meet. An image smaller than a
tile is mirror-padded to it and cropped back. An unpadded (``padding: valid``) UNet predicts
by overlap-tile instead (Ronneberger et al.): the image is mirror-padded by the network's
margin and its output tiles cover the image exactly, each seeing the real pixels around it.

Resize mode (the Keras seed): the image is resized to the training square, and the logits
back to the image's size (bilinear), as ``predict`` always did.

``tta="flips"`` averages the logits of the image and its three mirror images (each predicted
whole, then flipped back), so a flipped image gets exactly the flipped prediction.

No Ray and no MLflow here: the training engine calls it on each validation image.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from unet_search.core.config import RunConfig
from unet_search.core.sections import RESIZE_DEFAULT, network_input
from unet_search.data.stats import scaled_size
from unet_search.models.card import ModelCard
from unet_search.models.unet import mirror_pad, valid_input_size
from unet_search.train.instances import Decoding
from unet_search.train.transforms import (
    Normalization,
    normalization_for,
    resize_image,
    to_tensor,
)

__all__ = [
    "FLIPS",
    "gaussian_weights",
    "model_input",
    "Network",
    "tiling_of",
    "tiling_of_preprocessing",
    "Preprocessing",
    "predict_logits",
    "predict_logits_many",
    "Tiling",
    "preprocessing_of",
    "RESIZE_BATCH",
    "tile_starts",
]

# The four mirror images of a 2-D image: the flips form a group, so averaging over it makes
# the prediction exactly equivariant (a flipped input gives the flipped output).
FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


class Network(Protocol):
    """What predicts tiles: a PyTorch module, or onnxruntime's stand-in for one
    (:class:`unet_search.serve.onnx.OnnxNetwork`)."""

    def __call__(self, x: torch.Tensor, /) -> torch.Tensor: ...

    def eval(self) -> Any: ...


@dataclass(frozen=True)
class Tiling:
    """How a model sees a whole image: in tiles of the patch (patch mode, at ``scale``) or as
    one resized square (resize mode), with the overlap, the flips and the tiles a batch;
    part of the ``preprocessing`` a model is saved with.

    ``patch``: (height, width) of the training patches and of the prediction tiles (patch
    mode); ``image_size``: the square every image is resized to (resize mode); ``scale``: the
    factor images are resampled by before the model (patch mode; 1.0 = the data's own scale).
    """

    input_mode: str = "patch"
    patch: tuple[int, int] = (128, 128)
    image_size: int = 128
    scale: float = 1.0
    overlap: float = 0.5
    tta: str = "none"
    batch_size: int = 8

    @property
    def tile(self) -> tuple[int, int]:
        """What the network sees at once: a patch-mode tile, or resize mode's square."""
        return network_input(self.input_mode, self.patch, self.image_size)


def tiling_of(cfg: RunConfig, batch_size: int = 8) -> Tiling:
    """How a run's model sees whole images (validation and every later prediction)."""
    data, train = cfg.data, cfg.train
    return Tiling(
        data.input_mode,
        data.patch_size,
        data.square,
        data.scale,
        train.tile_overlap,
        train.tta,
        batch_size,
    )


def tiling_of_preprocessing(pre: Mapping[str, Any], batch_size: int = 8) -> Tiling:
    """The tiling a saved model's ``preprocessing`` describes; a model saved before patch mode
    (no ``input_mode``) resized every image to ``image_size``."""
    mode = str(pre.get("input_mode", "resize"))
    patch = pre.get("patch_size") or [128, 128]
    return Tiling(
        mode,
        (int(patch[0]), int(patch[1])),
        int(pre.get("image_size") or RESIZE_DEFAULT),
        float(pre.get("scale", 1.0)),
        float(pre.get("tile_overlap", 0.5)),
        str(pre.get("tta", "none")),
        batch_size,
    )


@dataclass(frozen=True)
class Preprocessing:
    """A saved model's ``preprocessing`` (model_config.json), read once, typed: how images
    are seen (the tiling), normalized and thresholded. Written by :func:`preprocessing_of`
    (the file keeps its keys: other tools read them); models saved before patch mode, or
    before the statistics were written out, read as they were trained."""

    tiling: Tiling
    normalization: Normalization
    in_channels: int
    num_classes: int  # the task's (the network's may differ: data.target)
    threshold: float
    target: str = "semantic"  # what the network learned (unet_search.data.targets)
    decoding: Decoding = field(default_factory=Decoding)  # how its output becomes instances

    @classmethod
    def of_card(cls, card: ModelCard) -> Preprocessing:
        """The preprocessing of a saved model's card."""
        return cls.from_dict(card.preprocessing, card.num_classes)

    @classmethod
    def from_dict(cls, pre: Mapping[str, Any], num_classes: int = 1) -> Preprocessing:
        """``num_classes``: the model's, for models whose preprocessing lacks it."""
        return cls(
            tiling_of_preprocessing(pre),
            Normalization.of_preprocessing(pre),
            int(pre.get("in_channels", 3)),
            int(pre.get("num_classes", num_classes)),
            float(pre.get("threshold", 0.5)),
            str(pre.get("target", "semantic")),
            Decoding.from_dict(pre.get("decoding")),
        )


@functools.cache
def _gaussian(height: int, width: int) -> torch.Tensor:
    def axis(n: int) -> np.ndarray:
        sigma = n / 8.0
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        return np.exp(-(x**2) / (2.0 * sigma**2))

    w = np.outer(axis(height), axis(width))
    w /= w.max()
    # The corners of a tile are near 0: keep them positive so that a pixel covered by corners
    # only is still defined (as nnU-Net does).
    w = np.maximum(w, w[w > 0].min(), out=w)
    return torch.from_numpy(w.astype(np.float32))


def gaussian_weights(height: int, width: int) -> torch.Tensor:
    """(height, width) float32 weights, 1 at the centre, sigma = 1/8 of each side."""
    return _gaussian(int(height), int(width)).clone()


def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``size`` (>= tile) with steps of at
    most ``tile * (1 - overlap)``, the first at 0 and the last ending at ``size``."""
    if size <= tile:
        return [0]
    step = max(1, int(tile * (1.0 - overlap)))
    count = math.ceil((size - tile) / step) + 1
    return [round(i * (size - tile) / (count - 1)) for i in range(count)]


def _windows(
    height: int, width: int, tile: tuple[int, int], overlap: float
) -> list[tuple[int, int]]:
    return [
        (y, x)
        for y in tile_starts(height, tile[0], overlap)
        for x in tile_starts(width, tile[1], overlap)
    ]


def _batched(items: list[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _sliding(
    forward: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile: tuple[int, int],
    overlap: float,
    batch_size: int,
) -> torch.Tensor:
    """Gaussian-weighted sliding window over a (C, H, W) image -> (K, H, W) float32 logits."""
    _, h, w = image.shape
    th, tw = tile
    padded = mirror_pad(image[None], 0, max(th - h, 0), 0, max(tw - w, 0))[0]
    ph, pw = padded.shape[-2:]
    weight = _gaussian(th, tw).to(image.device)
    out: torch.Tensor | None = None
    norm = torch.zeros((ph, pw), dtype=torch.float32, device=image.device)
    for chunk in _batched(_windows(ph, pw, tile, overlap), batch_size):
        batch = torch.stack([padded[:, y : y + th, x : x + tw] for y, x in chunk])
        logits = forward(batch).float()
        if out is None:
            out = torch.zeros((logits.shape[1], ph, pw), dtype=torch.float32, device=image.device)
        for (y, x), logit in zip(chunk, logits, strict=True):
            out[:, y : y + th, x : x + tw] += logit * weight
            norm[y : y + th, x : x + tw] += weight
    assert out is not None, "an image has at least one tile"
    return (out / norm)[:, :h, :w]


def _overlap_tile(
    net: Network, depth: int, image: torch.Tensor, tile: tuple[int, int], batch_size: int
) -> torch.Tensor:
    """Overlap-tile for an unpadded UNet: output tiles of ``tile`` cover the image exactly;
    each input window is the tile plus the network's margin of real (or, at the image's
    border, mirrored) pixels."""
    _, h, w = image.shape
    th, tw = min(tile[0], h), min(tile[1], w)
    (in_h, m_h), (in_w, m_w) = valid_input_size(th, depth), valid_input_size(tw, depth)
    rows, cols = math.ceil(h / th), math.ceil(w / tw)
    # Mirror the border by the margin, and the bottom/right by what the last tiles overhang.
    padded = mirror_pad(
        image[None], m_h, in_h - m_h + rows * th - h, m_w, in_w - m_w + cols * tw - w
    )[0]
    starts = [(r * th, c * tw) for r in range(rows) for c in range(cols)]
    out: torch.Tensor | None = None
    for chunk in _batched(starts, batch_size):
        batch = torch.stack([padded[:, y : y + in_h, x : x + in_w] for y, x in chunk])
        logits = net(batch).float()
        if out is None:
            out = torch.zeros((logits.shape[1], rows * th, cols * tw), dtype=torch.float32)
            out = out.to(image.device)
        for (y, x), logit in zip(chunk, logits, strict=True):
            out[:, y : y + th, x : x + tw] = logit[:, :th, :tw]
    assert out is not None
    return out[:, :h, :w]


def _once(model: Network, image: torch.Tensor, tiling: Tiling) -> torch.Tensor:
    if tiling.input_mode == "resize":
        return model(image[None]).float()[0]  # already the training square
    net, depth = getattr(model, "net", None), getattr(model, "depth", 0)
    if getattr(model, "padding", "same") == "valid" and net is not None:
        return _overlap_tile(net, depth, image, tiling.patch, tiling.batch_size)
    return _sliding(model, image, tiling.patch, tiling.overlap, tiling.batch_size)


def model_input(image: np.ndarray, tiling: Tiling) -> np.ndarray:
    """(H, W, C) image as the model sees it: resized to the square (resize mode) or
    resampled by ``scale`` (patch mode). The cache applies the same to training images."""
    h, w = image.shape[:2]
    if tiling.input_mode == "resize":
        return resize_image(image, (tiling.image_size, tiling.image_size))
    if tiling.scale != 1.0:
        return resize_image(image, scaled_size((h, w), tiling.scale))
    return image


def _flip_averaged(
    forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tta: str
) -> torch.Tensor:
    """``forward(x)``, or with ``tta: flips`` the mean of ``forward`` over the four mirror
    images, each flipped back (``x``: (C, H, W) or (N, C, H, W): the flips act on H, W)."""
    flips = FLIPS if tta == "flips" else FLIPS[:1]
    total: torch.Tensor | None = None
    for dims in flips:
        logits = forward(torch.flip(x, dims) if dims else x).float()
        logits = torch.flip(logits, dims) if dims else logits
        total = logits if total is None else total.add_(logits)
    assert total is not None
    if len(flips) > 1:
        total /= len(flips)
    return total


def _at_size(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(K, h, w) logits resampled (bilinear) to ``size`` when they are not that size."""
    if logits.shape[-2:] == size:
        return logits
    return F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]


@torch.no_grad()
def predict_logits(
    model: Network,
    image: np.ndarray,
    tiling: Tiling,
    normalization: Normalization | str,
    in_channels: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(H, W, C) image in its own values -> (K, H, W) float32 logits at the image's own size,
    in eval mode (on ``device``)."""
    module = getattr(model, "module", model)  # unwrap DDP: no collectives in prediction
    module.eval()
    x = to_tensor(model_input(image, tiling), normalization, in_channels).to(device)
    total = _flip_averaged(lambda t: _once(module, t, tiling), x, tiling.tta)
    return _at_size(total, image.shape[:2])


RESIZE_BATCH = 16  # resize mode: squares predicted together


@torch.no_grad()
def predict_logits_many(
    model: Network,
    images: Sequence[np.ndarray],
    tiling: Tiling,
    normalization: Normalization | str,
    in_channels: int,
    device: torch.device | str = "cpu",
) -> list[torch.Tensor]:
    """:func:`predict_logits` of many images. In resize mode every image becomes the same
    square, so :data:`RESIZE_BATCH` of them go through the model together (one at a time cost
    a small model half its speed, bench/inference.py); in patch mode each image's tiles are
    batched already."""
    if tiling.input_mode != "resize":
        return [
            predict_logits(model, im, tiling, normalization, in_channels, device) for im in images
        ]
    module = getattr(model, "module", model)
    module.eval()
    out: list[torch.Tensor] = []
    for start in range(0, len(images), RESIZE_BATCH):
        chunk = images[start : start + RESIZE_BATCH]
        x = torch.stack(
            [to_tensor(model_input(im, tiling), normalization, in_channels) for im in chunk]
        ).to(device)
        total = _flip_averaged(module, x, tiling.tta)
        out.extend(_at_size(logit, im.shape[:2]) for im, logit in zip(chunk, total, strict=True))
    return out


def preprocessing_of(
    cfg: RunConfig,
    norm: Normalization | None = None,
    decoding: Decoding | None = None,
    pixels: np.ndarray | None = None,
) -> dict[str, Any]:
    """What a downstream predictor must do to an image, saved next to the weights (read back
    by :class:`Preprocessing`). ``norm``: the run's measured normalization (needed for
    ``dataset``); ``decoding``: how its output becomes instances; ``pixels``: the training
    images' (their type and channels: what the served model takes; default 8-bit RGB)."""
    norm = norm or normalization_for(cfg)
    dtype, channels = ("uint8", 3) if pixels is None else (pixels.dtype.name, pixels.shape[1])
    return {
        "input_mode": cfg.data.input_mode,
        "patch_size": list(cfg.data.patch_size),
        "scale": cfg.data.scale,
        "tile_overlap": cfg.train.tile_overlap,
        "tta": cfg.train.tta,
        "image_size": cfg.data.square,  # resize mode's square
        "resize": "bilinear",
        "normalization": norm.name,
        "mean": list(norm.mean),
        "std": list(norm.std),
        **({"percentiles": list(norm.percentiles)} if norm.name == "percentile" else {}),
        "image_dtype": dtype,  # the training images' type and channels, as decoded
        "image_channels": channels,
        "in_channels": cfg.model.in_channels,
        "num_classes": cfg.data.num_classes,
        "threshold": cfg.train.threshold,
        "target": cfg.data.target,
        "decoding": (decoding or Decoding()).to_dict(),
    }
