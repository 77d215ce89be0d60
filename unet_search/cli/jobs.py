"""Submit a search to a Ray cluster as a Ray job (Ray Jobs SDK) and follow it.

The job ships the whole ``unet_search`` package (``py_modules``: a copy with the submitter's
code version written in, so the cluster runs the submitter's code, whatever it has
installed) and the space file (``working_dir``); its entrypoint is ``python -m
unet_search.cli search ...``.
MLflow and storage settings travel as environment variables.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray.job_submission import JobStatus, JobSubmissionClient

from unet_search import RAY_ENV
from unet_search.core.env import (
    CODE_VERSION_FILE,
    HOME_ENV,
    STORAGE_ENV,
    code_version,
    package_dir,
)
from unet_search.core.errors import UserError

__all__ = ["client", "follow", "ship_package", "submit_search"]

PACKAGE_DIR = package_dir()  # the whole package, not this module's folder
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", HOME_ENV, STORAGE_ENV)
DEFAULT_DASHBOARD = "http://127.0.0.1:8265"


def client(address: str | None) -> JobSubmissionClient:
    """A Jobs client for ``address`` / ``$UNET_SEARCH_DASHBOARD`` (default 127.0.0.1:8265)."""
    url = address or os.environ.get("UNET_SEARCH_DASHBOARD") or DEFAULT_DASHBOARD
    try:
        return JobSubmissionClient(url)
    except Exception as err:  # connection refused, auth, bad URL: one clear line
        raise UserError(f"cannot reach the Ray Jobs API at {url}: {err}") from None


def submit_search(
    address: str | None,
    space: Path,
    data: str,
    *,
    name: str | None = None,
    model_name: str | None = None,
    storage: str | None = None,
    overrides: Sequence[str] = (),
) -> str:
    """Submit ``unet-search search`` as a Ray job; returns the job id."""
    if not space.is_file():
        raise UserError(f"{space}: search space file does not exist.")
    jobs = client(address)
    args = ["python", "-m", "unet_search.cli", "search", "--space", space.name, "--data", data]
    for flag, value in (
        ("--name", name),
        ("--model-name", model_name),
        ("--storage", storage and _absolute(storage)),
    ):
        if value:
            args += [flag, value]
    for override in overrides:
        args += ["--set", override]
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    env = {**RAY_ENV, **env, **{k: _absolute(env[k]) for k in (HOME_ENV, STORAGE_ENV) if k in env}}
    with tempfile.TemporaryDirectory() as tmp:
        work, package = Path(tmp) / "job", Path(tmp) / "modules" / PACKAGE_DIR.name
        work.mkdir()
        shutil.copy(space, work / space.name)
        ship_package(package)
        return str(
            _call(
                jobs.submit_job,
                entrypoint=shlex.join(args),
                submission_id=None,
                runtime_env={
                    "working_dir": str(work),
                    "py_modules": [str(package)],
                    "env_vars": env,
                },
                metadata={"unet_search.space": space.name, "unet_search.name": name or ""},
            )
        )


def ship_package(target: Path) -> None:
    """A copy of the ``unet_search`` package at ``target`` (a folder named ``unet_search``)
    that knows the code version it was copied from (see
    :func:`unet_search.core.env.code_version`); compiled files stay behind."""
    version = code_version()
    shutil.copytree(PACKAGE_DIR, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (target / CODE_VERSION_FILE).write_text(version + "\n", encoding="utf-8")


def _absolute(path: str) -> str:
    """A folder named relative to where ``submit`` runs, made absolute: in the job it would
    point into the job's working_dir (a package directory Ray manages). URIs stay."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


def follow(address: str | None, job_id: str) -> JobStatus:
    """Print the job's logs until it ends; returns its final status."""
    jobs = client(address)

    async def tail() -> None:
        async for lines in jobs.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(tail())
    return jobs.get_job_status(job_id)


def _call(fn: Any, **kwargs: Any) -> Any:
    """A Jobs API call; its errors (HTTP 500s, unknown ids) become one clear UserError."""
    try:
        return fn(**kwargs)
    except RuntimeError as err:
        raise UserError(f"Ray Jobs API: {err}") from None
