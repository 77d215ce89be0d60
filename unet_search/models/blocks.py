"""The building blocks of the from-scratch UNets (REFERENCE.md 1d-1e): convolution blocks
(plain, residual, depthwise-separable), downsampling (max, average, a stride-2 conv),
bottlenecks (dilated, ASPP, transformer) and attention (Attention U-Net gates, scSE).

Every block keeps the spatial size (``same`` padding) or, for the plain, residual and
separable blocks with ``padding='valid'``, loses 2 px a side as two unpadded 3x3 convs do.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ASPP",
    "aspp_rates",
    "AttentionGate",
    "bottleneck_block",
    "center_crop",
    "conv_block",
    "conv_norm_relu",
    "DILATED_RATES",
    "downsample",
    "he_init",
    "interpolation",
    "SCSE",
    "SCSE_REDUCTION",
    "sine_positions",
    "TransformerBottleneck",
]


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    top, left = (x.shape[-2] - size[0]) // 2, (x.shape[-1] - size[1]) // 2
    return x[..., top : top + size[0], left : left + size[1]]


def _conv3x3(
    cin: int, cout: int, bias: bool, pad: int, separable: bool, dilation: int = 1
) -> list[nn.Module]:
    """A 3x3 conv, or its depthwise-separable form: a depthwise 3x3 (no bias: the pointwise
    conv after it is linear) and a pointwise 1x1."""
    if not separable:
        return [nn.Conv2d(cin, cout, 3, padding=pad, dilation=dilation, bias=bias)]
    return [
        nn.Conv2d(cin, cin, 3, padding=pad, dilation=dilation, groups=cin, bias=False),
        nn.Conv2d(cin, cout, 1, bias=bias),
    ]


def _norm_relu(
    channels: int, batchnorm: bool, groupnorm: bool = False, relu: bool = True
) -> list[nn.Module]:
    """[BN (or a one-group GroupNorm)] -> [ReLU]: what follows a conv."""
    norm: list[nn.Module] = []
    if batchnorm:
        norm.append(nn.GroupNorm(1, channels) if groupnorm else nn.BatchNorm2d(channels))
    return [*norm, *([nn.ReLU(inplace=True)] if relu else [])]


def conv_norm_relu(cin: int, cout: int, batchnorm: bool, dilation: int = 1) -> nn.Sequential:
    """A same-padded 3x3 conv (at ``dilation``) -> [BN] -> ReLU."""
    return nn.Sequential(
        *_conv3x3(cin, cout, not batchnorm, dilation, False, dilation),
        *_norm_relu(cout, batchnorm),
    )


def _plain(
    cin: int,
    cout: int,
    dropout: float,
    batchnorm: bool,
    pad: int,
    separable: bool,
    last_relu: bool = True,
) -> list[nn.Module]:
    """conv3x3 -> [BN] -> ReLU -> [dropout] -> conv3x3 -> [BN] -> [ReLU] (Keras: dropout
    between the two convs)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(((cin, cout), (cout, cout))):
        layers += _conv3x3(a, b, not batchnorm, pad, separable)
        layers += _norm_relu(b, batchnorm, relu=i == 0 or last_relu)
        if i == 0 and dropout > 0:
            layers.append(nn.Dropout(dropout))
    return layers


class _ResidualBlock(nn.Module):
    """ResUNet's level: the two 3x3 convs plus an identity shortcut (a 1x1 projection, with
    BN when the block has it, where the channels change), ReLU after the sum. With valid
    padding the shortcut is center-cropped to the convs' output."""

    def __init__(self, cin: int, cout: int, dropout: float, batchnorm: bool, pad: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_plain(cin, cout, dropout, batchnorm, pad, False, False))
        self.shortcut: nn.Module = nn.Identity()
        if cin != cout:
            proj: list[nn.Module] = [nn.Conv2d(cin, cout, 1, bias=not batchnorm)]
            self.shortcut = nn.Sequential(*proj, *([nn.BatchNorm2d(cout)] if batchnorm else []))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return F.relu(y + center_crop(self.shortcut(x), (y.shape[-2], y.shape[-1])))


def conv_block(
    kind: str, cin: int, cout: int, dropout: float, batchnorm: bool, padding: str
) -> nn.Module:
    """One level's two 3x3 convs: ``plain``, ``residual`` or ``separable``. The plain block
    is the Sequential of the seeds (its parameter names are those of registered models)."""
    pad = 1 if padding == "same" else 0
    if kind == "residual":
        return _ResidualBlock(cin, cout, dropout, batchnorm, pad)
    return nn.Sequential(*_plain(cin, cout, dropout, batchnorm, pad, kind == "separable"))


def downsample(kind: str, channels: int) -> nn.Module:
    """Halve the map: 2x2 max or average pooling, or a learned stride-2 3x3 conv (padding 1,
    so an even side halves exactly as with pooling, in valid mode too)."""
    if kind == "avg":
        return nn.AvgPool2d(2)
    if kind == "strided":
        return nn.Conv2d(channels, channels, 3, stride=2, padding=1)
    return nn.MaxPool2d(2)


# DeepLab v3's atrous rates and the map they were chosen for: 513-px crops at output stride 16.
DEEPLAB_RATES, DEEPLAB_MAP = (6, 12, 18), 33


@functools.cache
def aspp_rates(side: int) -> tuple[int, ...]:
    """DeepLab v3's rates scaled to a ``side``-px map and kept below it: a rate as wide as the
    map puts every off-centre tap in the padding, leaving a 1x1 conv. 8 px -> (1, 3, 4),
    16 -> (3, 6, 9), 32 -> (6, 12, 17)."""
    cap = max(1, side - 1)
    return tuple(min(cap, max(1, round(r * side / DEEPLAB_MAP))) for r in DEEPLAB_RATES)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLab v3): a 1x1 conv, three 3x3 convs at rates
    fitted to the map (:func:`aspp_rates`, from the map each forward sees) and image-level
    pooling, each to ``channels // 4``, concatenated and fused back to ``channels`` by a 1x1
    conv. The pooling branch is normalized with a one-group GroupNorm: BatchNorm over a 1x1
    map fails at batch 1."""

    def __init__(self, channels: int, batchnorm: bool, dropout: float) -> None:
        super().__init__()
        width, bias = max(1, channels // 4), not batchnorm
        self.point = nn.Sequential(
            nn.Conv2d(channels, width, 1, bias=bias), *_norm_relu(width, batchnorm)
        )
        self.atrous = nn.ModuleList(
            nn.Conv2d(channels, width, 3, bias=bias) for _ in DEEPLAB_RATES
        )
        self.atrous_post = nn.ModuleList(
            nn.Sequential(*_norm_relu(width, batchnorm)) for _ in DEEPLAB_RATES
        )
        self.image = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, width, 1, bias=bias),
            *_norm_relu(width, batchnorm, groupnorm=True),
        )
        fuse: list[nn.Module] = [nn.Conv2d(5 * width, channels, 1, bias=bias)]
        fuse += _norm_relu(channels, batchnorm)
        self.fuse = nn.Sequential(*fuse, *([nn.Dropout(dropout)] if dropout > 0 else []))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rates = aspp_rates(min(x.shape[-2:]))
        branches = [self.point(x)]
        for conv, post, rate in zip(self.atrous, self.atrous_post, rates, strict=True):
            assert isinstance(conv, nn.Conv2d)
            y = F.conv2d(x, conv.weight, conv.bias, padding=rate, dilation=rate)
            branches.append(post(y))
        branches.append(self.image(x).expand(-1, -1, *x.shape[-2:]))
        return self.fuse(torch.cat(branches, dim=1))


def sine_positions(h: int, w: int, width: int, device: torch.device) -> torch.Tensor:
    """(h*w, width) fixed 2-D sine-cosine position codes (MAE, ViTDet): a quarter of the
    channels each for sin/cos of the row and of the column, so any map size has codes."""
    quarter = width // 4
    freq = 1.0 / 10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    rows = torch.arange(h, device=device, dtype=torch.float32)[:, None] * freq
    cols = torch.arange(w, device=device, dtype=torch.float32)[:, None] * freq
    rows = rows[:, None, :].expand(h, w, quarter)
    cols = cols[None, :, :].expand(h, w, quarter)
    codes = torch.cat([rows.sin(), rows.cos(), cols.sin(), cols.cos()], dim=-1)
    return codes.reshape(h * w, width)


class TransformerBottleneck(nn.Module):
    """TransUNet's bottleneck: the lowest-resolution map, projected to ``width`` by a 1x1
    conv, becomes one token per pixel; 2-D sine position codes (any map size) are added;
    ``layers`` pre-norm transformer layers (multi-head self-attention + a 4x MLP) run; a
    LayerNorm, then a 1x1 conv (+ BN, ReLU) turns the tokens back into a ``channels`` map."""

    def __init__(
        self, channels: int, width: int, heads: int, layers: int, batchnorm: bool
    ) -> None:
        super().__init__()
        self.embed = nn.Conv2d(channels, width, 1)
        layer = nn.TransformerEncoderLayer(
            width,
            heads,
            4 * width,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Sequential(
            nn.Conv2d(width, channels, 1, bias=not batchnorm), *_norm_relu(channels, batchnorm)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (N, h*w, width)
        tokens = tokens + sine_positions(h, w, tokens.shape[-1], x.device).to(tokens.dtype)
        tokens = self.norm(self.layers(tokens))
        return self.out(tokens.transpose(1, 2).reshape(n, -1, h, w))


# Rates of the dilated bottleneck's three stacked 3x3 convs.
DILATED_RATES = (1, 2, 4)


def bottleneck_block(
    kind: str,
    block: str,
    cin: int,
    cout: int,
    dropout: float,
    batchnorm: bool,
    padding: str,
    transformer: tuple[int, int, int],
) -> nn.Module:
    """The lowest level: ``plain`` (the level's block), ``dilated`` (three 3x3 convs at
    rates 1, 2, 4), or the level's block followed by ``aspp`` or a ``transformer``
    (``transformer`` = width, heads, layers)."""
    if kind == "dilated":
        layers: list[nn.Module] = []
        for i, rate in enumerate(DILATED_RATES):
            layers += conv_norm_relu(cin if i == 0 else cout, cout, batchnorm, rate)
            if i == 0 and dropout > 0:
                layers.append(nn.Dropout(dropout))
        return nn.Sequential(*layers)
    base = conv_block(block, cin, cout, dropout, batchnorm, padding)
    if kind == "aspp":
        return nn.Sequential(base, ASPP(cout, batchnorm, dropout))
    if kind == "transformer":
        width, heads, layers_n = transformer
        return nn.Sequential(base, TransformerBottleneck(cout, width, heads, layers_n, batchnorm))
    return base


class AttentionGate(nn.Module):
    """Attention U-Net's additive gate (Oktay et al. 2018): with skip features x and the
    coarser decoder signal g, alpha = sigmoid(psi(ReLU(W_x x + W_g g + b))) is one
    coefficient in [0, 1] per pixel, and the skip passes as alpha * x. W_x, W_g: 1x1 convs
    to ``C_x // 2`` channels (W_g carries the bias b); psi: a 1x1 conv to one channel. W_g g
    is computed at g's size and resampled bilinearly to x's (the same as resampling g: both
    are linear)."""

    def __init__(self, skip_channels: int, gate_channels: int) -> None:
        super().__init__()
        inter = max(1, skip_channels // 2)
        self.theta = nn.Conv2d(skip_channels, inter, 1, bias=False)
        self.phi = nn.Conv2d(gate_channels, inter, 1)
        self.psi = nn.Conv2d(inter, 1, 1)

    def coefficients(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        gate = interpolation(self.phi(g), (x.shape[-2], x.shape[-1]), "bilinear")
        return torch.sigmoid(self.psi(F.relu(self.theta(x) + gate)))

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return x * self.coefficients(x, g)


SCSE_REDUCTION = 16


class SCSE(nn.Module):
    """Concurrent spatial and channel squeeze and excitation (Roy et al. 2018), as smp's
    ``decoder_attention_type='scse'``: x * cSE(x) + x * sSE(x); the channel squeeze keeps
    ``channels // 16`` (at least 1, so narrow from-scratch decoders work too)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        squeezed = max(1, channels // SCSE_REDUCTION)
        self.cse = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, squeezed, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(squeezed, channels, 1),
            nn.Sigmoid(),
        )
        self.sse = nn.Sequential(nn.Conv2d(channels, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.cse(x) + x * self.sse(x)


def he_init(net: nn.Module) -> None:
    """He-normal conv weights and zero biases (the Keras seed's he_normal)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def interpolation(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    return F.interpolate(
        x, size=size, mode=mode, **({"align_corners": False} if mode == "bilinear" else {})
    )
