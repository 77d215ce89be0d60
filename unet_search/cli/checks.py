"""What the commands check and say before anything starts: the tracking store answers, what
of a space yielded to the user's ``--set``, the images whose sizes will spoil a run."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["require_tracking", "say_notes", "warn_sizes"]


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
    from unet_search.train.plan import size_warnings

    for line in size_warnings(arrays.names, arrays.sizes, scale):
        print(f"warning: {line}", file=sys.stderr, flush=True)
