"""Several objectives at once: non-dominated sorting with crowding distance (NSGA-II, Deb et
al. 2002), the order MO-ASHA ranks a rung by (Schmucker et al., "Multi-objective
Asynchronous Successive Halving", 2021); the knee of a front; the hypervolume of a front.

Points are tuples of *signed* values (each objective multiplied by +1 for max, -1 for min),
so larger is better in every coordinate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["crowding", "dominates", "fronts", "hypervolume", "knee", "ranked"]

Point = tuple[float, ...]


def dominates(a: Point, b: Point) -> bool:
    """``a`` is at least as good as ``b`` everywhere and better somewhere."""
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(
        x > y for x, y in zip(a, b, strict=True)
    )


def fronts(points: Mapping[str, Point]) -> list[list[str]]:
    """The keys by non-dominated front: the first front is dominated by no point, each next
    one only by points of the fronts before it (keys keep their order within a front)."""
    left = list(points)
    out = []
    while left:
        front = [k for k in left if not any(dominates(points[o], points[k]) for o in left)]
        out.append(front)
        left = [k for k in left if k not in front]
    return out


def crowding(front: Sequence[str], points: Mapping[str, Point]) -> dict[str, float]:
    """NSGA-II's crowding distance of each key of ``front``: the sum over the objectives of
    the gap between its two neighbours, each objective scaled by the front's range; the ends
    of each objective infinite (so a front's extremes are kept)."""
    distance = dict.fromkeys(front, 0.0)
    if len(front) <= 2:
        return {k: math.inf for k in front}
    for axis in range(len(points[front[0]])):
        order = sorted(front, key=lambda k: points[k][axis])
        low, high = points[order[0]][axis], points[order[-1]][axis]
        distance[order[0]] = distance[order[-1]] = math.inf
        if high == low:
            continue
        for before, key, after in zip(order, order[1:], order[2:], strict=False):
            distance[key] += (points[after][axis] - points[before][axis]) / (high - low)
    return distance


def ranked(points: Mapping[str, Point]) -> list[str]:
    """Best first: by front, then by crowding distance within it (the more isolated first),
    then by the order the keys came in. With one objective: by value, earlier first on a
    tie."""
    if points and len(next(iter(points.values()))) == 1:
        return sorted(points, key=lambda k: -points[k][0])
    out: list[str] = []
    for front in fronts(points):
        distance = crowding(front, points)
        out.extend(sorted(front, key=lambda k: -distance[k]))
    return out


def knee(front: Mapping[str, Point]) -> str | None:
    """The point of a front farthest from the straight line (plane) through its extremes,
    each objective scaled to [0, 1] over the front: where a step along the front stops
    buying much of one objective for the other. Two objectives or more; None if empty."""
    keys = list(front)
    if len(keys) <= 2:
        return keys[0] if keys else None
    dims = len(front[keys[0]])
    lows = [min(front[k][d] for k in keys) for d in range(dims)]
    highs = [max(front[k][d] for k in keys) for d in range(dims)]
    scaled = {
        k: [
            (front[k][d] - lows[d]) / (highs[d] - lows[d]) if highs[d] > lows[d] else 0.0
            for d in range(dims)
        ]
        for k in keys
    }
    # Every objective scaled so that the front's extremes lie on the plane sum(x) = 1; the
    # knee is the point that bulges farthest out of it (larger is better in each).
    return max(keys, key=lambda k: (sum(scaled[k]), -keys.index(k)))


def hypervolume(points: Sequence[Point], reference: Point) -> float:
    """The volume dominated by ``points`` and dominating ``reference`` (two objectives; larger
    is better in each): the area a front covers, the usual measure of one."""
    kept = sorted(
        {p for p in points if all(x > r for x, r in zip(p, reference, strict=True))},
        key=lambda p: -p[0],
    )
    if kept and len(kept[0]) != 2:
        raise ValueError("hypervolume: two objectives only")
    area, best_y = 0.0, reference[1]
    for x, y in kept:
        if y > best_y:
            area += (x - reference[0]) * (y - best_y)
            best_y = y
    return area
