"""pydantic v2 for typed, frozen settings whose errors name the key, the rule and the value.

A settings class derives from :class:`Frozen` (frozen, unknown keys refused, strict types:
no ``"3"`` for an int, no ``true`` for a number, no NaN; an int widens to a float) and
states each field's rule with :func:`between`, :func:`at_least` or :func:`choice` (or
:func:`rule`). Constructing it with a broken value raises one
:class:`~unet_search.core.errors.ConfigError`, ``"`data.scale` must be in [0.05, 4], but got
9.0."``, never pydantic's own wording: ours names the section as the YAML spells it.
"""

from __future__ import annotations

import contextvars
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from unet_search.core.errors import ConfigError

__all__ = [
    "Frozen",
    "at_least",
    "between",
    "broken",
    "choice",
    "rule",
    "type_names",
    "validated_union",
]

RULE = "unet_search_rule"  # the pydantic error type of a broken rule of ours
# The section a `Frozen.validated` call names (pydantic calls our __init__ itself).
_WHERE: contextvars.ContextVar[str | None] = contextvars.ContextVar("where", default=None)


def broken(key: str, text: str, value: Any) -> PydanticCustomError:
    """A broken rule that spans fields (raise it from a model validator): ``key`` is the
    dotted key the message names, ``value`` the value it shows."""
    return PydanticCustomError(RULE, "{rule}", {"rule": text, "key": key, "value": value})


def rule(text: str, ok: Callable[[Any], bool]) -> AfterValidator:
    """A field rule: ``ok(value)`` must hold, else the message says ``text``."""

    def check(value: Any) -> Any:
        if not ok(value):
            raise PydanticCustomError(RULE, "{rule}", {"rule": text})
        return value

    check.__doc__ = text  # the rule as the configuration reference states it
    return AfterValidator(check)


def _number(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def between(
    low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> AfterValidator:
    """``low <= value <= high`` (``low_open``/``high_open``: strict at that end)."""
    text = (
        f"must be in {'(' if low_open else '['}{_number(low)}, {_number(high)}"
        f"{')' if high_open else ']'}"
    )
    return rule(
        text,
        lambda v: (low < v if low_open else low <= v) and (v < high if high_open else v <= high),
    )


def at_least(low: float) -> AfterValidator:
    return rule(f"must be >= {_number(low)}", lambda v: v >= low)


def choice(options: Iterable[Any]) -> AfterValidator:
    allowed = list(options)
    return rule(f"must be one of {allowed}", lambda v: v in allowed)


def type_names(annotation: Any) -> str:
    """``int``, ``float or null``, ...: what a field of ``annotation`` takes."""
    kinds = typing.get_args(annotation) or (annotation,)
    names = ("null" if k is type(None) else getattr(k, "__name__", str(k)) for k in kinds)
    return " or ".join(names)


class Frozen(BaseModel):
    """Frozen settings whose construction errors are :class:`ConfigError` naming
    ``<section>.<field>`` (``section`` is the class's name in the YAML)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)
    section: ClassVar[str] = ""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as err:
            raise self.config_error(err, _WHERE.get()) from None

    @classmethod
    def validated(cls, values: Mapping[str, Any], where: str) -> Self:
        """``values`` validated, errors naming their keys under ``where`` (a section whose
        name is known only at run time, e.g. ``params.encoder[1]``)."""
        token = _WHERE.set(where)
        try:
            return cls(**values)
        finally:
            _WHERE.reset(token)

    @classmethod
    def config_error(cls, err: ValidationError, where: str | None = None) -> ConfigError:
        """The first error of ``err``, in our words: ```key` rule, but got value.``"""
        first = err.errors(include_url=False)[0]
        ctx, field = first.get("ctx") or {}, str(first["loc"][0]) if first["loc"] else ""
        if isinstance(ctx.get("error"), ConfigError):  # a nested model's own message
            return ctx["error"]
        prefix = cls.section if where is None else where
        key = ctx.get("key") or ""
        if not key or key.startswith("."):  # relative to the section: ".low", or the field
            key = ".".join(part for part in (prefix, key.lstrip(".") or field) if part)
        value = ctx.get("value", first["input"])
        if first["type"] == "missing":
            return ConfigError(f"`{key}` is required.")
        if first["type"] == RULE:
            text = str(ctx["rule"])
        elif first["type"] == "extra_forbidden":
            text = f"is not a valid key here; valid keys are {sorted(cls.model_fields)}"
        else:  # a type error: what the field takes
            text = f"must be {type_names(cls.model_fields[field].annotation)}"
        if isinstance(value, tuple):
            value = list(value)
        return ConfigError(f"`{key}` {text}, but got {value!r}.")

    def with_values(self, **changes: Any) -> Self:
        """A copy with ``changes`` (validated, unlike pydantic's ``model_copy``). Fields that
        were never set stay unset, so that a default that depends on other fields (a model's
        ``upsampling``) follows the changes."""
        kept = {name: getattr(self, name) for name in self.model_fields_set}
        return type(self)(**{**kept, **changes})


def validated_union(
    adapter: TypeAdapter[Any], values: Any, where: str, tags: Iterable[str]
) -> Any:
    """``values`` validated as a discriminated union of :class:`Frozen` models (the one its
    tag names; ``tags``: every tag), errors naming their keys under ``where`` as
    :meth:`Frozen.validated`'s do; a missing or unknown tag: ```where.<tag>` must be one of
    [...]``."""
    token = _WHERE.set(where)
    try:
        return adapter.validate_python(values)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        ctx = first.get("ctx") or {}
        if isinstance(ctx.get("error"), ConfigError):  # a member's own message
            raise ctx["error"] from None
        if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
            tag = str(ctx["discriminator"]).strip("'")
            got = values.get(tag) if isinstance(values, Mapping) else values
            raise ConfigError(
                f"`{where}.{tag}` must be one of {list(tags)}, but got {got!r}."
            ) from None
        raise ConfigError(f"`{where}` {first['msg']}.") from None
    finally:
        _WHERE.reset(token)
