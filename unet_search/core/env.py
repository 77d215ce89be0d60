"""Where a run keeps its files (``UNET_SEARCH_HOME``, the storage of a cluster search), whether
we run inside a Ray job, and the code version recorded with every run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from unet_search.core.errors import UserError

__all__ = [
    "HOME_ENV",
    "STORAGE_ENV",
    "WORK_DIR_NAME",
    "RAY_JOB_ENV",
    "in_ray_job",
    "storage_setting",
    "work_dir",
    "code_version",
    "CODE_VERSION_FILE",
    "package_dir",
]


HOME_ENV = "UNET_SEARCH_HOME"


STORAGE_ENV = "UNET_SEARCH_STORAGE"


WORK_DIR_NAME = "unet-search-runs"


# Ray sets this for the entrypoint of every Ray job (`unet-search submit`, `ray job submit`).
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def in_ray_job() -> bool:
    """Whether this process is the entrypoint of a Ray job."""
    return bool(os.environ.get(RAY_JOB_ENV))


def storage_setting(storage: str | None = None) -> str | None:
    """The Ray storage the user chose: ``storage`` (``--storage``) or ``$UNET_SEARCH_STORAGE``;
    ``None`` when neither is set."""
    return storage or os.environ.get(STORAGE_ENV) or None


def work_dir(storage: str | None = None) -> Path:
    """The work directory (absolute): ``$UNET_SEARCH_HOME`` when set, else
    ``./unet-search-runs``. Inside a Ray job the current directory is a package directory that
    Ray manages and may delete while the search runs, so there it is
    ``<storage>/unet-search-runs`` when the storage (``storage`` or ``$UNET_SEARCH_STORAGE``)
    is a folder, else ``~/unet-search-runs`` on the driver's node; a relative path there is a
    UserError (it would resolve into that package directory)."""
    home = os.environ.get(HOME_ENV)
    if not in_ray_job():
        return Path(home or WORK_DIR_NAME).expanduser().resolve()
    root = storage_setting(storage)
    if home:
        where, path = HOME_ENV, Path(home).expanduser()
    elif root and "://" not in root:
        where, path = f"--storage / {STORAGE_ENV}", Path(root).expanduser()
    else:
        return Path.home() / WORK_DIR_NAME
    if not path.is_absolute():
        raise UserError(
            f"{where} {str(path)!r}: must be an absolute path inside a Ray job (a relative one "
            "would point into the job's working_dir, which Ray may delete during the search)."
        )
    return path.resolve() if home else path.resolve() / WORK_DIR_NAME


# Written into the copy of the package a submitted job ships (unet_search.cli.jobs): the
# submitter's code version, where no git checkout is there to ask.
CODE_VERSION_FILE = "CODE_VERSION"


def package_dir() -> Path:
    """The folder of the ``unet_search`` package this process imported."""
    return Path(__file__).parents[1]


def code_version() -> str:
    """Package version plus the git commit when run from a checkout (``0.1.0+g1a2b3c4``); in
    a shipped copy, the version its submitter ran (:data:`CODE_VERSION_FILE`)."""
    from unet_search import __version__

    shipped = package_dir() / CODE_VERSION_FILE
    if shipped.is_file():
        return shipped.read_text(encoding="utf-8").strip() or __version__
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{sha}" if sha else __version__
