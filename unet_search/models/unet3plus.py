"""UNet 3+ (Huang et al. 2020, arXiv 2004.08790): full-scale skip connections.

The encoder is the from-scratch UNet's (``block``, ``pooling``, ``bottleneck`` options). Every
decoder stage ``i`` receives all encoder stages at or above its resolution (max-pooled down
to it), its own encoder stage, and every deeper decoder stage and the bottleneck (resampled
up to it), each mapped by a 3x3 conv (+ BN, ReLU) to ``unet3plus_channels``; the
``depth + 1`` maps are concatenated and fused by a 3x3 conv + BN + ReLU (scSE after it with
``attention='scse'``). A 1x1 head reads the top stage. Deep supervision and the
classification-guided module of the paper are not built (they are optional there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unet_search.core.sections import ModelConfig
from unet_search.models.blocks import SCSE, conv_norm_relu, he_init, interpolation
from unet_search.models.unet import contracting_path, dropout_rates, encode, level_widths

__all__ = ["UNet3Plus", "UNET3PLUS_DEPTHS"]


UNET3PLUS_DEPTHS = (3, 4, 5)


class UNet3Plus(nn.Module):
    """UNet 3+ with ``depth`` downsamplings (3-5) and ``unet3plus_channels`` per skip."""

    def __init__(self, cfg: ModelConfig, classes: int) -> None:
        super().__init__()
        depth, bn, c = cfg.depth, cfg.batchnorm, cfg.unet3plus_channels
        widths, rates = level_widths(cfg), dropout_rates(depth, cfg.dropout, cfg.dropout_schedule)
        self.down, self.pools = contracting_path(cfg, "same")
        fused = (depth + 1) * c
        self.mode = cfg.upsampling
        # stage i (top = 0) takes sources 0..depth: encoder j <= i, then decoder k > i
        # (k = depth is the bottleneck), in that order.
        self.branches = nn.ModuleDict()
        self.fuse = nn.ModuleDict()
        for i in reversed(range(depth)):
            sources = [widths[j] for j in range(i + 1)]
            sources += [widths[depth] if k == depth else fused for k in range(i + 1, depth + 1)]
            self.branches[str(i)] = nn.ModuleList(conv_norm_relu(s, c, bn) for s in sources)
            fuse: list[nn.Module] = [*conv_norm_relu(fused, fused, bn)]
            if rates[i] > 0:
                fuse.append(nn.Dropout(rates[i]))
            if cfg.attention == "scse":
                fuse.append(SCSE(fused))
            self.fuse[str(i)] = nn.Sequential(*fuse)
        self.head = nn.Conv2d(fused, classes, kernel_size=1)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc = encode(self.down, self.pools, x)
        depth = len(self.pools)
        dec: dict[int, torch.Tensor] = {depth: enc[depth]}
        for i in reversed(range(depth)):
            size = (enc[i].shape[-2], enc[i].shape[-1])
            parts = []
            branches = self.branches[str(i)]
            assert isinstance(branches, nn.ModuleList)
            for j, branch in enumerate(branches):
                if j <= i:
                    src = enc[j] if j == i else F.max_pool2d(enc[j], 2 ** (i - j))
                else:
                    src = interpolation(dec[j], size, self.mode)
                parts.append(branch(src))
            dec[i] = self.fuse[str(i)](torch.cat(parts, dim=1))
        return self.head(dec[0])
