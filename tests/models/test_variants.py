"""The from-scratch UNet's variants (REFERENCE.md 1d-1e, unet_search.models.blocks): shapes of
every option next to every other option (pairwise), parameter counts against hand-computed
formulas, the attention gate's and the transformer bottleneck's behaviour."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from unet_search.core.config import RunConfig
from unet_search.core.errors import ConfigError
from unet_search.core.sections import ModelConfig
from unet_search.models.blocks import (
    ASPP,
    AttentionGate,
    TransformerBottleneck,
    aspp_rates,
    conv_block,
    sine_positions,
)
from unet_search.models.build import build_model, count_parameters, validate_model_config

FACTORS: dict[str, tuple[Any, ...]] = {
    "arch": ("unet", "unet3plus"),
    "block": ("plain", "residual", "separable"),
    "pooling": ("max", "avg", "strided"),
    "bottleneck": ("plain", "dilated", "aspp", "transformer"),
    "attention": ("none", "gate", "scse"),
    "depth": (2, 3, 4, 5),
    "padding": ("same", "valid"),
    "upsampling": ("transpose", "bilinear", "nearest"),
    "batchnorm": (True, False),
    "classes": (1, 3),
}


def _valid(case: dict[str, Any]) -> bool:
    fields = {k: v for k, v in case.items() if k != "classes"}
    try:
        validate_model_config(ModelConfig(**fields))
    except ConfigError:
        return False
    return True


def _pairwise() -> list[dict[str, Any]]:
    """A greedy all-pairs set: every valid pair of option values (two factors) appears in
    at least one valid case. The full product (~10,000 models) belongs in bench/variants.py."""
    names = list(FACTORS)
    cases = [
        dict(zip(names, values, strict=True)) for values in itertools.product(*FACTORS.values())
    ]
    cases = [c for c in cases if _valid(c)]

    def pairs(case: dict[str, Any]) -> set[tuple[str, Any, str, Any]]:
        return {(a, case[a], b, case[b]) for a, b in itertools.combinations(names, 2)}

    case_pairs = [pairs(c) for c in cases]
    uncovered = set().union(*case_pairs)
    chosen = []
    while uncovered:
        best = max(range(len(cases)), key=lambda i: len(case_pairs[i] & uncovered))
        chosen.append(cases[best])
        uncovered -= case_pairs[best]
    return chosen


PAIRWISE = _pairwise()


def _ids(cases: list[dict[str, Any]]) -> Iterator[str]:
    for c in cases:
        yield "-".join(str(v) for v in c.values())


def test_pairwise_cases_cover_every_option_and_stay_small() -> None:
    for name, values in FACTORS.items():
        assert {c[name] for c in PAIRWISE} == set(values), name
    assert len(PAIRWISE) < 40


@pytest.mark.parametrize("case", PAIRWISE, ids=list(_ids(PAIRWISE)))
def test_every_option_with_every_other_builds_runs_and_trains_every_parameter(
    case: dict[str, Any],
) -> None:
    fields = {k: v for k, v in case.items() if k != "classes"}
    cfg = ModelConfig(
        **fields,
        base_filters=2,
        transformer_width=8,
        transformer_heads=2,
        transformer_layers=1,
        unet3plus_channels=2,
    )
    model = build_model(cfg, num_classes=case["classes"]).train()
    out = model(torch.randn(2, 3, 37, 29))  # odd sides: padded in, cropped out
    assert out.shape == (2, case["classes"], 37, 29)
    out.square().mean().backward()
    # DDP: every trainable parameter gets a gradient (no find_unused_parameters needed).
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("batchnorm", [True, False])
def test_separable_block_parameters(batchnorm: bool) -> None:
    cin, cout = 6, 10
    block = conv_block("separable", cin, cout, 0.0, batchnorm, "same")
    # per conv: depthwise 3x3 (no bias) + pointwise 1x1 (bias unless BN) + BN (2 per channel)
    per_out = 2 * cout if batchnorm else cout
    expected = (9 * cin + cin * cout + per_out) + (9 * cout + cout * cout + per_out)
    assert _params(block) == expected
    full = conv_block("plain", cin, cout, 0.0, batchnorm, "same")
    assert _params(full) == (9 * cin * cout + per_out) + (9 * cout * cout + per_out)


def test_residual_block_parameters_and_identity_shortcut() -> None:
    cin, cout = 6, 10
    projected = conv_block("residual", cin, cout, 0.0, True, "same")
    convs = (9 * cin * cout + 2 * cout) + (9 * cout * cout + 2 * cout)
    assert _params(projected) == convs + (cin * cout + 2 * cout)  # 1x1 projection + BN
    same = conv_block("residual", cout, cout, 0.0, True, "same")
    assert _params(same) == 2 * (9 * cout * cout + 2 * cout)  # identity: no parameters
    valid = conv_block("residual", cin, cout, 0.0, False, "valid")
    assert valid(torch.randn(1, cin, 20, 17)).shape == (1, cout, 16, 13)  # shortcut cropped


def test_attention_gate_parameters_coefficients_and_half_strength() -> None:
    cx, cg = 8, 16
    gate = AttentionGate(cx, cg)
    inter = cx // 2
    # W_x (no bias), W_g (+ bias b), psi (inter -> 1, + bias)
    assert _params(gate) == cx * inter + (cg * inter + inter) + (inter + 1)
    x, g = torch.randn(2, cx, 12, 10), torch.randn(2, cg, 6, 5)
    alpha = gate.coefficients(x, g)
    assert alpha.shape == (2, 1, 12, 10)  # one coefficient per pixel
    assert float(alpha.detach().min()) >= 0.0 and float(alpha.detach().max()) <= 1.0
    assert float(alpha.detach().std()) > 0.01  # they vary over the image
    with torch.no_grad():
        gate.psi.weight.zero_()
        gate.psi.bias.zero_()
    assert torch.allclose(gate(x, g), 0.5 * x)  # sigmoid(0) = 0.5


def test_unet3plus_stage_parameters() -> None:
    c, f, depth = 4, 3, 3
    cfg = ModelConfig(
        arch="unet3plus", depth=depth, base_filters=f, upsampling="bilinear", unet3plus_channels=c
    )
    net = build_model(cfg, 1).net
    widths = [f * 2**i for i in range(depth + 1)]
    fused = (depth + 1) * c
    for stage in range(depth):
        # encoder stages 0..stage, then decoder stages stage+1..depth-1 and the bottleneck
        sources = widths[: stage + 1] + [fused] * (depth - 1 - stage) + [widths[depth]]
        branches = sum(9 * s * c + 2 * c for s in sources)  # 3x3 conv (no bias) + BN
        assert _params(net.branches[str(stage)]) == branches
        assert _params(net.fuse[str(stage)]) == 9 * fused * fused + 2 * fused
    assert _params(net.head) == fused + 1


def test_aspp_rates_fit_the_map_and_work_at_batch_one() -> None:
    assert aspp_rates(8) == (1, 3, 4)
    assert aspp_rates(16) == (3, 6, 9)
    assert aspp_rates(33) == (6, 12, 18)  # DeepLab v3's own map
    assert aspp_rates(2) == (1, 1, 1) and aspp_rates(1) == (1, 1, 1)
    aspp = ASPP(8, batchnorm=True, dropout=0.0).train()
    assert aspp(torch.randn(1, 8, 5, 7)).shape == (1, 8, 5, 7)  # BN on a 1x1 map would fail


def test_transformer_bottleneck_takes_any_size_with_the_same_weights() -> None:
    torch.manual_seed(0)
    block = TransformerBottleneck(8, width=16, heads=2, layers=2, batchnorm=True).eval()
    with torch.no_grad():
        small = block(torch.randn(2, 8, 3, 5))
        large = block(torch.randn(2, 8, 7, 4))
    assert small.shape == (2, 8, 3, 5) and large.shape == (2, 8, 7, 4)
    assert torch.isfinite(small).all() and torch.isfinite(large).all()
    codes = sine_positions(7, 4, 16, torch.device("cpu"))
    assert codes.shape == (28, 16) and len({tuple(r.tolist()) for r in codes}) == 28
    # position codes: the same feature at two places gives two different tokens
    flat = torch.ones(1, 8, 3, 5)
    with torch.no_grad():
        out = block(flat)
    assert not torch.allclose(out[..., 0, 0], out[..., 2, 4])
    model = build_model(
        ModelConfig(
            bottleneck="transformer",
            depth=3,
            base_filters=4,
            transformer_width=16,
            transformer_heads=4,
        ),
        1,
    ).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)
        assert model(torch.randn(1, 3, 40, 88)).shape == (1, 1, 40, 88)


def test_transformer_token_limit_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"`model.bottleneck` 'transformer' holds at most 1024"):
        RunConfig.from_dict({"bottleneck": "transformer", "patch_size": 256, "depth": 2})
    ok = RunConfig.from_dict({"bottleneck": "transformer", "patch_size": 256, "depth": 3})
    assert ok.model.bottleneck == "transformer"  # 32 x 32 = 1024 tokens


def test_attention_unet_is_unet_with_scse_everywhere() -> None:
    old = RunConfig.from_dict({"arch": "attention_unet", "encoder": "resnet18"})
    assert (old.model.arch, old.model.attention) == ("unet", "scse")
    new = RunConfig.from_dict({"arch": "unet", "attention": "scse", "encoder": "resnet18"})
    assert old == new
    with pytest.raises(ConfigError, match=r"`model.attention` must be 'scse' or left out"):
        RunConfig.from_dict({"arch": "attention_unet", "attention": "gate"})
    # from scratch too now: scSE squeezes narrow decoders to at least one channel
    net = build_model(ModelConfig(arch="attention_unet", base_filters=4, depth=2), 1)
    assert count_parameters(net) > count_parameters(
        build_model(ModelConfig(base_filters=4, depth=2), 1)
    )
