"""The incumbent rule on made-up rung results (no Ray): the planned default is the final
fit's source unless a challenger beat it at equal epochs by more than the margin."""

from __future__ import annotations

import pytest

from unet_search.search.incumbent import gain_at_equal_epochs, keep_or_switch, value_at

DEFAULT = ((1, 0.40), (2, 0.55))  # paused at ASHA's first rung (epoch 2)


def test_a_trials_value_at_an_epoch_is_its_best_so_far_by_then() -> None:
    curve = ((3, 0.2), (6, 0.5), (9, 0.4))  # a metric due every 3 epochs (the DSB score)
    assert [value_at(curve, e) for e in (1, 3, 5, 6, 8, 12)] == [None, 0.2, 0.2, 0.5, 0.5, 0.4]


def test_challengers_are_compared_at_the_last_epoch_both_trained() -> None:
    promoted = ((1, 0.50), (2, 0.58), (3, 0.66), (4, 0.70))  # went on to rung 4
    assert gain_at_equal_epochs(DEFAULT, promoted, "max") == (2, pytest.approx(0.03))
    assert gain_at_equal_epochs(promoted, DEFAULT, "max") == (2, pytest.approx(-0.03))
    # val_loss: smaller is better, the gain is still positive for the better one
    assert gain_at_equal_epochs(((1, 0.9), (2, 0.7)), ((1, 0.8), (2, 0.6)), "min") == (
        2,
        pytest.approx(0.1),
    )
    assert gain_at_equal_epochs((), promoted, "max") is None
    assert gain_at_equal_epochs(((3, 0.5),), ((1, 0.2), (2, 0.3)), "max") is None


def test_the_default_stays_unless_a_challenger_beats_it_by_more_than_the_margin() -> None:
    names = ["t001", "t002", "t003"]
    # t002 trained further and has the best value (0.70 at epoch 4), but at the default's
    # epoch 2 it is +0.03 only: within a margin of 0.05 the default is kept (the low-fidelity
    # trap: a fast learner leads at epoch 4 because it had 4 epochs, not because it is better).
    curves = [DEFAULT, ((1, 0.50), (2, 0.58), (3, 0.66), (4, 0.70)), ((1, 0.30), (2, 0.52))]
    values = [0.55, 0.70, 0.52]
    kept = keep_or_switch(curves, values, names, 0, "max", 0.05)
    assert kept.chosen == 0
    assert kept.why == (
        "t001, the planned default, kept: no challenger beat it at equal epochs by more than "
        "0.05 (the best, t002, by +0.0300 at epoch 2)"
    )
    # With a margin below its gain it wins, and of two winners the best by value is chosen.
    assert keep_or_switch(curves, values, names, 0, "max", 0.02).chosen == 1
    curves[2] = ((1, 0.45), (2, 0.65))  # +0.10 at epoch 2, but 0.65 < t002's 0.70
    values[2] = 0.65
    switched = keep_or_switch(curves, values, names, 0, "max", 0.02)
    assert switched.chosen == 1
    assert switched.why == (
        "t002 beat t001, the planned default, by +0.0300 at epoch 2 (margin 0.02)"
    )
    assert keep_or_switch(curves, values, names, 0, "max", 0.05).chosen == 2
    # A margin of 0: any gain at equal epochs switches; no gain keeps the default.
    assert keep_or_switch([DEFAULT, DEFAULT], [0.55, 0.55], names[:2], 0, "max", 0.0).chosen == 0


def test_the_default_stays_when_no_challenger_can_be_compared() -> None:
    alone = keep_or_switch([DEFAULT], [0.55], ["t001"], 0, "max", 0.02)
    assert (alone.chosen, alone.why) == (
        0,
        "t001, the planned default: no challenger to compare at equal epochs",
    )
    # A challenger with no result at any epoch the default has: nothing says it is better.
    late = keep_or_switch([((3, 0.5),), DEFAULT], [0.5, 0.55], ["t001", "t002"], 0, "max", 0.0)
    assert late.chosen == 0


def test_a_minimized_metric_switches_on_a_lower_value() -> None:
    curves = [((1, 0.90), (2, 0.70)), ((1, 0.80), (2, 0.60)), ((1, 0.85), (2, 0.65))]
    verdict = keep_or_switch(curves, [0.70, 0.60, 0.65], ["a", "b", "c"], 0, "min", 0.02)
    assert verdict.chosen == 1  # both beat it by more than 0.02; b's loss is the lower
