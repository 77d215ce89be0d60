"""segmentation_models_pytorch models (UNet, UNet++, with or without scSE decoder attention) on
a named encoder (smp's own, or ``tu-`` + a timm model),
never downloading weights, with the encoder stages the decoder does not reach frozen out of
DDP's way."""

from __future__ import annotations

import functools

import torch
from torch import nn

from unet_search.core.errors import ConfigError
from unet_search.core.sections import ModelConfig

__all__ = ["build_smp", "SMP_ARCHS", "smp_encoders", "SMP_UPSAMPLING"]


SMP_UPSAMPLING = ("nearest", "bilinear", "bicubic")


# arch -> smp class name (attention_unet is read as unet + attention: scse by ModelConfig).
SMP_ARCHS: dict[str, str] = {"unet": "Unet", "unetplusplus": "UnetPlusPlus"}


@functools.cache
def smp_encoders() -> tuple[str, ...]:
    """Names of every encoder segmentation-models-pytorch offers."""
    import segmentation_models_pytorch as smp

    return tuple(sorted(smp.encoders.get_encoder_names()))


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


def build_smp(cfg: ModelConfig, classes: int) -> nn.Module:
    import segmentation_models_pytorch as smp

    class_name = SMP_ARCHS[cfg.arch]
    attention = None if cfg.attention == "none" else cfg.attention
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
            decoder_attention_type=attention,
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
