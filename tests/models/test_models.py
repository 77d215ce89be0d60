from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unet_search.core.config import RunConfig
from unet_search.core.errors import ConfigError
from unet_search.core.sections import ModelConfig
from unet_search.models.build import (
    build_model,
    count_parameters,
    load_model_dir,
    preset_parameter_count,
    save_model_dir,
)
from unet_search.models.card import FORMAT_VERSION, ModelCard
from unet_search.models.unet import PLAIN_UPSAMPLING, dropout_rates, valid_input_size


def test_seed_keras_has_exactly_the_reference_parameter_count() -> None:
    assert preset_parameter_count("seed_keras") == 1_941_105


def test_original_unet_has_exactly_the_reference_parameter_count() -> None:
    assert preset_parameter_count("original_unet") == 31_030_658


def test_original_unet_maps_572_to_388() -> None:
    cfg = RunConfig.from_dict({"preset": "original_unet"})
    model = build_model(cfg.model, cfg.data.num_classes)
    assert model.net(torch.zeros(1, 1, 572, 572)).shape == (1, 2, 388, 388)
    assert valid_input_size(388, 4) == (572, 92)
    # Through the wrapper any size works: mirror-padded input, output cropped to the input.
    assert model(torch.zeros(1, 1, 97, 131)).shape == (1, 2, 97, 131)


def test_seed_keras_dropout_ramp() -> None:
    assert dropout_rates(4, 0.3, "ramp") == [0.1, 0.1, 0.2, 0.2, 0.3]
    assert dropout_rates(2, 0.3, "constant") == [0.3, 0.3, 0.3]
    cfg = RunConfig.from_dict({"preset": "seed_keras"})
    model = build_model(cfg.model, 1)
    rates = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert rates == [0.1, 0.1, 0.2, 0.2, 0.3, 0.2, 0.2, 0.1, 0.1]  # down, then up


@pytest.mark.parametrize("depth", [2, 3, 4, 5])
@pytest.mark.parametrize("upsampling", PLAIN_UPSAMPLING)
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_plain_unet_shapes(depth: int, upsampling: str, padding: str) -> None:
    cfg = ModelConfig(depth=depth, upsampling=upsampling, padding=padding, base_filters=4)
    model = build_model(cfg, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 33, 50)).shape == (2, 3, 33, 50)
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)


SMP_CASES = [
    (arch, encoder, depth)
    for arch in ("unet", "unetplusplus", "attention_unet")
    for encoder, depth in (
        ("resnet18", 3),
        ("mobilenet_v2", 5),
        ("mit_b0", 4),
        ("tu-mobilenetv3_small_050", 3),
    )
    if not (arch == "unetplusplus" and encoder == "mit_b0")  # a config error, tested below
]


@pytest.mark.parametrize(("arch", "encoder", "depth"), SMP_CASES)
def test_smp_architectures_shapes_and_ddp_safe_parameters(
    arch: str, encoder: str, depth: int
) -> None:
    cfg = ModelConfig(
        arch=arch,
        encoder=encoder,
        depth=depth,
        base_filters=16,
        upsampling="bilinear",
        dropout=0.1,
    )
    model = build_model(cfg, num_classes=1)
    out = model(torch.randn(2, 3, 45, 61))
    assert out.shape == (2, 1, 45, 61)
    out.mean().backward()
    # DDP needs every trainable parameter to get a gradient (unused stages are frozen).
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert 0 < count_parameters(model) < sum(p.numel() for p in model.parameters()) or depth == 5


def test_scse_attention_changes_the_decoder() -> None:
    plain = build_model(ModelConfig(encoder="resnet18", depth=3, upsampling="nearest"), 1)
    attn = build_model(
        ModelConfig(arch="attention_unet", encoder="resnet18", depth=3, upsampling="nearest"), 1
    )
    assert count_parameters(attn) > count_parameters(plain)


@pytest.mark.parametrize(
    ("cfg", "fragment"),
    [
        (ModelConfig(arch="segnet"), "`model.arch` must be one of ['attention_unet', 'unet', "),
        (ModelConfig(arch="unetplusplus"), "needs an smp encoder"),
        (ModelConfig(encoder="resnet18", upsampling="transpose"), "no transposed conv there"),
        (ModelConfig(encoder="resnet999"), "`model.encoder` must be 'none', an smp encoder or"),
        (ModelConfig(upsampling="bicubic"), "for the from-scratch UNet"),
        (
            ModelConfig(encoder="resnet18", padding="valid", upsampling="nearest"),
            "`model.padding` must be 'same' with an smp encoder",
        ),
        (ModelConfig(encoder="resnet18", depth=2, upsampling="nearest"), "must be in [3, 5]"),
        (ModelConfig(encoder_weights="imagenet"), "needs a pre-trained encoder"),
        (
            ModelConfig(
                arch="attention_unet", encoder="resnet18", base_filters=8, upsampling="nearest"
            ),
            "`model.base_filters` must be >= 16 for smp's scSE attention",
        ),
        (
            ModelConfig(encoder="resnet18", upsampling="nearest", attention="gate"),
            "`model.attention` must be one of ['none', 'scse'] with an smp encoder",
        ),
        (
            ModelConfig(encoder="resnet18", upsampling="nearest", pooling="strided"),
            "`model.pooling` must be 'max' with an smp encoder",
        ),
        (
            ModelConfig(arch="unetplusplus", encoder="mit_b0", upsampling="nearest"),
            "cannot feed 'unetplusplus'",
        ),
        (
            ModelConfig(encoder="tu-vit_tiny_patch16_224", upsampling="nearest"),
            "must be a timm model smp can use at depth 4 (smp says ValueError: Unsupported",
        ),
        (
            ModelConfig(encoder="tu-no_such_net", upsampling="nearest"),
            "(smp says RuntimeError: Unknown model (no_such_net))",
        ),
        (ModelConfig(arch="unet3plus", upsampling="bilinear", depth=2), "in [3, 4, 5] for 'unet3"),
        (
            ModelConfig(arch="unet3plus", upsampling="transpose"),  # set by the user: refused
            "`model.upsampling` must be 'bilinear' or 'nearest' for",
        ),
        (
            ModelConfig(arch="unet3plus", upsampling="bilinear", padding="valid"),
            "`model.padding` must be 'same' for 'unet3plus'",
        ),
        (
            ModelConfig(arch="unet3plus", upsampling="bilinear", attention="gate"),
            "`model.attention` must be one of ['none', 'scse'] for 'unet3plus'",
        ),
        (
            ModelConfig(arch="unet3plus", encoder="resnet18", upsampling="bilinear"),
            "`model.arch` must be one of ['unet', 'unetplusplus'] with an smp encoder",
        ),
        (
            ModelConfig(padding="valid", bottleneck="aspp"),
            "`model.bottleneck` must be one of ['plain'] with `padding: valid`",
        ),
    ],
)
def test_invalid_combinations_fail_at_config_time(cfg: ModelConfig, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_model(cfg, 1)
    assert fragment in str(err.value)


def test_an_unset_upsampling_resolves_to_one_the_chosen_model_can_use() -> None:
    """`--set arch=unet3plus` alone: the default `transpose` (the from-scratch UNet's) becomes
    UNet 3+'s `bilinear`, an smp decoder's `nearest`, also when a config is changed later."""
    from unet_search.core.config import RunConfig

    assert ModelConfig().upsampling == "transpose"
    assert ModelConfig(arch="unet3plus").upsampling == "bilinear"
    assert ModelConfig(encoder="resnet18").upsampling == "nearest"
    plain = RunConfig.from_dict({"depth": 3, "base_filters": 4})
    assert plain.replace(arch="unet3plus").model.upsampling == "bilinear"
    assert plain.replace(encoder="resnet18").model.upsampling == "nearest"
    assert plain.replace(arch="unet3plus").replace(arch="unet").model.upsampling == "transpose"
    model = build_model(RunConfig.from_dict({"arch": "unet3plus", "depth": 3}).model, 1)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 32, 32)
    # A value that was set stays set: the same change keeps it, and the rule refuses it.
    chosen = RunConfig.from_dict({"upsampling": "transpose"})
    assert chosen.replace(arch="unet3plus").model.upsampling == "transpose"


def test_pretrained_weights_unavailable_offline_is_a_clear_error() -> None:
    cfg = ModelConfig(
        encoder="resnet18", encoder_weights="imagenet", depth=3, upsampling="nearest"
    )
    with pytest.raises(ConfigError, match="not available offline"):
        build_model(cfg, 1)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    cfg = ModelConfig(depth=2, base_filters=4, batchnorm=True)
    model = build_model(cfg, 1).eval()
    save_model_dir(tmp_path / "m", model, ModelCard(cfg, 1, {"image_size": 32}))
    loaded, card = load_model_dir(tmp_path / "m")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert card == ModelCard(cfg, 1, {"image_size": 32}, FORMAT_VERSION)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "model.safetensors",
        "model_config.json",
    ]
