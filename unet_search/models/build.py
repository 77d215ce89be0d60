"""The one way to check, build, count, save and load a model: the from-scratch UNet
(:mod:`unet_search.models.unet`) and the smp architectures (:mod:`unet_search.models.smp`).

``build_model(cfg, num_classes)`` returns a :class:`SegmentationModel` whose ``forward`` takes
any ``(N, C, H, W)`` input and returns ``(N, K, H, W)`` logits (``K = 1`` for binary tasks,
else ``num_classes``): it pads to what the network needs (a multiple of ``2**depth``, or the
mirror-padded input of an unpadded "valid" UNet) and crops the output back.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from unet_search.core.config import CLASSIC, RunConfig
from unet_search.core.errors import ConfigError
from unet_search.core.names import MODEL_FILE
from unet_search.core.sections import MAX_BOTTLENECK_TOKENS, ModelConfig
from unet_search.models.blocks import SCSE_REDUCTION
from unet_search.models.card import ModelCard
from unet_search.models.smp import (
    SMP_ARCHS,
    SMP_UPSAMPLING,
    build_smp,
    smp_encoders,
)
from unet_search.models.unet import PLAIN_UPSAMPLING, PlainUNet, mirror_pad, valid_input_size
from unet_search.models.unet3plus import UNET3PLUS_DEPTHS, UNet3Plus

__all__ = [
    "SCRATCH_ARCHS",
    "ARCHITECTURES",
    "OPTIONS",
    "REFERENCE_MODEL",
    "option_parameter_counts",
    "out_channels",
    "validate_model_config",
    "build_model",
    "count_parameters",
    "preset_parameter_count",
    "save_model_dir",
    "load_model_dir",
    "SegmentationModel",
]


SCRATCH_ARCHS = ("unet", "unet3plus")
SMP_ONLY_ARCHS = ("unetplusplus",)


ARCHITECTURES: dict[str, str] = {
    "unet": "UNet: from scratch (encoder none, every variant option) or on an smp encoder",
    "unetplusplus": "UNet++ (nested skips), smp encoder required",
    "unet3plus": "UNet 3+ (full-scale skips), from scratch, depth 3-5",
    "attention_unet": "the old name of unet + attention: scse (still read everywhere)",
}


# The from-scratch options and what each is (REFERENCE.md 1d-1e); `unet-search models`.
OPTIONS: dict[str, dict[str, str]] = {
    "block": {
        "plain": "two 3x3 convs (the seeds)",
        "residual": "two 3x3 convs + identity shortcut (1x1 projection where channels change)",
        "separable": "depthwise 3x3 + pointwise 1x1 for each conv",
    },
    "pooling": {
        "max": "2x2 max pooling",
        "avg": "2x2 average pooling",
        "strided": "stride-2 3x3 conv",
    },
    "bottleneck": {
        "plain": "the level's block",
        "dilated": "3x3 convs at rates 1, 2, 4",
        "aspp": "block + DeepLab v3 ASPP (rates fitted to the map, image pooling)",
        "transformer": f"block + TransUNet transformer (<= {MAX_BOTTLENECK_TOKENS} tokens)",
    },
    "attention": {
        "none": "plain skips",
        "gate": "Attention U-Net gates on every skip",
        "scse": "scSE before and after each decoder block",
    },
}
SMP_ATTENTIONS = ("none", "scse")
# The from-scratch UNet's own settings: with an smp encoder each must keep the classic value
# (attention is checked against SMP_ATTENTIONS: scSE works there too).
SCRATCH_ONLY = {
    "padding": "same",
    "dropout_schedule": "constant",
    **{k: v for k, v in CLASSIC.items() if k != "attention"},
}
UNET3PLUS_ATTENTIONS = ("none", "scse")
VALID_BOTTLENECKS = ("plain",)
# smp architectures an encoder family cannot feed (smp refuses them at construction).
SMP_REFUSED = {("unetplusplus", "mit_b"): "UNet++ has no Mix Transformer (mit_b*) support in smp"}


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


def out_channels(num_classes: int) -> int:
    """Binary tasks use one logit (sigmoid); multi-class tasks one logit per class."""
    return 1 if num_classes == 1 else num_classes


def _rule(key: str, text: str, value: object) -> ConfigError:
    return ConfigError(f"`model.{key}` {text}, but got {value!r}.")


def _validate_scratch(cfg: ModelConfig) -> None:
    if cfg.encoder_weights is not None:
        raise _rule(
            "encoder_weights",
            "needs a pre-trained encoder, but `model.encoder` is 'none'",
            cfg.encoder_weights,
        )
    if cfg.arch == "unet3plus":
        if cfg.depth not in UNET3PLUS_DEPTHS:
            raise _rule("depth", f"must be in {list(UNET3PLUS_DEPTHS)} for 'unet3plus'", cfg.depth)
        if cfg.upsampling not in ("bilinear", "nearest"):
            raise _rule(
                "upsampling",
                "must be 'bilinear' or 'nearest' for 'unet3plus' (its full-scale skips are "
                "resampled, there is no transposed conv)",
                cfg.upsampling,
            )
        if cfg.padding != "same":
            raise _rule(
                "padding",
                "must be 'same' for 'unet3plus' (full-scale skips meet at equal sizes, no crop)",
                cfg.padding,
            )
        if cfg.attention not in UNET3PLUS_ATTENTIONS:
            raise _rule(
                "attention",
                f"must be one of {list(UNET3PLUS_ATTENTIONS)} for "
                "'unet3plus' (attention gates sit on UNet skips)",
                cfg.attention,
            )
    elif cfg.upsampling not in PLAIN_UPSAMPLING:
        raise _rule(
            "upsampling",
            f"must be one of {list(PLAIN_UPSAMPLING)} for the from-scratch UNet",
            cfg.upsampling,
        )
    if cfg.padding == "valid" and cfg.bottleneck not in VALID_BOTTLENECKS:
        raise _rule(
            "bottleneck",
            f"must be one of {list(VALID_BOTTLENECKS)} with `padding: "
            "valid` (dilated, ASPP and transformer bottlenecks are same-padded)",
            cfg.bottleneck,
        )


@functools.cache
def _timm_encoder_error(name: str, depth: int, in_channels: int) -> str | None:
    """Why smp cannot build timm encoder ``name`` (``tu-``) at ``depth``, asked of smp itself
    (an unknown model, a downsampling pattern the UNet decoder cannot take); None: it can."""
    import segmentation_models_pytorch as smp

    for device in ("meta", "cpu"):  # meta: no weights initialized (fast)
        try:
            with torch.device(device):
                smp.encoders.get_encoder(name, in_channels=in_channels, depth=depth, weights=None)
        except Exception as err:
            if device == "meta" and "meta" in str(err):  # its init reads a value: build it
                continue
            return f"{type(err).__name__}: {err}"
        return None
    return None


def _validate_smp(cfg: ModelConfig) -> None:
    if cfg.arch not in SMP_ARCHS:
        raise _rule(
            "arch",
            f"must be one of {sorted(SMP_ARCHS)} with an smp encoder ('unet3plus' "
            "is from scratch: encoder 'none')",
            cfg.arch,
        )
    if cfg.depth < 3:  # before a tu- encoder is asked of smp at that depth
        raise _rule("depth", "must be in [3, 5] with an smp encoder", cfg.depth)
    if cfg.encoder.startswith("tu-"):
        why = _timm_encoder_error(cfg.encoder, cfg.depth, cfg.in_channels)
        if why is not None:
            raise _rule(
                "encoder",
                f"must be a timm model smp can use at depth {cfg.depth} (smp says {why})",
                cfg.encoder,
            )
    elif cfg.encoder not in smp_encoders():
        raise _rule(
            "encoder",
            "must be 'none', an smp encoder or 'tu-' + a timm model; run "
            "`unet-search models` for the list",
            cfg.encoder,
        )
    for (arch, family), why in SMP_REFUSED.items():
        if cfg.arch == arch and cfg.encoder.startswith(family):
            raise _rule("encoder", f"cannot feed {arch!r}: {why}", cfg.encoder)
    if cfg.upsampling not in SMP_UPSAMPLING:
        raise _rule(
            "upsampling",
            f"must be one of {list(SMP_UPSAMPLING)} for smp decoders (no transposed conv there)",
            cfg.upsampling,
        )
    for key, default in SCRATCH_ONLY.items():
        value = getattr(cfg, key)
        if value != default:
            raise _rule(
                key,
                f"must be {default!r} with an smp encoder (the option is the from-scratch "
                f"UNet's, encoder 'none'; `model.encoder` is {cfg.encoder!r})",
                value,
            )
    if cfg.attention not in SMP_ATTENTIONS:
        raise _rule(
            "attention",
            f"must be one of {list(SMP_ATTENTIONS)} with an smp encoder "
            "(attention gates are built for the from-scratch UNet)",
            cfg.attention,
        )
    if cfg.attention == "scse" and cfg.base_filters < SCSE_REDUCTION:
        # smp's scSE squeezes channels by 16: fewer decoder channels build but fail at forward.
        raise _rule(
            "base_filters",
            f"must be >= {SCSE_REDUCTION} for smp's scSE attention (it "
            f"reduces channels by {SCSE_REDUCTION})",
            cfg.base_filters,
        )
    if cfg.base_filters * 2 ** (cfg.depth - 1) > 4096:
        raise ConfigError(
            f"`model.base_filters` x 2**(depth-1) must be <= 4096, but got "
            f"{cfg.base_filters} x {2 ** (cfg.depth - 1)}."
        )


def validate_model_config(cfg: ModelConfig) -> None:
    """Check names and combinations against the registries without building anything (a
    ``tu-`` timm encoder is built once, by smp, to ask whether it fits)."""
    if cfg.arch not in ARCHITECTURES:
        raise _rule("arch", f"must be one of {sorted(ARCHITECTURES)}", cfg.arch)
    if cfg.encoder == "none":
        if cfg.arch in SMP_ONLY_ARCHS:
            raise _rule(
                "arch",
                "needs an smp encoder: set `model.encoder` (e.g. resnet18, "
                f"mobilenet_v2); only {list(SCRATCH_ARCHS)} are built from scratch",
                cfg.arch,
            )
        _validate_scratch(cfg)
    else:
        _validate_smp(cfg)


def build_model(cfg: ModelConfig, num_classes: int) -> SegmentationModel:
    """Build the model a config describes; raises ConfigError for invalid combinations."""
    validate_model_config(cfg)
    classes = out_channels(num_classes)
    net: nn.Module
    if cfg.arch == "unet3plus":
        net = UNet3Plus(cfg, classes)
    elif cfg.encoder == "none":
        net = PlainUNet(cfg, classes)
    else:
        net = build_smp(cfg, classes)
    return SegmentationModel(net, cfg.depth, cfg.padding)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# The configuration `unet-search models` counts each option on (one option changed at a time).
REFERENCE_MODEL: dict[str, Any] = {
    "depth": 4,
    "base_filters": 16,
    "batchnorm": True,
    "upsampling": "transpose",
}


def option_parameter_counts() -> list[tuple[str, str, int, str]]:
    """(field, value, trainable parameters, what it is) of every from-scratch option and of
    ``unet3plus``, each on :data:`REFERENCE_MODEL` with that one field changed."""
    rows = []
    for field, values in OPTIONS.items():
        for value, text in values.items():
            changed: dict[str, Any] = {**REFERENCE_MODEL, field: value}
            cfg = ModelConfig(**changed)
            rows.append((field, value, count_parameters(build_model(cfg, 1)), text))
    cfg = ModelConfig(**{**REFERENCE_MODEL, "arch": "unet3plus", "upsampling": "bilinear"})
    rows.append(
        ("arch", "unet3plus", count_parameters(build_model(cfg, 1)), ARCHITECTURES["unet3plus"])
    )
    return rows


def preset_parameter_count(name: str) -> int:
    """Trainable parameters of a preset from config.PRESETS."""
    cfg = RunConfig.from_dict({"preset": name})
    return count_parameters(build_model(cfg.model, cfg.data.network_classes))


def save_model_dir(path: Path, model: nn.Module, card: ModelCard) -> None:
    """Write the weights (safetensors) and the ``card`` (JSON) to ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    module = getattr(model, "module", model)  # unwrap DDP
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path / MODEL_FILE))
    card.write(path)


def load_model_dir(path: Path) -> tuple[SegmentationModel, ModelCard]:
    """Load a model saved by :func:`save_model_dir` (no pickle: JSON + safetensors), and
    its card."""
    card = ModelCard.read(path)
    model = build_model(card.model, card.num_classes)
    model.load_state_dict(load_file(str(path / MODEL_FILE)))
    return model.eval(), card
