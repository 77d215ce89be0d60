"""The from-scratch UNet of the seed designs: ``same`` (padded) or ``valid`` (unpadded,
Ronneberger's overlap-tile) convolutions, batch norm, dropout, transposed-conv or interpolating
decoders, and the variants of REFERENCE.md 1d-1e (:mod:`unet_search.models.blocks`)."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from unet_search.core.sections import ModelConfig
from unet_search.models.blocks import (
    SCSE,
    AttentionGate,
    bottleneck_block,
    center_crop,
    conv_block,
    downsample,
    he_init,
)

__all__ = [
    "PLAIN_UPSAMPLING",
    "dropout_rates",
    "level_widths",
    "contracting_path",
    "encode",
    "PlainUNet",
    "valid_input_size",
    "mirror_pad",
]


PLAIN_UPSAMPLING = ("transpose", "bilinear", "nearest")


def dropout_rates(depth: int, dropout: float, schedule: str) -> list[float]:
    """Dropout per level 0..depth. ``ramp`` reproduces the Keras seed: for depth 4 and 0.3,
    0.1, 0.1, 0.2, 0.2, 0.3 going down; the decoder at level i reuses level i's rate."""
    if schedule == "constant":
        return [dropout] * (depth + 1)
    top = math.ceil((depth + 1) / 2)
    return [round(dropout * math.ceil((i + 1) / 2) / top, 6) for i in range(depth + 1)]


def _upsampler(cin: int, mode: str) -> nn.Module:
    """2x upsampling that halves the channels: a 2x2 transposed conv, or interpolation + conv."""
    if mode == "transpose":
        return nn.ConvTranspose2d(cin, cin // 2, kernel_size=2, stride=2)
    resize = (
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        if mode == "bilinear"
        else nn.Upsample(scale_factor=2, mode="nearest")
    )
    return nn.Sequential(resize, nn.Conv2d(cin, cin // 2, kernel_size=3, padding=1))


def level_widths(cfg: ModelConfig) -> list[int]:
    """Filters of levels 0..depth: ``base_filters * 2**level``."""
    return [cfg.base_filters * 2**i for i in range(cfg.depth + 1)]


def contracting_path(cfg: ModelConfig, padding: str) -> tuple[nn.ModuleList, nn.ModuleList]:
    """``down``: ``depth`` levels of ``cfg.block`` then the bottleneck; ``pools``: the
    downsamplings between them (the encoder of both from-scratch architectures)."""
    depth, bn = cfg.depth, cfg.batchnorm
    widths, rates = level_widths(cfg), dropout_rates(depth, cfg.dropout, cfg.dropout_schedule)
    ins = [cfg.in_channels, *widths]
    down = nn.ModuleList(
        conv_block(cfg.block, ins[i], widths[i], rates[i], bn, padding) for i in range(depth)
    )
    shape = (cfg.transformer_width, cfg.transformer_heads, cfg.transformer_layers)
    down.append(
        bottleneck_block(
            cfg.bottleneck, cfg.block, ins[depth], widths[depth], rates[depth], bn, padding, shape
        )
    )
    return down, nn.ModuleList(downsample(cfg.pooling, widths[i]) for i in range(depth))


def encode(down: nn.ModuleList, pools: nn.ModuleList, x: torch.Tensor) -> list[torch.Tensor]:
    """Every level's output of a :func:`contracting_path`, the bottleneck's last."""
    out = []
    for level, block in enumerate(down):
        x = block(x)
        out.append(x)
        if level < len(pools):
            x = pools[level](x)
    return out


class PlainUNet(nn.Module):
    """The classic UNet (REFERENCE.md 1a-1c), faithful to Ronneberger et al. and the Keras seed,
    with the variants of 1d-1e as options (all default to the classic one).

    ``depth`` downsamplings, ``base_filters * 2**level`` filters, two 3x3 convs per level
    (``block``), skips concatenated (center-cropped with ``padding='valid'``, gated by
    Attention U-Net gates with ``attention='gate'``), scSE before and after each decoder
    block with ``attention='scse'`` (smp's placement), a 1x1 head. He-normal init.
    Input (N, in_channels, H, W) with H, W fitting the depth (see SegmentationModel).
    """

    def __init__(self, cfg: ModelConfig, classes: int) -> None:
        super().__init__()
        depth, bn, padding = cfg.depth, cfg.batchnorm, cfg.padding
        widths, rates = level_widths(cfg), dropout_rates(depth, cfg.dropout, cfg.dropout_schedule)
        self.down, self.pools = contracting_path(cfg, padding)
        levels = list(reversed(range(depth)))
        self.up = nn.ModuleList(_upsampler(widths[i + 1], cfg.upsampling) for i in levels)
        self.dec = nn.ModuleList(
            conv_block(cfg.block, widths[i + 1], widths[i], rates[i], bn, padding) for i in levels
        )
        self.gates = nn.ModuleList(
            AttentionGate(widths[i], widths[i + 1]) if cfg.attention == "gate" else nn.Identity()
            for i in levels
        )
        scse = cfg.attention == "scse"
        self.scse_in = nn.ModuleList(
            SCSE(widths[i + 1]) if scse else nn.Identity() for i in levels
        )
        self.scse_out = nn.ModuleList(SCSE(widths[i]) if scse else nn.Identity() for i in levels)
        self.head = nn.Conv2d(widths[0], classes, kernel_size=1)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *skips, x = encode(self.down, self.pools, x)
        stages = zip(
            self.up,
            self.dec,
            self.gates,
            self.scse_in,
            self.scse_out,
            reversed(skips),
            strict=True,
        )
        for up, dec, gate, scse_in, scse_out, skip in stages:
            g, x = x, up(x)
            skip = center_crop(skip, (x.shape[-2], x.shape[-1]))
            if isinstance(gate, AttentionGate):
                skip = gate(skip, g)
            x = scse_out(dec(scse_in(torch.cat([skip, x], dim=1))))
        return self.head(x)


@functools.cache
def _valid_output(size: int, depth: int) -> int:
    """Output size of an unpadded UNet for an input side, or 0 if the side does not fit."""
    s = size
    for _ in range(depth):
        s -= 4
        if s <= 0 or s % 2:
            return 0
        s //= 2
    s -= 4
    if s <= 0:
        return 0
    for _ in range(depth):
        s = 2 * s - 4
    return max(s, 0)


@functools.cache
def valid_input_size(target: int, depth: int) -> tuple[int, int]:
    """Smallest (input side, margin) whose valid-UNet output covers ``target`` pixels."""
    size = target
    while _valid_output(size, depth) < target:
        size += 1
    return size, (size - _valid_output(size, depth)) // 2


def mirror_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Reflect-pad by any amount (repeated reflection; replicate for 1-pixel sides)."""
    while top or bottom or left or right:
        h, w = x.shape[-2:]
        if h < 2 or w < 2:
            return F.pad(x, (left, right, top, bottom), mode="replicate")
        t, b, lf, r = min(top, h - 1), min(bottom, h - 1), min(left, w - 1), min(right, w - 1)
        x = F.pad(x, (lf, r, t, b), mode="reflect")
        top, bottom, left, right = top - t, bottom - b, left - lf, right - r
    return x
