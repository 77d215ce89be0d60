"""The live status panel a search draws when its output is a terminal (rich): the search's
name, elapsed and estimated remaining time, a bar of its budget, the best trial against the
seed baseline and Otsu, and the running and paused trials. It shows what the live view
(:class:`unet_search.search.live.LiveView`) already tracks from Tune's callbacks: no Ray or
MLflow calls of its own. Transient: at the end it gives way to the search's summary."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

__all__ = ["LivePanel", "Row", "Snapshot", "clock"]


@dataclass(frozen=True)
class Row:
    """A running or paused trial: its name, state, epoch of ``max_t`` and last value."""

    name: str
    state: str
    epoch: int
    max_t: int
    value: float | None


@dataclass(frozen=True)
class Snapshot:
    """What the panel draws, as the live view has it now."""

    title: str
    metric: str
    elapsed_s: float
    done: float  # of the budget: epochs trained, or trials ended
    total: float
    unit: str  # "epochs" | "trials"
    counts: str  # "1 running, 3 finished, ..."
    best: tuple[float, str] | None = None  # value, trial
    baseline: float | None = None
    otsu: float | None = None
    rows: tuple[Row, ...] = field(default_factory=tuple)

    @property
    def remaining_s(self) -> float | None:
        """Elapsed time scaled by what is left of the budget (None before anything is done)."""
        if self.done <= 0 or self.total <= 0:
            return None
        return max(0.0, self.elapsed_s * (self.total - self.done) / self.done)


def clock(seconds: float) -> str:
    """``mm:ss``, or ``h:mm:ss`` from an hour."""
    s = int(seconds)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
        if s >= 3600
        else f"{s // 60:02d}:{s % 60:02d}"
    )


def _render(snap: Snapshot) -> Group:
    left = snap.remaining_s
    eta = "estimating" if left is None else f"about {clock(left)} left"
    head = Text.assemble(
        (f"search {snap.title}", "bold"), f"  {clock(snap.elapsed_s)} elapsed, {eta}"
    )
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=max(snap.total, 1.0), completed=min(snap.done, snap.total), width=40),
        f"{snap.done:g} / {snap.total:g} {snap.unit}",
    )
    best = f"best {snap.metric}: none yet"
    if snap.best is not None:
        value, trial = snap.best
        best = f"best {snap.metric} {value:.4f} ({trial})"
        if snap.baseline is not None:
            best += f", {value - snap.baseline:+.4f} vs the seed baseline"
        if snap.otsu is not None and snap.metric == "val_dice":
            best += f", {value - snap.otsu:+.4f} vs Otsu"
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("trial", "state", "epoch", snap.metric):
        table.add_column(column)
    for row in snap.rows:
        shown = "" if row.value is None else f"{row.value:.4f}"
        table.add_row(row.name, row.state, f"{row.epoch} / {row.max_t}", shown)
    parts: list[RenderableType] = [head, bar, Text(f"trials: {snap.counts}"), Text(best)]
    return Group(*parts, table) if snap.rows else Group(*parts)


class LivePanel:
    """A rich ``Live`` display of :class:`Snapshot` s on ``stream`` (a terminal)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.console = Console(file=stream or sys.stdout)
        self.live: Live | None = None

    def show(self, snap: Snapshot) -> None:
        if self.live is None:
            self.live = Live(
                _render(snap), console=self.console, refresh_per_second=2, transient=True
            )
            self.live.start()
        else:
            self.live.update(_render(snap))

    def close(self) -> None:
        """Take the panel off the screen (the summary follows)."""
        if self.live is not None:
            self.live.stop()
            self.live = None
