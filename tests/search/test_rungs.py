"""ASHA's rung arithmetic and what a result stands at a rung with (no Ray)."""

from __future__ import annotations

import pytest

from unet_search.search.rungs import TIE_BREAK, milestones, rank_value


def test_rungs_are_grace_times_powers_of_the_reduction_below_max_t() -> None:
    assert milestones(1, 3, 6) == [1, 3]
    assert milestones(1, 3, 9) == [1, 3]  # a rung at max_t would only end the trial
    assert milestones(2, 2, 6) == [2, 4]
    assert milestones(1, 2, 16) == [1, 2, 4, 8]
    assert milestones(3, 2, 3) == []


def test_rank_value_breaks_exact_ties_by_soft_dice_and_nothing_else() -> None:
    zero_low = {"best_val_dice": 0.0, TIE_BREAK: 0.10}
    zero_high = {"best_val_dice": 0.0, TIE_BREAK: 0.30}
    small = {"best_val_dice": 0.001, TIE_BREAK: 0.0}
    ranked = sorted(
        [zero_high, small, zero_low], key=lambda r: -rank_value(r, "best_val_dice", "max")
    )
    assert ranked == [small, zero_high, zero_low]
    # Minimised metrics: lower is better, the soft Dice still breaks ties upwards.
    a = rank_value({"best_val_loss": 0.5, TIE_BREAK: 0.2}, "best_val_loss", "min")
    b = rank_value({"best_val_loss": 0.5, TIE_BREAK: 0.4}, "best_val_loss", "min")
    c = rank_value({"best_val_loss": 0.4, TIE_BREAK: 0.0}, "best_val_loss", "min")
    assert c > b > a
    assert b == pytest.approx(-0.5 + 0.4e-6)
    assert rank_value({"val_dice": 0.3}, "best_val_dice", "max") is None
