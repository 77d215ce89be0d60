"""Non-dominated sorting, crowding, the knee and the hypervolume on points by hand (no Ray)."""

from __future__ import annotations

import math

import pytest

from unet_search.search.pareto import crowding, dominates, fronts, hypervolume, knee, ranked


def test_a_point_dominates_another_only_when_no_worse_in_all_and_better_in_one() -> None:
    assert dominates((2.0, 1.0), (1.0, 1.0))
    assert not dominates((1.0, 1.0), (1.0, 1.0))  # equal: neither
    assert not dominates((2.0, 0.0), (1.0, 1.0))  # a trade: neither
    assert not dominates((1.0, 1.0), (2.0, 1.0))


def test_fronts_crowding_knee_and_hypervolume_by_hand() -> None:
    """Signed points (larger is better in both): A, B, C trade one objective for the other;
    D and E are each dominated (by A, B)."""
    points = {
        "A": (3.0, 1.0),
        "B": (2.5, 2.5),
        "C": (1.0, 3.0),
        "D": (1.0, 1.0),
        "E": (2.4, 0.5),
    }
    assert fronts(points) == [["A", "B", "C"], ["D", "E"]]
    front = {k: points[k] for k in ("A", "B", "C")}
    # the ends infinite; B: (3 - 1) / 2 on x plus (3 - 1) / 2 on y
    assert crowding(["A", "B", "C"], front) == {"A": math.inf, "B": 2.0, "C": math.inf}
    assert ranked(points) == ["A", "C", "B", "D", "E"]  # ends first, then by front
    # scaled to [0, 1]: A (1, 0), C (0, 1) on the line x + y = 1; B (0.75, 0.75) above it
    assert knee(front) == "B"
    # [0, 3] x [0, 1] + [0, 2.5] x [1, 2.5] + [0, 1] x [2.5, 3]
    assert hypervolume(list(points.values()), (0.0, 0.0)) == pytest.approx(7.25)
    assert ranked({"a": (0.2,), "b": (0.5,), "c": (0.5,)}) == ["b", "c", "a"]  # one objective
