"""Architecture registry: the from-scratch UNet and segmentation-models-pytorch architectures.

``build_model(cfg, num_classes)`` returns a :class:`SegmentationModel` whose ``forward`` takes
any ``(N, C, H, W)`` input and returns ``(N, K, H, W)`` logits (``K = 1`` for binary tasks,
else ``num_classes``): it pads to what the network needs (a multiple of ``2**depth``, or the
mirror-padded input of an unpadded "valid" UNet) and crops the output back.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from unet_search.config import ConfigError, ModelConfig, RunConfig

__all__ = [
    "ARCHITECTURES",
    "PLAIN_UPSAMPLING",
    "SMP_UPSAMPLING",
    "PlainUNet",
    "SegmentationModel",
    "build_model",
    "count_parameters",
    "dropout_rates",
    "load_model_dir",
    "out_channels",
    "save_model_dir",
    "smp_encoders",
    "validate_model_config",
]

PLAIN_UPSAMPLING = ("transpose", "bilinear", "nearest")
SMP_UPSAMPLING = ("nearest", "bilinear", "bicubic")
# arch -> (smp class name, extra constructor keywords); encoder "none" = from scratch.
SMP_ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    "unet": ("Unet", {}),
    "unetplusplus": ("UnetPlusPlus", {}),
    "attention_unet": ("Unet", {"decoder_attention_type": "scse"}),
}
SCRATCH_ARCHS = ("unet",)
ARCHITECTURES: dict[str, str] = {
    "unet": "UNet: from scratch (encoder none) or with an smp encoder",
    "unetplusplus": "UNet++ (nested skips), smp encoder required",
    "attention_unet": "UNet with scSE attention in the decoder, smp encoder required",
}
SCSE_REDUCTION = 16
MODEL_FILE, CONFIG_FILE = "model.safetensors", "model_config.json"


@functools.cache
def smp_encoders() -> tuple[str, ...]:
    """Names of every encoder segmentation-models-pytorch offers."""
    import segmentation_models_pytorch as smp

    return tuple(sorted(smp.encoders.get_encoder_names()))


def out_channels(num_classes: int) -> int:
    """Binary tasks use one logit (sigmoid); multi-class tasks one logit per class."""
    return 1 if num_classes == 1 else num_classes


def validate_model_config(cfg: ModelConfig) -> None:
    """Check names and combinations against the registries without building anything."""
    if cfg.arch not in ARCHITECTURES:
        raise ConfigError(
            f"`model.arch` must be one of {sorted(ARCHITECTURES)}, but got {cfg.arch!r}."
        )
    if cfg.encoder == "none":
        if cfg.arch not in SCRATCH_ARCHS:
            raise ConfigError(
                f"`model.arch` {cfg.arch!r} needs an smp encoder: set "
                "`model.encoder` (e.g. resnet18, mobilenet_v2); only 'unet' is "
                "built from scratch."
            )
        if cfg.upsampling not in PLAIN_UPSAMPLING:
            raise ConfigError(
                f"`model.upsampling` must be one of {list(PLAIN_UPSAMPLING)} for "
                f"the from-scratch UNet, but got {cfg.upsampling!r}."
            )
        if cfg.encoder_weights is not None:
            raise ConfigError(
                "`model.encoder_weights` needs a pre-trained encoder, but "
                "`model.encoder` is 'none'."
            )
        return
    if cfg.encoder not in smp_encoders():
        raise ConfigError(
            f"`model.encoder` must be 'none' or an smp encoder, but got "
            f"{cfg.encoder!r}; run `unet-search models` for the list."
        )
    if cfg.upsampling not in SMP_UPSAMPLING:
        raise ConfigError(
            f"`model.upsampling` must be one of {list(SMP_UPSAMPLING)} for smp "
            f"decoders (no transposed conv there), but got {cfg.upsampling!r}."
        )
    if cfg.depth < 3:
        raise ConfigError(
            f"`model.depth` must be in [3, 5] with an smp encoder, but got {cfg.depth}."
        )
    for key, value, plain_only in (
        ("padding", cfg.padding, "valid"),
        ("dropout_schedule", cfg.dropout_schedule, "ramp"),
    ):
        if value == plain_only:
            raise ConfigError(
                f"`model.{key}` {value!r} exists only for the from-scratch UNet "
                f"(encoder 'none'), but `model.encoder` is {cfg.encoder!r}."
            )
    if cfg.arch == "attention_unet" and cfg.base_filters < SCSE_REDUCTION:
        # scSE squeezes channels by 16: fewer decoder channels build but fail at forward time.
        raise ConfigError(
            f"`model.base_filters` must be >= {SCSE_REDUCTION} for "
            f"'attention_unet' (scSE reduces channels by {SCSE_REDUCTION}), but "
            f"got {cfg.base_filters}."
        )
    if cfg.base_filters * 2 ** (cfg.depth - 1) > 4096:
        raise ConfigError(
            f"`model.base_filters` x 2**(depth-1) must be <= 4096, but got "
            f"{cfg.base_filters} x {2 ** (cfg.depth - 1)}."
        )


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


class SegmentationModel(nn.Module):
    """Wraps a network so that any (N, C, H, W) input gives (N, K, H, W) logits."""

    def __init__(self, net: nn.Module, depth: int, padding: str) -> None:
        super().__init__()
        self.net, self.depth, self.padding = net, depth, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.padding == "valid":
            (in_h, m_h), (in_w, m_w) = (
                valid_input_size(h, self.depth),
                valid_input_size(w, self.depth),
            )
            x = mirror_pad(x, m_h, in_h - h - m_h, m_w, in_w - w - m_w)
        else:
            multiple = 2**self.depth
            x = mirror_pad(x, 0, -h % multiple, 0, -w % multiple)
        return self.net(x)[..., :h, :w]


def _freeze_unreached(net: nn.Module, in_channels: int, depth: int) -> None:
    """Freeze parameters that get no gradient (unused encoder stages with depth < 5, heads
    like efficientnet's conv_head): DDP requires every trainable parameter to be used."""
    was_training = net.training
    net.eval()
    side = 2 ** max(depth, 5) * 2
    net(torch.zeros(1, in_channels, side, side)).float().sum().backward()
    for param in net.parameters():
        if param.grad is None:
            param.requires_grad_(False)
        param.grad = None
    net.train(was_training)


def _build_smp(cfg: ModelConfig, classes: int) -> nn.Module:
    import segmentation_models_pytorch as smp

    class_name, extra = SMP_ARCHS[cfg.arch]
    decoder_channels = [cfg.base_filters * 2 ** (cfg.depth - 1 - i) for i in range(cfg.depth)]
    try:
        net = getattr(smp, class_name)(
            encoder_name=cfg.encoder,
            encoder_depth=cfg.depth,
            encoder_weights=cfg.encoder_weights,
            decoder_use_norm="batchnorm" if cfg.batchnorm else False,
            decoder_channels=decoder_channels,
            decoder_interpolation=cfg.upsampling,
            in_channels=cfg.in_channels,
            classes=classes,
            **extra,
        )
    except Exception as err:
        if cfg.encoder_weights is None:
            raise
        raise ConfigError(
            f"`model.encoder_weights` {cfg.encoder_weights!r} for encoder {cfg.encoder!r} are "
            f"not available offline (no downloads at run time; put them in the Hugging Face "
            f"cache first or set encoder_weights: null): {type(err).__name__}: {err}"
        ) from None
    if cfg.dropout > 0:
        net.segmentation_head = nn.Sequential(nn.Dropout2d(cfg.dropout), net.segmentation_head)
    _freeze_unreached(net, cfg.in_channels, cfg.depth)
    return net


def build_model(cfg: ModelConfig, num_classes: int) -> SegmentationModel:
    """Build the model a config describes; raises ConfigError for invalid combinations."""
    validate_model_config(cfg)
    classes = out_channels(num_classes)
    if cfg.encoder == "none":
        net: nn.Module = PlainUNet(
            cfg.in_channels,
            classes,
            cfg.depth,
            cfg.base_filters,
            cfg.dropout,
            cfg.dropout_schedule,
            cfg.upsampling,
            cfg.batchnorm,
            cfg.padding,
        )
    else:
        net = _build_smp(cfg, classes)
    return SegmentationModel(net, cfg.depth, cfg.padding)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def preset_parameter_count(name: str) -> int:
    """Trainable parameters of a preset from config.PRESETS."""
    cfg = RunConfig.from_dict({"preset": name})
    return count_parameters(build_model(cfg.model, cfg.data.num_classes))


def save_model_dir(
    path: Path, model: nn.Module, cfg: ModelConfig, num_classes: int, preprocessing: dict[str, Any]
) -> None:
    """Write weights (safetensors) and the build config + preprocessing (JSON) to ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    module = getattr(model, "module", model)  # unwrap DDP
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path / MODEL_FILE))
    meta = {
        "model": {**cfg.__dict__, "encoder_weights": None},
        "num_classes": num_classes,
        "preprocessing": preprocessing,
        "format_version": 1,
    }
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def load_model_dir(path: Path) -> tuple[SegmentationModel, dict[str, Any]]:
    """Load a model saved by :func:`save_model_dir` (no pickle: JSON + safetensors)."""
    meta = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    model = build_model(ModelConfig(**meta["model"]), int(meta["num_classes"]))
    model.load_state_dict(load_file(str(path / MODEL_FILE)))
    return model.eval(), meta
