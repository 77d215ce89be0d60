from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unet_search.core.config import RunConfig
from unet_search.core.errors import ConfigError
from unet_search.core.sections import IGNORE, LossConfig
from unet_search.train.losses import LOSSES, build_loss, loss_of


def _binary_case() -> tuple[torch.Tensor, torch.Tensor]:
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[:, :2] = 1
    logits = torch.where(target[:, None] > 0, 20.0, -20.0)
    return logits, target


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_perfect_prediction_has_near_zero_loss(name: str) -> None:
    logits, target = _binary_case()
    loss = build_loss(LossConfig(loss=name))(logits, target)
    assert loss.item() == pytest.approx(0.0, abs=1e-3)


def test_bce_matches_hand_computed_value() -> None:
    logits = torch.zeros(1, 1, 2, 2)  # p = 0.5 everywhere
    target = torch.tensor([[[1, 0], [0, 1]]])
    loss = build_loss(LossConfig(loss="bce"))(logits, target)
    assert loss.item() == pytest.approx(math.log(2))


def test_dice_loss_hand_computed() -> None:
    # probabilities 1 on 2 of 4 true pixels, 0 elsewhere. With smoothing 1 in the Tversky
    # form, dice = (2 TP + 2) / (|P| + |T| + 2) = (4 + 2) / (2 + 4 + 2).
    target = torch.tensor([[[1, 1], [1, 1]]])
    logits = torch.tensor([[[[50.0, 50.0], [-50.0, -50.0]]]])
    loss = build_loss(LossConfig(loss="dice"))(logits, target)
    assert loss.item() == pytest.approx(1 - 6 / 8, abs=1e-4)


def test_mix_is_weighted_sum_of_dice_and_bce() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 8, 8))
    dice = build_loss(LossConfig(loss="dice"))(logits, target)
    bce = build_loss(LossConfig(loss="bce"))(logits, target)
    mix = build_loss(LossConfig(loss="mix", dice_weight=0.3))(logits, target)
    assert mix.item() == pytest.approx(0.3 * dice.item() + 0.7 * bce.item(), rel=1e-5)


def test_border_weights_weigh_the_cross_entropy_per_pixel() -> None:
    """The border weight map's weighted mean of the pixels' cross-entropy (the loss keeps
    its scale beside the Dice term), by hand; padding (IGNORE) counts nowhere; all-ones
    weights are the plain loss; the Dice part of ``mix`` is not weighted."""
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 0.0]]]])
    target = torch.tensor([[[1, 0], [0, IGNORE]]])
    weights = torch.tensor([[[3.0, 1.0], [2.0, 7.0]]])
    ce = [math.log(2), math.log(1 + math.e**2), math.log(1 + math.e**-1)]  # per valid pixel
    by_hand = (3 * ce[0] + 1 * ce[1] + 2 * ce[2]) / (3 + 1 + 2)
    bce = build_loss(LossConfig(loss="bce", border_weight=10))
    assert bce(logits, target, weights).item() == pytest.approx(by_hand, rel=1e-6)
    assert bce(logits, target, torch.ones(1, 2, 2)).item() == pytest.approx(
        bce(logits, target).item(), rel=1e-6
    )
    mix = build_loss(LossConfig(loss="mix", dice_weight=0.3, border_weight=10))
    dice = build_loss(LossConfig(loss="dice"))(logits, target).item()
    assert mix(logits, target, weights).item() == pytest.approx(0.3 * dice + 0.7 * by_hand)


def test_tversky_with_equal_weights_is_dice_and_focal_gamma0_is_bce() -> None:
    torch.manual_seed(1)
    logits, target = torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 8, 8))
    tversky = build_loss(LossConfig(loss="tversky", tversky_alpha=0.5, tversky_beta=0.5))
    assert tversky(logits, target).item() == pytest.approx(
        build_loss(LossConfig(loss="dice"))(logits, target).item()
    )
    focal = build_loss(LossConfig(loss="focal", focal_gamma=0.0))
    assert focal(logits, target).item() == pytest.approx(
        build_loss(LossConfig(loss="bce"))(logits, target).item(), rel=1e-5
    )


def test_multiclass_uses_cross_entropy() -> None:
    torch.manual_seed(2)
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    loss = build_loss(LossConfig(loss="bce"))(logits, target)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, target).item())
    assert build_loss(LossConfig(loss="mix"))(logits, target).item() > 0


def test_unknown_loss_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match=r"must be one of \['bce', 'dice'"):
        build_loss(LossConfig(loss="hinge"))


def test_where_smp_losses_differ_ours_are_kept_and_where_they_agree_smps_is_used() -> None:
    """The measured reasons behind losses.py's choice (see its docstring)."""
    from segmentation_models_pytorch import losses as smp_losses

    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 8, 8) > 0.6).long()
    target[0, :2] = IGNORE  # padding rows

    def ours(name: str, x: torch.Tensor, y: torch.Tensor) -> float:
        return float(build_loss(LossConfig(loss=name, focal_gamma=2.0))(x, y))

    focal = smp_losses.FocalLoss("binary", gamma=2.0, ignore_index=IGNORE)(logits, target)
    valid = (target != IGNORE).unsqueeze(1)
    bce = F.binary_cross_entropy_with_logits(
        logits[valid], target.unsqueeze(1)[valid].float(), reduction="none"
    )
    by_hand = float(((1 - torch.exp(-bce)) ** 2 * bce).mean())
    assert ours("focal", logits, target) == pytest.approx(float(focal), abs=1e-6)
    assert ours("focal", logits, target) == pytest.approx(by_hand, abs=1e-6)
    # Dice: the same as smp's smooth=1 with foreground present ...
    dice = smp_losses.DiceLoss("binary", smooth=1.0, ignore_index=IGNORE)(logits, target)
    assert ours("dice", logits, target) == pytest.approx(float(dice), abs=1e-5)
    # ... but on a patch without foreground smp's is 0: nothing pushes false positives down.
    empty = torch.zeros_like(target)
    assert float(smp_losses.DiceLoss("binary", smooth=1.0)(logits, empty)) == 0.0
    assert ours("dice", logits, empty) > 0.9
    # BCE: smp's averages over the ignored pixels too.
    smp_bce = smp_losses.SoftBCEWithLogitsLoss(ignore_index=IGNORE)(
        logits, target.unsqueeze(1).float()
    )
    assert ours("bce", logits, target) == pytest.approx(float(bce.mean()), abs=1e-6)
    assert abs(float(smp_bce) - float(bce.mean())) > 0.05
    # Multi-class focal: smp's is one-vs-rest sigmoids, ours the softmax's cross-entropy.
    many, classes = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    smp_focal = smp_losses.FocalLoss("multiclass", gamma=2.0)(many, classes)
    assert abs(ours("focal", many, classes) - float(smp_focal)) > 0.1


def test_an_instance_target_scores_the_object_region_by_hand() -> None:
    """With ``regions`` (target ``boundary`` / ``distance``) the Dice's channel 0 is the
    object (1 - P(background) against the mask), not the background. Two pixels: the
    background predicted as interior, a boundary pixel predicted as boundary. Tversky form
    with smoothing 1: object TP 1, FP 1 -> 1 - 2 / 2.5; interior TP 0, FP 1 -> 1 - 1 / 1.5;
    boundary exact -> 0. Without: background TP 0, FN 1 -> 1 - 1 / 1.5."""
    target = torch.tensor([[[0, 2]]])
    logits = torch.tensor([[[[-50.0, -50.0]], [[50.0, -50.0]], [[-50.0, 50.0]]]])
    regions = build_loss(LossConfig(loss="dice"), regions=True)(logits, target).item()
    plain = build_loss(LossConfig(loss="dice"))(logits, target).item()
    assert regions == pytest.approx((0.2 + 1 / 3 + 0.0) / 3, abs=1e-5)
    assert plain == pytest.approx((1 / 3 + 1 / 3 + 0.0) / 3, abs=1e-5)
    # the cross-entropy is the same either way, and a binary loss ignores the flag
    ce = build_loss(LossConfig(loss="bce"))
    assert build_loss(LossConfig(loss="bce"), regions=True)(logits, target) == ce(logits, target)
    x, y = torch.randn(2, 1, 4, 4), torch.randint(0, 2, (2, 4, 4))
    assert build_loss(LossConfig(loss="mix"), regions=True)(x, y) == build_loss(
        LossConfig(loss="mix")
    )(x, y)


def test_a_run_with_an_instance_target_trains_on_regions() -> None:
    assert not loss_of(RunConfig()).regions
    assert loss_of(RunConfig.from_dict({"target": "boundary"})).regions
    assert loss_of(RunConfig.from_dict({"target": "distance"})).regions
