"""The plain UNet of the seed designs: ``same`` (padded) or ``valid`` (unpadded, Ronneberger's
overlap-tile) convolutions, batch norm, dropout, transposed-conv or interpolating decoders."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PLAIN_UPSAMPLING", "dropout_rates", "PlainUNet", "valid_input_size", "mirror_pad"]


PLAIN_UPSAMPLING = ("transpose", "bilinear", "nearest")


def dropout_rates(depth: int, dropout: float, schedule: str) -> list[float]:
    """Dropout per level 0..depth. ``ramp`` reproduces the Keras seed: for depth 4 and 0.3,
    0.1, 0.1, 0.2, 0.2, 0.3 going down; the decoder at level i reuses level i's rate."""
    if schedule == "constant":
        return [dropout] * (depth + 1)
    top = math.ceil((depth + 1) / 2)
    return [round(dropout * math.ceil((i + 1) / 2) / top, 6) for i in range(depth + 1)]


def _conv_block(
    cin: int, cout: int, dropout: float, batchnorm: bool, padding: str
) -> nn.Sequential:
    """conv3x3 -> [BN] -> ReLU -> [dropout] -> conv3x3 -> [BN] -> ReLU (Keras: dropout between)."""
    pad = 1 if padding == "same" else 0
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(((cin, cout), (cout, cout))):
        layers.append(nn.Conv2d(a, b, 3, padding=pad, bias=not batchnorm))
        if batchnorm:
            layers.append(nn.BatchNorm2d(b))
        layers.append(nn.ReLU(inplace=True))
        if i == 0 and dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


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


def _center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    top, left = (x.shape[-2] - size[0]) // 2, (x.shape[-1] - size[1]) // 2
    return x[..., top : top + size[0], left : left + size[1]]


class PlainUNet(nn.Module):
    """The classic UNet (REFERENCE.md 1a-1c), faithful to Ronneberger et al. and the Keras seed.

    ``depth`` poolings, ``base_filters * 2**level`` filters, two 3x3 convs per level, skips
    concatenated (center-cropped with ``padding='valid'``), a 1x1 head. He-normal init.
    Input (N, in_channels, H, W) with H, W fitting the depth (see SegmentationModel).
    """

    def __init__(
        self,
        in_channels: int,
        classes: int,
        depth: int,
        base_filters: int,
        dropout: float,
        dropout_schedule: str,
        upsampling: str,
        batchnorm: bool,
        padding: str,
    ) -> None:
        super().__init__()
        widths = [base_filters * 2**i for i in range(depth + 1)]
        rates = dropout_rates(depth, dropout, dropout_schedule)
        self.down = nn.ModuleList(
            _conv_block(cin, cout, rates[i], batchnorm, padding)
            for i, (cin, cout) in enumerate(zip([in_channels, *widths], widths, strict=False))
        )
        self.pool = nn.MaxPool2d(2)
        levels = list(reversed(range(depth)))
        self.up = nn.ModuleList(_upsampler(widths[i + 1], upsampling) for i in levels)
        self.dec = nn.ModuleList(
            _conv_block(widths[i + 1], widths[i], rates[i], batchnorm, padding) for i in levels
        )
        self.head = nn.Conv2d(widths[0], classes, kernel_size=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.down):
            x = block(x)
            if level < len(self.up):
                skips.append(x)
                x = self.pool(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            x = up(x)
            x = dec(torch.cat([_center_crop(skip, (x.shape[-2], x.shape[-1])), x], dim=1))
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
