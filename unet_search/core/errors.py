"""The errors a user can fix. The CLI prints their message (which names the file or key, the
rule and the value received) and exits with 1, no traceback."""

from __future__ import annotations

import re

__all__ = ["UserError", "ConfigError", "DataError", "without_reprs"]


def without_reprs(message: object) -> str:
    """``message`` as text without Python object reprs (``<_io.BytesIO object at 0x7f...>``),
    which say nothing to a user."""
    return re.sub(r"<[\w.]+ object at 0x[0-9a-fA-F]+>", "the data", str(message))


class UserError(Exception):
    """An error caused by the user's input; the CLI prints its message and exits with 1."""


class ConfigError(UserError, ValueError):
    """A configuration value or file breaks a rule; the message names the key and the rule."""


class DataError(UserError):
    """The dataset breaks a rule; the message names the file(s) and the rule."""
