"""Files written where the user says: whole or not at all, and never over one they did not
ask to replace."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from unet_search.core.errors import UserError

__all__ = ["refuse_existing", "written_whole"]


def refuse_existing(path: Path, flag: str, how: str = "choose another") -> None:
    """A UserError when ``path`` exists: nothing the user did not ask to replace is
    replaced. ``flag`` names the option that chose it, ``how`` the way out."""
    if path.exists() or path.is_symlink():
        raise UserError(f"{flag} {path}: exists; {how} (nothing was written).")


@contextlib.contextmanager
def written_whole(path: Path) -> Iterator[Path]:
    """A hidden temporary path beside ``path`` to write a file or a folder to; renamed onto
    ``path`` (a file there, or an empty folder, replaced) when the block ends, removed when
    it raises: an interrupted write leaves nothing half-written that looks finished."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        yield partial
        if partial.is_dir() and path.is_dir():
            path.rmdir()  # empty, or rmdir refuses: nothing the user has is removed
        partial.replace(path)
    finally:
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
