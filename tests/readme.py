"""The READMEs' command blocks, read as a user reads them, and a shell that runs them.

The tests take every command they run from README.md and cluster/README.md (never a copy
of it), so a README edit that breaks a command breaks a test. A command is run by bash in a
temporary folder laid out like the checkout (the README's relative paths), with only the
environment the README sets up (its ``source`` lines), shrunk by flags appended to it: the
``--set`` overrides the commands take, or a repeated option (argparse and click keep the
last value).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
CLUSTER_README = ROOT / "cluster" / "README.md"
# What the test process has that a user's fresh shell has not: our own settings, Ray's (the
# test session's Ray exports RAY_ADDRESS and friends) and MLflow's.
_NOT_THE_USERS = ("UNET_SEARCH_", "MLFLOW_", "RAY_", "VIRTUAL_ENV", "PYTHON")
_KEPT = ("RAY_USAGE_STATS_ENABLED",)  # `make` exports it for everything it starts


@dataclass(frozen=True)
class Command:
    """One logical command of a README: continuation lines joined, comments dropped."""

    text: str
    where: str  # README.md:42

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text)


def _uncomment(line: str) -> str:
    """``line`` without its shell comment (a ``#`` that starts a word, outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def blocks(readme: Path) -> list[list[Command]]:
    """The commands of each ```` ```bash ```` block of the file, in order."""
    out: list[list[Command]] = []
    inside, pending, start = False, "", 0
    for number, line in enumerate(readme.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            inside = line.strip() == "```bash"
            if inside:
                out.append([])
            continue
        if not inside:
            continue
        text = _uncomment(line)
        if not pending:
            start = number
        if text.endswith("\\"):
            pending += text[:-1].strip() + " "
            continue
        pending += text.strip()
        if pending:
            out[-1].append(Command(pending, f"{readme.relative_to(ROOT)}:{start}"))
        pending = ""
    return out


def block(readme: Path, prefix: str) -> list[Command]:
    """The one ```` ```bash ```` block of ``readme`` with a command that starts with
    ``prefix``."""
    found = [b for b in blocks(readme) if any(c.text.startswith(prefix) for c in b)]
    assert len(found) == 1, f"{readme.name}: {len(found)} blocks have a {prefix!r} command"
    return found[0]


def find(readme: Path, prefix: str) -> Command:
    """The one command of ``readme``'s blocks that starts with ``prefix``."""
    found = [c for b in blocks(readme) for c in b if c.text.startswith(prefix)]
    assert len(found) == 1, f"{readme.name}: {len(found)} commands start with {prefix!r}"
    return found[0]


def python_block(readme: Path, marker: str) -> str:
    """The ```` ```python ```` block of ``readme`` that contains ``marker``."""
    blocks = readme.read_text(encoding="utf-8").split("```python\n")[1:]
    found = [b.split("```", 1)[0] for b in blocks if marker in b]
    assert len(found) == 1, f"{readme.name}: {len(found)} python blocks contain {marker!r}"
    return found[0]


def users_env() -> dict[str, str]:
    """The environment of a user's fresh shell: this process's, less our, Ray's and MLflow's
    settings (what the README's ``source`` lines must set up)."""
    return {k: v for k, v in os.environ.items() if k in _KEPT or not k.startswith(_NOT_THE_USERS)}


def checkout_like(folder: Path) -> Path:
    """``folder`` laid out like the checkout for the README's relative paths: the search
    spaces copied, ``cluster/`` linked (the virtualenv is found by :class:`Shell`)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "search_spaces", folder / "search_spaces")
    (folder / "cluster").symlink_to(ROOT / "cluster", target_is_directory=True)
    return folder


class Shell:
    """Runs README commands with bash in ``cwd``, as a user's shell would: the ``source`` and
    ``export`` lines met earlier are run again before every later command (relative paths
    of sourced files, such as ``.venv/bin/activate``, are the checkout's). ``replace`` maps
    the README's placeholders (``/tmp/us-cluster``, ``JOB_ID``) to this test's values."""

    def __init__(self, cwd: Path, replace: Mapping[str, str] | None = None) -> None:
        self.cwd, self.replace = cwd, dict(replace or {})
        self.kept: list[str] = []  # source and export lines, in order
        self.env = users_env()

    def _script(self, command: Command, extra: Iterable[str], exec_: bool = False) -> str:
        text = command.text
        for old, new in self.replace.items():
            text = text.replace(old, new)
        extra = list(extra)
        text += " " + shlex.join(extra) if extra else ""
        return "\n".join(["set -eo pipefail", *self.kept, ("exec " if exec_ else "") + text])

    def snapshot(self) -> Shell:
        """This shell as it is now: a command started in the background runs with the lines
        kept before it, whatever a later line adds."""
        copy = Shell(self.cwd, self.replace)
        copy.kept, copy.env = list(self.kept), dict(self.env)
        return copy

    def keep(self, command: Command) -> None:
        """A ``source`` or ``export`` line: part of the environment of every later command."""
        argv = command.argv
        assert argv[0] in ("source", ".", "export"), command
        if argv[0] == "export":
            self.kept.append(command.text)
            return
        path = argv[1]
        for old, new in self.replace.items():
            path = path.replace(old, new)
        if not Path(path).is_absolute() and not path.startswith("$"):
            path = str(ROOT / path)
        assert Path(path).exists(), f"{command.where}: {path} is missing"
        self.kept.append(f"source {shlex.quote(path)}")

    def run(
        self, command: Command, *extra: str, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` (plus ``extra`` arguments) to its end."""
        return subprocess.run(
            ["bash", "-c", self._script(command, extra)],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, command: Command, *extra: str, log: Path) -> Background:
        """Start a command that runs until stopped (a server), output to ``log``."""
        with log.open("w") as out:
            proc = subprocess.Popen(
                ["bash", "-c", self._script(command, extra, exec_=True)],
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return Background(proc, log)

    def value(self, expression: str) -> str:
        """What ``expression`` (``$MLFLOW_TRACKING_URI``) is in the README's environment."""
        proc = subprocess.run(
            ["bash", "-c", "\n".join([*self.kept, f'printf %s "{expression}"'])],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return proc.stdout


@dataclass
class Background:
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


State = TypeVar("State")


def resolved(result: Any) -> Any:
    """A command's result, waiting for it if it was started at once (a future)."""
    return result.result() if isinstance(result, Future) else result


def walk(
    commands: Iterable[Command],
    handlers: Mapping[str, Callable[[State, Command], Any]],
    state: State,
    ran: dict[str, list[Any]],
) -> None:
    """Hand every command, in order, to the handler of the first prefix it starts with,
    adding its result to ``ran[prefix]`` at once (a later handler may read an earlier
    result). A command no handler knows fails: a command added to a README is run by a
    test, or the suite says which one is not."""
    for command in commands:
        prefix = next((p for p in handlers if command.text.startswith(p)), None)
        assert prefix is not None, f"{command.where}: no test runs `{command.text}`"
        ran.setdefault(prefix, []).append(handlers[prefix](state, command))
