"""The configuration reference, generated from the schema: every key of a run config's six
sections and of a space's ``search`` section (and its parts), with its type, default, rule and
what the source says of it (the comment above or beside the field). The documentation site
puts it on its configuration page when it is built (``docs/hooks.py``), so it cannot go
stale: a new field, default or rule is in the next build."""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from typing import Any

from pydantic import AfterValidator
from pydantic.fields import FieldInfo

from unet_search.core.config import SECTIONS as RUN_SECTIONS
from unet_search.core.schema import Frozen
from unet_search.space.settings import (
    ComputeSpec,
    ConstraintSpec,
    ObjectiveSpec,
    SchedulerSpec,
    SearchSettings,
)

__all__ = ["config_reference", "field_comments", "SECTIONS"]

SECTIONS: tuple[type[Frozen], ...] = (
    *RUN_SECTIONS.values(),
    SearchSettings,
    SchedulerSpec,
    ComputeSpec,
    ConstraintSpec,
    ObjectiveSpec,
)
_FIELD = re.compile(r"^    (\w+)\s*:")


def field_comments(cls: type) -> dict[str, str]:
    """What the class's source says of each field: the comment lines just above it and the
    comment at the end of its line."""
    out: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        found = _FIELD.match(line)
        if found and found[1] in cls.model_fields:  # type: ignore[attr-defined]
            beside = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            out[found[1]] = " ".join([*above, beside]).strip()
        above = []
    return out


def _type(annotation: Any) -> str:
    """A field's type as a user writes it in YAML."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(a) for a in typing.get_args(annotation))
    if origin is tuple:
        return "list"
    names = {
        "NoneType": "null",
        "str": "text",
        "float": "number",
        "int": "integer",
        "bool": "true or false",
    }
    name = getattr(annotation, "__name__", str(annotation))
    return names.get(name, "mapping" if isinstance(annotation, type) else name)


def _default(field: FieldInfo) -> str:
    """A field's default as YAML reads it back (text as it is, everything else as JSON:
    ``null``, ``true``, ``[128, 128]``)."""
    if field.is_required():
        return "(required)"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, Frozen):
        return "see below"
    text = value if isinstance(value, str) and value else json.dumps(value)
    return f"`{text}`"


def _rules(annotation: Any, field: FieldInfo) -> list[str]:
    """The rules of a field: its own and those of the types inside it (``int | None``)."""
    found = [m.func.__doc__ for m in field.metadata if isinstance(m, AfterValidator)]
    stack = [annotation]
    while stack:
        current = stack.pop()
        if typing.get_origin(current) is typing.Annotated:
            _, *meta = typing.get_args(current)
            found += [m.func.__doc__ for m in meta if isinstance(m, AfterValidator)]
        stack.extend(typing.get_args(current))
    return [r for r in dict.fromkeys(found) if r]


def _cell(text: str) -> str:
    """``text`` in a table cell: Sphinx roles as plain code, pipes escaped."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("|", "\\|").replace("\n", " ")


def config_reference() -> str:
    """The reference as Markdown: a table per section, ``section.key`` as YAML spells it."""
    parts = []
    for cls in SECTIONS:
        comments = field_comments(cls)
        doc = " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split())
        parts += [
            f"### `{cls.section}`",
            "",
            _cell(doc),
            "",
            "| key | type | default | rule | notes |",
        ]
        parts.append("| --- | --- | --- | --- | --- |")
        for name, field in cls.model_fields.items():
            rules = "; ".join(_rules(field.annotation, field))
            row = (
                f"`{name}`",
                _type(field.annotation),
                _default(field),
                rules,
                comments.get(name, ""),
            )
            parts.append("| " + " | ".join(_cell(c) for c in row) + " |")
        parts.append("")
    return "\n".join(parts)
