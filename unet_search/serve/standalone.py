"""A saved model as one stand-alone network, for tools that run a graph and nothing else
(deepImageJ, ilastik, QuPath and the BioImage.IO runtimes): the image's *unit* values in,
per-class probabilities out, at the image's own size, with everything ``predict`` does between
those two inside the graph:

- the channels the network takes (a grey image repeated for a colour network, a colour image
  averaged for a grey one), then the normalization's fixed mean and std (``unit``,
  ``imagenet``, ``dataset``; the per-image ones, ``percentile`` and ``zscore``, are the
  package's preprocessing, before the graph);
- the model's ``scale``: the image resampled as :func:`unet_search.train.sliding.model_input`
  resamples it (area averaging where it shrinks, as OpenCV's ``INTER_AREA``; bilinear where it
  grows; the size rounded as Python rounds), or resize mode's square; in float32, where
  ``predict`` resamples an 8-bit image in 8 bits (a level off here and there: probabilities
  within 5e-3 of its own on the trained models of the tests; rounding to the levels here
  would make the graph's output jump between runtimes wherever an average falls on a half
  level);
- the network, padded as :class:`~unet_search.models.build.SegmentationModel` pads it, the
  four mirror images averaged when the model predicts with ``tta: flips``;
- the logits resampled back to the image's size (bilinear) and made probabilities (a
  sigmoid for a binary model's one output, else a softmax over the classes).

What stays outside: the sliding window (a tool tiles with the package's halo; the Gaussian
blending of ``predict`` is not a graph's), the threshold or arg-max, and the watershed that
makes instances. The unit values are the image over its type's full scale for the fixed
normalizations, or the package's per-image preprocessing (:mod:`unet_search.serve.bioimageio`).
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unet_search.core.errors import UserError
from unet_search.models.blocks import ASPP
from unet_search.models.build import build_model
from unet_search.models.card import ModelCard
from unet_search.serve.onnx import padded_forward
from unet_search.train.sliding import FLIPS, Preprocessing
from unet_search.train.transforms import PER_IMAGE

__all__ = [
    "fixed_tile",
    "input_channels",
    "NotOneGraph",
    "StandaloneNetwork",
    "unsupported",
]


class NotOneGraph(UserError):
    """A model no stand-alone graph can be (:func:`unsupported` says why)."""


def unsupported(model: nn.Module, pre: Preprocessing) -> str | None:
    """Why a model cannot be one graph (None: it can)."""
    del pre  # every input mode and scale can
    if getattr(model, "padding", "same") == "valid":
        return (
            "an unpadded (`padding: valid`) UNet predicts by overlap-tile, whose output is "
            "smaller than its input by a margin the graph cannot take from the image"
        )
    return None


def fixed_tile(model: nn.Module, pre: Preprocessing) -> bool:
    """Whether the model's graph takes its tile only: the ASPP bottleneck fits its atrous
    rates to the map it sees, so a graph traced at the tile holds the tile's rates."""
    return pre.tiling.input_mode == "patch" and any(isinstance(m, ASPP) for m in model.modules())


def input_channels(card: ModelCard) -> int:
    """The channels the graph takes: the training images' own (3 for models saved before
    they were written down), except for a grey network normalized per image, whose statistics
    are the grey image's: it takes the grey image (the tool gives the channels' mean)."""
    pre = Preprocessing.of_card(card)
    if pre.in_channels == 1 and pre.normalization.name in PER_IMAGE:
        return 1
    return int(card.preprocessing.get("image_channels", 3))


def _rounded(n: Any, p: int, q: int) -> Any:
    """``max(1, round(n * p / q))`` with Python's rounding (half to even) in integer steps,
    so that the size stays symbolic in an exported graph (ONNX has no ``round`` of a size)."""
    twice = 2 * n * p + q
    up = twice // (2 * q)
    tie = 1 - torch.sym_min(1, twice % (2 * q))
    return torch.sym_max(1, up - tie * (up % 2))


def _area(n_in: Any, n_out: Any) -> torch.Tensor:
    """(n_out, n_in) weights of area averaging: each output pixel the mean of the input it
    covers, a partly covered pixel by the part (OpenCV's ``INTER_AREA`` when shrinking)."""
    ratio = n_in / n_out
    i = torch.arange(n_out, dtype=torch.float32).unsqueeze(1)
    j = torch.arange(n_in, dtype=torch.float32).unsqueeze(0)
    covered = torch.minimum(j + 1, (i + 1) * ratio) - torch.maximum(j, i * ratio)
    return covered.clamp(min=0) / ratio


def _resampled(x: torch.Tensor, h: Any, w: Any, shrink: Any) -> torch.Tensor:
    """``x`` at (``h``, ``w``): area averaging when ``shrink`` (1), bilinear when not (0)."""
    area = torch.einsum("oh,nchw,pw->ncop", _area(x.shape[-2], h), x, _area(x.shape[-1], w))
    linear = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return area * shrink + linear * (1 - shrink)


class StandaloneNetwork(nn.Module):
    """(N, C, H, W) float32 unit values -> (N, K, H, W) probabilities; ``card``: the saved
    model's card as :meth:`ModelCard.to_dict` writes it (plain JSON, so that a BioImage.IO
    description can name this class with its arguments). The state dict is the network's
    (``net.*``), as :func:`~unet_search.models.build.save_model_dir` saves it."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, card: Mapping[str, Any]) -> None:
        super().__init__()
        parsed = ModelCard.from_dict(card)
        pre = Preprocessing.of_card(parsed)
        model = build_model(parsed.model, parsed.num_classes)
        reason = unsupported(model, pre)
        if reason is not None:
            raise NotOneGraph(reason)
        self.net, self.multiple = model.net, 2**model.depth
        self.fixed = fixed_tile(model, pre)
        self.channels_in, self.channels = input_channels(parsed), pre.in_channels
        norm, tiling = pre.normalization, pre.tiling
        by_image = norm.name in PER_IMAGE
        mean = (0.0,) * self.channels if by_image else norm.mean[: self.channels]
        std = (1.0,) * self.channels if by_image else norm.std[: self.channels]
        if len(mean) < self.channels:  # one value for a grey network fed its grey image
            mean, std = mean * self.channels, std * self.channels
        shape = (1, self.channels, 1, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape), False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape), False)
        self.square = tiling.image_size if tiling.input_mode == "resize" else None
        scale = Fraction(tiling.scale).limit_denominator(10_000)
        self.scale = (scale.numerator, scale.denominator)
        self.flips = FLIPS if tiling.tta == "flips" else FLIPS[:1]
        self.binary = parsed.num_classes == 1

    def _channels(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == self.channels:
            return x
        if self.channels == 1:
            return x.mean(dim=1, keepdim=True)
        return x.expand(-1, self.channels, -1, -1)

    def _model_input(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        if self.square is not None:  # resize mode: area only when both sides shrink
            s = self.square
            shrink = torch.sym_min(1, torch.sym_max(0, h - s)) * torch.sym_min(
                1, torch.sym_max(0, w - s)
            )
            return _resampled(x, s, s, shrink)
        p, q = self.scale
        if p == q:
            return x
        return _resampled(x, _rounded(h, p, q), _rounded(w, p, q), int(p < q))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        x = (self._model_input(self._channels(x)) - self.mean) / self.std
        logits = torch.zeros(())
        for dims in self.flips:
            out = padded_forward(self.net, torch.flip(x, dims) if dims else x, self.multiple)
            logits = logits + (torch.flip(out, dims) if dims else out)
        logits = logits / len(self.flips)
        if self.square is not None or self.scale[0] != self.scale[1]:
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return torch.sigmoid(logits) if self.binary else torch.softmax(logits, dim=1)
