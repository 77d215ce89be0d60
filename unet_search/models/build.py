"""The one way to check, build, count, save and load a model: the from-scratch UNet
(:mod:`unet_search.models.unet`) and the smp architectures (:mod:`unet_search.models.smp`).

``build_model(cfg, num_classes)`` returns a :class:`SegmentationModel` whose ``forward`` takes
any ``(N, C, H, W)`` input and returns ``(N, K, H, W)`` logits (``K = 1`` for binary tasks,
else ``num_classes``): it pads to what the network needs (a multiple of ``2**depth``, or the
mirror-padded input of an unpadded "valid" UNet) and crops the output back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from unet_search.core.config import RunConfig
from unet_search.core.errors import ConfigError
from unet_search.core.sections import ModelConfig
from unet_search.models.smp import (
    SCSE_REDUCTION,
    SMP_UPSAMPLING,
    SegmentationModel,
    build_smp,
    smp_encoders,
)
from unet_search.models.unet import PLAIN_UPSAMPLING, PlainUNet

__all__ = [
    "SCRATCH_ARCHS",
    "ARCHITECTURES",
    "MODEL_FILE",
    "CONFIG_FILE",
    "out_channels",
    "validate_model_config",
    "build_model",
    "count_parameters",
    "preset_parameter_count",
    "save_model_dir",
    "load_model_dir",
]


SCRATCH_ARCHS = ("unet",)


ARCHITECTURES: dict[str, str] = {
    "unet": "UNet: from scratch (encoder none) or with an smp encoder",
    "unetplusplus": "UNet++ (nested skips), smp encoder required",
    "attention_unet": "UNet with scSE attention in the decoder, smp encoder required",
}


MODEL_FILE, CONFIG_FILE = "model.safetensors", "model_config.json"


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
        net = build_smp(cfg, classes)
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
