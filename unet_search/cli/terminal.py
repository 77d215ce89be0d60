"""What the console script draws on a terminal only (rich): a progress bar."""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["progress_bar"]


def progress_bar(total: int, what: str) -> Callable[..., None]:
    """``advance(n, done=False)`` of a progress bar over ``total`` items when stdout is a
    terminal (rich; it goes when done); nothing otherwise (a pipe or a log gets no bar)."""
    if not sys.stdout.isatty():
        return lambda n, done=False: None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    progress = Progress(
        f"[bold]{what}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
    )
    task = progress.add_task(what, total=total)
    progress.start()

    def advance(n: int, done: bool = False) -> None:
        progress.advance(task, n)
        if done:
            progress.stop()

    return advance
