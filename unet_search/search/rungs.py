"""What ASHA's rungs are and rank by (:mod:`unet_search.search.asha`): the rungs of a
search, and the value (one objective) or the vector (several) a result stands at a rung with.
"""

from __future__ import annotations

from typing import Any

from unet_search.core.metrics import sign

__all__ = ["milestones", "rank_value", "rank_vector", "TIE_BREAK", "TIE_WEIGHT"]

TIE_BREAK = "best_val_soft_dice"
TIE_WEIGHT = 1e-6  # Dice values of distinct trials differ by far more than this


def rank_vector(
    result: dict[str, Any], objectives: tuple[tuple[str, str], ...]
) -> tuple[float, ...] | None:
    """What a rung ranks a result by: each objective's value, signed (larger is better), the
    first with :func:`rank_value`'s tie-break; None when the result lacks one."""
    first = rank_value(result, *objectives[0])
    rest = [(result.get(metric), mode) for metric, mode in objectives[1:]]
    if first is None or any(value is None for value, _ in rest):
        return None
    return (first, *(float(value) * sign(mode) for value, mode in rest if value is not None))


def rank_value(result: dict[str, Any], metric: str, mode: str) -> float | None:
    """The value a rung ranks a result by, larger is better: the metric (signed by ``mode``)
    plus a millionth of the best soft Dice so far, which orders exact ties and nothing
    else. None when the result lacks the metric."""
    if metric not in result or result[metric] is None:
        return None
    value = float(result[metric]) * sign(mode)
    return value + TIE_WEIGHT * float(result.get(TIE_BREAK) or 0.0)


def milestones(grace_period: int, reduction_factor: int, max_t: int) -> list[int]:
    """The rungs: ``grace_period`` x ``reduction_factor``^k epochs, below ``max_t``."""
    out, rung = [], grace_period
    while rung < max_t:
        out.append(rung)
        rung *= reduction_factor
    return out
