"""What the commands check and say before anything starts: the tracking store answers, what
of a space yielded to the user's ``--set``, the images whose sizes will spoil a run."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["require_tracking", "say_notes", "size_warnings", "warn_sizes"]


def require_tracking(workdir: Path) -> None:
    """The tracking store answers (a server that is not there: one line at once), before the
    data are read or Ray starts."""
    from unet_search.tracking.client import resolve_tracking_uri
    from unet_search.tracking.outage import require_reachable

    require_reachable(resolve_tracking_uri(workdir))


def say_notes(notes: Sequence[str]) -> None:
    """What of a space yielded to the user's ``--set``, a line each."""
    for note in notes:
        print(f"note         {note}", flush=True)


def warn_sizes(arrays: Any, scale: float | None = None) -> None:
    """The images' sizes that will spoil a run, a warning line each (standard error)."""
    for line in size_warnings(arrays.names, arrays.sizes, scale):
        print(f"warning: {line}", file=sys.stderr, flush=True)


def size_warnings(names: tuple[str, ...], sizes: Any, scale: float | None = None) -> list[str]:
    """What the images' sizes (N, 2) will spoil, a line each naming them: a side under the
    smallest patch a plan makes, a planned ``scale`` below 1/3."""
    from unet_search.plan.planner import BOTTLENECK_PX, MIN_DEPTH

    min_px = 2**MIN_DEPTH * BOTTLENECK_PX

    def listed(indices: list[int]) -> str:
        shown = ", ".join(f"{names[i]} ({sizes[i][0]}x{sizes[i][1]})" for i in indices[:5])
        return shown + (f" and {len(indices) - 5} more" if len(indices) > 5 else "")

    out = []
    small = [i for i, (h, w) in enumerate(sizes) if min(int(h), int(w)) < min_px]
    if small:
        out.append(
            f"{len(small)} image(s) under {min_px} px on a side, too small to segment "
            f"(the smallest patch a plan makes): {listed(small)}"
        )
    if scale is not None and scale < 1 / 3:
        out.append(
            f"the planned scale {scale:g} shrinks every image below a third of its size (its "
            f"objects are large): {listed(list(range(len(names))))}; give `scale` to keep "
            "more detail"
        )
    return out
