"""``RunConfig``: the whole configuration of one training run, built from YAML, flat or nested
mappings, presets and ``--set key=value`` overrides; each value is checked by its section
(:mod:`unet_search.core.sections`) and every error names the source, key, rule and value."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import Field, model_validator

from unet_search.core.errors import ConfigError
from unet_search.core.metrics import INSTANCE_METRICS, dsb_rule
from unet_search.core.schema import Frozen, broken
from unet_search.core.sections import (
    AUTO,
    MAX_BOTTLENECK_TOKENS,
    AugmentConfig,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    auto_rule,
    bottleneck_side,
)

__all__ = [
    "SECTIONS",
    "typed_overrides",
    "CLASSIC",
    "PRESETS",
    "RunConfig",
    "LEAF_SECTION",
    "flat_leaves",
    "load_yaml",
    "check_override",
    "override_error",
    "parse_override",
    "similar",
    "read_yaml",
    "run_leaves",
    "auto_leaves",
    "blame_override",
    "provisional_config",
    "load_run_config",
    "build_run_config",
]


SECTIONS: dict[str, type[Frozen]] = {
    "data": DataConfig,
    "augment": AugmentConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
}


# The seeds' UNets have none of the variant options: a preset pins them (a baseline trial in
# a space that fixes `block: residual` is still the classic UNet).
CLASSIC = {"block": "plain", "pooling": "max", "bottleneck": "plain", "attention": "none"}


# Presets are flat leaf values applied before the file and the overrides.
PRESETS: dict[str, dict[str, Any]] = {
    # REFERENCE.md 1a: the Keras nuclei UNet on DSB2018 (1,941,105 parameters).
    "seed_keras": {
        "arch": "unet",
        "encoder": "none",
        **CLASSIC,
        "depth": 4,
        "base_filters": 16,
        "dropout": 0.3,
        "dropout_schedule": "ramp",
        "upsampling": "transpose",
        "batchnorm": False,
        "padding": "same",
        "in_channels": 3,
        "num_classes": 1,
        "input_mode": "resize",
        "image_size": 128,
        "normalization": "default",  # x / 255
        "target": "semantic",  # it learned the mask
        "loss": "bce",
        "optimizer": "adam",
        "lr": 1e-3,
        "weight_decay": 0.0,
        "lr_schedule": "none",
        "grad_clip": 0.0,
        "batch_size": 16,
        "epochs": 25,
        "early_stop_patience": 2,
        "early_stop_metric": "val_loss",
        "val_fraction": 0.1,
        "aug_strength": 0.0,
    },
    # REFERENCE.md 1b: a smaller 3-level variant, 8 -> 16 -> 32 filters, 2-channel output.
    "seed_small": {
        "arch": "unet",
        "encoder": "none",
        **CLASSIC,
        "depth": 2,
        "base_filters": 8,
        "dropout": 0.0,
        "upsampling": "transpose",
        "batchnorm": False,
        "padding": "same",
        "num_classes": 2,
        "loss": "mix",
    },
    # REFERENCE.md 1c: Ronneberger et al. 2015 (31,030,658 parameters, 1 channel, 2 classes).
    "original_unet": {
        "arch": "unet",
        "encoder": "none",
        **CLASSIC,
        "depth": 4,
        "base_filters": 64,
        "dropout": 0.0,
        "upsampling": "transpose",
        "batchnorm": False,
        "padding": "valid",
        "in_channels": 1,
        "num_classes": 2,
    },
}


class RunConfig(Frozen):
    """The whole resolved configuration of one training run."""

    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        data, model, train = self.data, self.model, self.train
        if 0 < train.schedule_epochs < train.epochs:
            raise broken(
                "train.schedule_epochs",
                f"must be 0 (the run's epochs) or at least `epochs` ({train.epochs}): a schedule "
                "cannot end before its run",
                train.schedule_epochs,
            )
        why = dsb_rule(train.dsb_every, data.num_classes, train.early_stop_metric)
        if train.early_stop_metric in INSTANCE_METRICS and why:
            raise broken("train.early_stop_metric", why, train.early_stop_metric)
        if model.bottleneck == "transformer":
            side = bottleneck_side(data.input_size, model.depth)
            if side[0] * side[1] > MAX_BOTTLENECK_TOKENS:
                raise broken(
                    "model.bottleneck",
                    f"'transformer' holds at most {MAX_BOTTLENECK_TOKENS} tokens, but the "
                    f"training input over 2**depth ({model.depth}) leaves a {side[0]} x "
                    f"{side[1]} bottleneck: deepen the model or use a smaller patch",
                    model.bottleneck,
                )
        if self.loss.border_weight > 0 and data.num_classes > 2:
            raise broken(
                "loss.border_weight",
                "needs instances, a binary task's (num_classes 1 or 2), but num_classes is "
                f"{data.num_classes}",
                self.loss.border_weight,
            )
        multiple = 2**model.depth
        if (
            data.input_mode == "patch"
            and model.padding == "same"
            and any(side % multiple for side in data.patch_size)
        ):
            raise broken(
                "data.patch_size",
                f"must be a multiple of 2**depth = {multiple} (model.depth {model.depth})",
                list(data.patch_size),
            )
        return self

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict (YAML/JSON-ready: sizes are lists)."""
        return {
            name: {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
            for name, section in self.model_dump().items()
        }

    def flat(self) -> dict[str, Any]:
        """Leaf name -> value, e.g. ``{"encoder": "resnet34", "epochs": 20, ...}``."""
        return {k: v for section in self.to_dict().values() for k, v in section.items()}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, source: str = "config") -> RunConfig:
        """Build from nested sections and/or flat leaf keys (plus an optional ``preset``)."""
        return _build(_normalize(raw, source), source)

    def replace(self, **leaves: Any) -> RunConfig:
        """A copy with some leaf values changed (validated; the sections they leave alone
        are shared, not validated again: a search space checks thousands of these)."""
        changed: dict[str, dict[str, Any]] = {}
        for leaf, value in _normalize(leaves, "replace").items():
            changed.setdefault(LEAF_SECTION[leaf], {})[leaf] = value
        try:
            sections = {
                name: getattr(self, name).with_values(**changed[name])
                if name in changed
                else getattr(self, name)
                for name in SECTIONS
            }
            return RunConfig(**sections)
        except ConfigError as err:
            raise ConfigError(f"replace: {err}") from None


LEAF_SECTION: dict[str, str] = {
    leaf: section for section, klass in SECTIONS.items() for leaf in klass.model_fields
}


TOP_KEYS = frozenset([*SECTIONS, *LEAF_SECTION, "preset"])  # what a flat mapping may name


def flat_leaves(raw: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Nested or flat mapping -> flat ``{leaf: value}`` (presets expanded, keys checked)."""
    return _normalize(raw, source)


def _normalize(raw: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Nested or flat mapping -> flat ``{leaf: value}`` with presets expanded first."""
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{source}: the top level must be a mapping of keys to values, "
            f"but got {type(raw).__name__}."
        )
    flat: dict[str, Any] = {}
    preset = raw.get("preset")
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(
                f"`{source}: preset` must be one of {list(PRESETS)}, but got {preset!r}."
            )
        flat.update(PRESETS[preset])
    for key, value in raw.items():
        if key == "preset":
            continue
        # `loss` is both a section and a leaf: a mapping means the section.
        if key in SECTIONS and (isinstance(value, Mapping) or key not in LEAF_SECTION):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: `{key}` must be a mapping, but got {value!r}.")
            for leaf, leaf_value in value.items():
                _check_leaf(leaf, source, section=key)
                flat[leaf] = leaf_value
        else:
            _check_leaf(key, source)
            flat[key] = value
    return flat


def _check_leaf(leaf: str, source: str, section: str | None = None) -> None:
    if (LEAF_SECTION.get(leaf) == section) if section else (leaf in TOP_KEYS):
        return
    valid = sorted(SECTIONS[section].model_fields) if section else sorted(TOP_KEYS)
    where = f"`{section}.{leaf}`" if section else f"`{leaf}`"
    raise ConfigError(f"{source}: unknown key {where}; {similar(leaf, valid)}.")


def similar(word: str, valid: Iterable[str]) -> str:
    """``did you mean `a`, `b` or `c`?`` (the three closest of ``valid``, or those it begins),
    else the valid names when they are few, else where they are listed."""
    names = sorted(valid)
    close = difflib.get_close_matches(word, names, n=3, cutoff=0.6)
    close += [n for n in names if word and n.startswith(word) and n not in close]
    if close:
        quoted = [f"`{name}`" for name in close[:3]]
        return (
            "did you mean "
            + (quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}")
            + "?"
        )
    if len(names) <= 12:
        return f"valid keys are {names}"
    return "`unet-search models` and the README's configuration keys list the valid ones"


def blame_override(err: ConfigError, typed: Mapping[str, str], source: str) -> ConfigError:
    """``err`` naming the ``--set`` that caused it in place of ``source``: the first key in
    backquotes that the user set (``typed``: key or leaf -> the ``--set`` text as typed);
    else ``err`` as it is."""
    message = str(err)
    for key in re.findall(r"`([\w.]+)`", message):
        leaf = key.rsplit(".", 1)[-1]
        text = typed.get(key) or (typed.get(leaf) if not key.startswith("search.") else None)
        if text is not None:
            for prefix in (f"{source}: ", "fixed: "):
                message = message.removeprefix(prefix)
            return override_error(text, message)
    return err


def _build(flat: Mapping[str, Any], source: str) -> RunConfig:
    per_section: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for leaf, value in flat.items():
        per_section[LEAF_SECTION[leaf]][leaf] = value
    try:
        sections: dict[str, Any] = {n: SECTIONS[n](**vals) for n, vals in per_section.items()}
        return RunConfig(**sections)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def override_error(text: str, message: str) -> ConfigError:
    """An error caused by ``--set text``: it names what the user typed, not a file."""
    return ConfigError(f"--set {text}: {message}")


def parse_override(text: str) -> tuple[str, Any]:
    """``"epochs=2"`` / ``"train.epochs=2"`` -> ``("epochs", 2)``; the value is parsed as YAML
    (1.2 numbers: ``3e-3`` is a float). Errors name the ``--set`` as typed."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set must look like key=value, but got {text!r}.")
    if "." in key:
        section, _, leaf = key.partition(".")
        if section not in SECTIONS:
            raise override_error(
                text, f"unknown section `{section}`; {similar(section, SECTIONS)}"
            )
        if LEAF_SECTION.get(leaf) != section:
            valid = SECTIONS[section].model_fields
            raise override_error(text, f"unknown key `{key}`; {similar(leaf, valid)}")
        key = leaf
    elif key not in TOP_KEYS:
        raise override_error(text, f"unknown key `{key}`; {similar(key, TOP_KEYS)}")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def check_override(text: str) -> tuple[str, Any]:
    """:func:`parse_override`, and the value checked against its own key's rule (type,
    range, choices), so that a bad value names the ``--set`` the user typed; a rule that
    needs other keys too is checked with them later."""
    key, value = parse_override(text)
    if key == "preset" or value == AUTO:
        return key, value
    first: str | None = None
    for context in _LENIENT:  # a value some other setting allows is checked with them later
        try:
            _build({**context, key: value}, "x")
            return key, value
        except ConfigError as err:
            first = first or str(err).removeprefix("x: ")
    if first is not None and first.startswith(f"`{LEAF_SECTION[key]}.{key}`"):
        raise override_error(text, first)
    return key, value


# Settings under which a value is checked on its own: unpadded (any patch fits any depth),
# and resized inputs (`image_size` belongs to them).
_LENIENT: tuple[dict[str, Any], ...] = (
    {"padding": "valid"},
    {"padding": "valid", "input_mode": "resize"},
)


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: ``1e-3``, ``3E5`` and ``.5`` are numbers
    (YAML 1.1, PyYAML's, reads an exponent without a dot as a string)."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"
        r"|^[-+]?\.[0-9][0-9_]*$"
    ),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """YAML text -> Python values, numbers read as YAML 1.2 reads them (see
    :class:`_Yaml12Loader`): every YAML the product reads goes through here."""
    return yaml.load(text, Loader=_Yaml12Loader)  # a SafeLoader: no Python objects


def read_yaml(path: Path) -> Any:
    """Read a YAML file; a missing file or a syntax error is a ConfigError with the line."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file does not exist.")
    try:
        return load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: must be UTF-8 text.") from None


def typed_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """Each leaf ``--set`` gives -> the text the user typed (for :func:`blame_override`)."""
    return {
        text.partition("=")[0].strip().rsplit(".", 1)[-1]: text
        for text in overrides
        if not text.startswith("search.")
    }


def run_leaves(
    path: Path | None = None, overrides: Iterable[str] = (), **leaves: Any
) -> tuple[dict[str, Any], str]:
    """Defaults <- preset <- YAML file <- ``--set`` overrides <- keyword leaves, as flat
    leaves (``auto`` values kept), and the source that names them in errors."""
    flat: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(path)
        flat.update(_normalize(raw if raw is not None else {}, str(path)))
    for text in overrides:
        key, value = check_override(text)
        if key == "preset":
            flat.update(_normalize({"preset": value}, f"--set {text}"))
        else:
            flat[key] = value
    flat.update({k: v for k, v in leaves.items() if v is not None})
    return flat, str(path) if path else "--set"


def auto_leaves(flat: Mapping[str, Any], source: str) -> tuple[str, ...]:
    """The leaves set to ``auto``: only :data:`PLANNED_LEAVES` may be."""
    auto = tuple(leaf for leaf, value in flat.items() if value == AUTO)
    for leaf in auto:
        if why := auto_rule(leaf):
            raise ConfigError(f"{source}: `{LEAF_SECTION[leaf]}.{leaf}` {why}.")
    return auto


def provisional_config(flat: Mapping[str, Any], source: str) -> RunConfig:
    """The run config with its ``auto`` leaves at their defaults: every rule the plan cannot
    change is checked before the data are read (an auto patch or depth drops the other too:
    the plan makes them fit each other)."""
    auto = auto_leaves(flat, source)
    drop = set(auto) | ({"patch_size", "depth"} if {"patch_size", "depth"} & set(auto) else set())
    for leaf in drop - set(auto):  # a given patch or depth: checked on its own
        _build({leaf: flat[leaf], "padding": "valid"}, source)
    return _build({k: v for k, v in flat.items() if k not in drop}, source)


def load_run_config(
    path: Path | None = None, overrides: Iterable[str] = (), **leaves: Any
) -> RunConfig:
    """Defaults <- preset <- YAML file <- ``--set`` overrides <- keyword leaves (no ``auto``:
    see :func:`unet_search.plan.planner.plan_run`)."""
    flat, source = run_leaves(path, overrides, **leaves)
    auto = auto_leaves(flat, source)
    if auto:
        raise ConfigError(
            f"{source}: `{auto[0]}: auto` is planned from a dataset; give the data "
            "(`unet-search train DATA`) or a value."
        )
    return _build(flat, source)


def build_run_config(flat: Mapping[str, Any], source: str) -> RunConfig:
    """A run config from flat leaves (validated)."""
    return _build(flat, source)
