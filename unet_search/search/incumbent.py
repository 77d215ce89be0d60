"""The planned default as the incumbent: which exploring trial the final fit trains on.

A search's exploring trials are short (2-4 epochs of a 24-epoch budget at quick.yaml's
size), and a short trial's value says how fast a configuration learns more than where it
ends: a high learning rate leads at epoch 2 and can end below the planned default
(bench/README.md, "12, the incumbent"). Validation on a handful of images is noisy too:
the same configuration trained with another seed moves its early validation Dice by more
than most gains a search finds. So the planned default (``search.default_trial``, trial 1)
is the incumbent: the final fit trains on it unless a challenger beat it **at equal
epochs** (each trial's best value so far at the last epoch both trained) by more than
``search.incumbent_margin``, the validation noise. Among the challengers that did, the best
by its own best value is the source, as before. ``incumbent_margin: null`` turns the rule
off (the best exploring trial by value, whatever its epochs).

A search without the default among its candidates (``default_trial: false``, or it failed)
and a search that picks from a front (``pick: knee``) choose as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from unet_search.core.metrics import sign

__all__ = ["Curve", "gain_at_equal_epochs", "keep_or_switch", "value_at", "Verdict"]

# (epoch, the trial's best value so far at that epoch), epochs ascending
Curve = tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class Verdict:
    """The final fit's source among the candidates (its index), and why, in one line."""

    chosen: int
    why: str


def value_at(curve: Curve, epoch: int) -> float | None:
    """The best value so far at ``epoch``: the last point at or before it; None when the
    trial had none by then."""
    last = None
    for e, value in curve:
        if e > epoch:
            break
        last = value
    return last


def gain_at_equal_epochs(
    incumbent: Curve, challenger: Curve, mode: str
) -> tuple[int, float] | None:
    """(epoch, gain): how much better ``challenger``'s best value so far is than
    ``incumbent``'s at the last epoch both trained (positive: the challenger is better,
    whatever ``mode``); None when they share no epoch with a value."""
    if not incumbent or not challenger:
        return None
    epoch = min(incumbent[-1][0], challenger[-1][0])
    mine, theirs = value_at(incumbent, epoch), value_at(challenger, epoch)
    if mine is None or theirs is None:
        return None
    return epoch, sign(mode) * (theirs - mine)


def keep_or_switch(
    curves: Sequence[Curve],
    values: Sequence[float],
    names: Sequence[str],
    incumbent: int,
    mode: str,
    margin: float,
) -> Verdict:
    """The final fit's source among candidates (their ``curves``, own best ``values`` and
    ``names``): the ``incumbent`` (an index) unless a challenger beat it at equal epochs by
    more than ``margin``; then the best by value of those that did (a challenger that did
    not is never the source, however high its value at more epochs). The ``why`` says which
    comparison decided."""
    compared = {
        i: gain_at_equal_epochs(curves[incumbent], curve, mode)
        for i, curve in enumerate(curves)
        if i != incumbent
    }
    gains = {i: g for i, g in compared.items() if g is not None}
    default = f"{names[incumbent]}, the planned default"
    winners = [i for i, (_, by) in gains.items() if by > margin]
    if not winners:
        if not gains:
            return Verdict(incumbent, f"{default}: no challenger to compare at equal epochs")
        i = max(gains, key=lambda i: gains[i][1])
        epoch, gain = gains[i]
        return Verdict(
            incumbent,
            f"{default}, kept: no challenger beat it at equal epochs by more than {margin:g} "
            f"(the best, {names[i]}, by {gain:+.4f} at epoch {epoch})",
        )
    chosen = max(winners, key=lambda i: sign(mode) * values[i])
    epoch, gain = gains[chosen]
    why = f"{names[chosen]} beat {default}, by {gain:+.4f} at epoch {epoch} (margin {margin:g})"
    return Verdict(chosen, why)
