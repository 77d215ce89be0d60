"""Typed, frozen run configuration with validation, YAML loading and ``key=value`` overrides.

A run configuration has six sections (data, augment, model, loss, optim, train). Every leaf
name is unique across sections, so a flat ``--set epochs=2`` or an MLflow param ``encoder``
maps one to one onto a field; ``--set train.epochs=2`` works too.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import subprocess
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "AUTO",
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "HOME_ENV",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "PLANNED_LEAVES",
    "IGNORE",
    "INPUT_MODES",
    "METRICS",
    "Metric",
    "PRESETS",
    "RunConfig",
    "SECTIONS",
    "STORAGE_ENV",
    "TrainConfig",
    "UserError",
    "VAL_METRICS",
    "code_version",
    "flat_leaves",
    "in_ray_job",
    "auto_leaves",
    "build_run_config",
    "load_run_config",
    "provisional_config",
    "run_leaves",
    "parse_override",
    "read_yaml",
    "storage_setting",
    "work_dir",
]


class UserError(Exception):
    """An error caused by the user's input; the CLI prints its message and exits with 1."""


class ConfigError(UserError, ValueError):
    """A configuration value or file breaks a rule; the message names the key and the rule."""


def _check(ok: bool, key: str, rule: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"`{key}` {rule}, but got {value!r}.")


def _one_of(key: str, value: object, options: Iterable[object]) -> None:
    options = list(options)
    _check(value in options, key, f"must be one of {options}", value)


@dataclass(frozen=True)
class Metric:
    """A validation metric every run reports (the one table of them: engine, spaces,
    tracking, registry and report read it)."""

    maximize: bool  # larger is better
    searchable: bool = True  # a search may rank its trials by it (`search.metric`)
    test: str | None = None  # its value on the held-out test images, named so

    @property
    def mode(self) -> str:
        return "max" if self.maximize else "min"


METRICS: dict[str, Metric] = {
    "val_dice": Metric(True, test="test_dice"),
    "val_iou": Metric(True, test="test_iou"),
    # needs the DSB score every epoch (dsb_every 1) on at most 2 classes: spaces, RunConfig
    "val_dsb_score": Metric(True, test="test_dsb_score"),
    "val_loss": Metric(False),  # no test counterpart: the gate compares validation values
    "val_soft_dice": Metric(True, searchable=False),  # ASHA's tie-break, an early-stop option
}
VAL_METRICS = tuple(METRICS)
IGNORE = 255  # mask value of pixels that are padding, not data: no loss there
INPUT_MODES = ("patch", "resize")
# default: x/255, or ImageNet statistics for pre-trained encoders (see transforms.Normalization)
NORMALIZATION_NAMES = ("default", "unit", "imagenet", "zscore", "dataset")
AUTO = "auto"  # a value `unet_search.plan` fills from the dataset's fingerprint
PLANNED_LEAVES = (
    "scale",
    "patch_size",
    "depth",
    "batch_size",
    "patches_per_epoch",
    "normalization",
)
RESIZE_DEFAULT = 128  # resize mode's square when `image_size` is not given (the Keras seed)


@dataclass(frozen=True)
class DataConfig:
    """How the dataset is read and shown to the model, and the validation split.

    ``input_mode: patch`` (the default) trains on random ``patch_size`` patches at the data's
    own pixel scale (times ``scale``) and predicts whole images with a sliding window;
    ``input_mode: resize`` squashes every image to one ``image_size`` square (the Keras seed)."""

    input_mode: str = "patch"
    patch_size: tuple[int, int] = (128, 128)  # (height, width); a number means a square
    scale: float = 1.0  # images are resampled by this factor before the model (patch mode)
    normalization: str = "default"  # default | unit | imagenet | zscore | dataset
    image_size: int | None = None  # resize mode only; None there means 128
    num_classes: int = 1  # 1: binary foreground (sigmoid); C >= 2: class indices 0..C-1
    val_fraction: float = 0.1
    # Held out from every choice of a search, scored once at its end; None: 0.1 of a
    # dataset of at least 20 images, else none (unet_search.data.test_fraction_of).
    test_fraction: float | None = None
    split_seed: int = 0

    def __post_init__(self) -> None:
        _one_of("data.input_mode", self.input_mode, INPUT_MODES)
        _check(
            all(16 <= side <= 4096 for side in self.patch_size),
            "data.patch_size",
            "must be one side or [height, width], each in [16, 4096]",
            list(self.patch_size),
        )
        _check(0.05 <= self.scale <= 4.0, "data.scale", "must be in [0.05, 4]", self.scale)
        _one_of("data.normalization", self.normalization, NORMALIZATION_NAMES)
        if self.image_size is not None:
            _check(
                self.input_mode == "resize",
                "data.image_size",
                "belongs to input_mode: resize (every image squashed to one square); in "
                "patch mode the model sees patches of `data.patch_size` at the data's own "
                "scale: set patch_size instead, or input_mode: resize",
                self.image_size,
            )
            _check(
                16 <= self.image_size <= 4096,
                "data.image_size",
                "must be in [16, 4096]",
                self.image_size,
            )
        _check(
            1 <= self.num_classes <= 255,
            "data.num_classes",
            "must be in [1, 255]",
            self.num_classes,
        )
        _check(
            0.0 < self.val_fraction < 1.0,
            "data.val_fraction",
            "must be in (0, 1)",
            self.val_fraction,
        )
        if self.test_fraction is not None:
            _check(
                0.0 <= self.test_fraction < 1.0 and self.val_fraction + self.test_fraction < 1,
                "data.test_fraction",
                f"must be in [0, 1) and leave training images beside val_fraction "
                f"{self.val_fraction}",
                self.test_fraction,
            )

    @property
    def square(self) -> int:
        """The side every image is resized to in resize mode."""
        return self.image_size or RESIZE_DEFAULT


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation; ``aug_strength`` 0 turns it off, 1 is the strongest."""

    aug_strength: float = 0.5
    elastic: bool = False

    def __post_init__(self) -> None:
        _check(
            0.0 <= self.aug_strength <= 1.0,
            "augment.aug_strength",
            "must be in [0, 1]",
            self.aug_strength,
        )


@dataclass(frozen=True)
class ModelConfig:
    """Architecture; names are checked against the registries in ``models.py``."""

    arch: str = "unet"
    encoder: str = "none"  # "none": the from-scratch UNet; else an smp encoder name
    encoder_weights: str | None = None
    depth: int = 4  # number of poolings (plain UNet) / encoder_depth (smp)
    base_filters: int = 16
    dropout: float = 0.0
    dropout_schedule: str = "constant"  # constant | ramp (the Keras seed's 1/3, 2/3, 1 ramp)
    upsampling: str = "transpose"
    batchnorm: bool = True
    padding: str = "same"
    in_channels: int = 3

    def __post_init__(self) -> None:
        _check(2 <= self.depth <= 5, "model.depth", "must be in [2, 5]", self.depth)
        _check(
            1 <= self.base_filters <= 1024,
            "model.base_filters",
            "must be in [1, 1024]",
            self.base_filters,
        )
        _check(0.0 <= self.dropout < 1.0, "model.dropout", "must be in [0, 1)", self.dropout)
        _one_of("model.dropout_schedule", self.dropout_schedule, ["constant", "ramp"])
        _one_of("model.padding", self.padding, ["same", "valid"])
        _one_of("model.in_channels", self.in_channels, [1, 3])


@dataclass(frozen=True)
class LossConfig:
    """Loss; ``mix`` is ``dice_weight * dice + (1 - dice_weight) * bce`` (CE if multi-class)."""

    loss: str = "mix"
    dice_weight: float = 0.5
    focal_gamma: float = 2.0
    tversky_alpha: float = 0.3
    tversky_beta: float = 0.7

    def __post_init__(self) -> None:
        _check(
            0.0 <= self.dice_weight <= 1.0,
            "loss.dice_weight",
            "must be in [0, 1]",
            self.dice_weight,
        )
        _check(self.focal_gamma >= 0.0, "loss.focal_gamma", "must be >= 0", self.focal_gamma)
        _check(
            self.tversky_alpha >= 0
            and self.tversky_beta >= 0
            and self.tversky_alpha + self.tversky_beta > 0,
            "loss.tversky_alpha",
            "and `tversky_beta` must be >= 0 with a positive sum",
            (self.tversky_alpha, self.tversky_beta),
        )


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule."""

    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"
    grad_clip: float = 1.0  # max gradient norm; 0 turns clipping off

    def __post_init__(self) -> None:
        _check(0.0 < self.lr <= 10.0, "optim.lr", "must be in (0, 10]", self.lr)
        _check(self.weight_decay >= 0.0, "optim.weight_decay", "must be >= 0", self.weight_decay)
        _check(self.grad_clip >= 0.0, "optim.grad_clip", "must be >= 0", self.grad_clip)


@dataclass(frozen=True)
class TrainConfig:
    """Epoch loop, early stopping, evaluation and resources of one training run."""

    epochs: int = 20
    batch_size: int = 8
    seed: int = 0
    threshold: float = 0.5
    early_stop_patience: int = 0  # 0 turns early stopping off
    early_stop_metric: str = "val_dice"
    dsb_every: int = 1  # compute the DSB2018 instance score every N epochs (0: never)
    num_sample_images: int = 4
    samples_every: int = 5  # log prediction overlays every N epochs (0: only the final one)
    num_workers: int = 1
    cpus_per_worker: int = 1
    gpus_per_worker: float = 0.0
    amp: str = "bf16"  # on GPU only: bf16 | fp16 | off
    channels_last: bool = True  # on GPU only
    max_failures: int = 2
    loader_workers: int = 0
    # Patch mode: patches per epoch over all ranks (an epoch is the same learning for any
    # image size), and the share of them centred on a foreground pixel (nnU-Net's 0.33).
    patches_per_epoch: int = 256
    fg_oversample: float = 0.33
    # Whole-image prediction (validation and predict): tile overlap and test-time flips.
    tile_overlap: float = 0.5
    tta: str = "none"
    val_max_images: int = 200  # validation scores at most this many images (0: all)

    def __post_init__(self) -> None:
        _check(1 <= self.epochs <= 100_000, "train.epochs", "must be in [1, 100000]", self.epochs)
        _check(
            1 <= self.batch_size <= 4096,
            "train.batch_size",
            "must be in [1, 4096]",
            self.batch_size,
        )
        _check(0.0 < self.threshold < 1.0, "train.threshold", "must be in (0, 1)", self.threshold)
        _check(
            self.early_stop_patience >= 0,
            "train.early_stop_patience",
            "must be >= 0",
            self.early_stop_patience,
        )
        _one_of("train.early_stop_metric", self.early_stop_metric, VAL_METRICS)
        _check(self.dsb_every >= 0, "train.dsb_every", "must be >= 0", self.dsb_every)
        _check(
            0 <= self.num_sample_images <= 64,
            "train.num_sample_images",
            "must be in [0, 64]",
            self.num_sample_images,
        )
        _check(self.samples_every >= 0, "train.samples_every", "must be >= 0", self.samples_every)
        _check(self.num_workers >= 1, "train.num_workers", "must be >= 1", self.num_workers)
        _check(
            self.cpus_per_worker >= 1,
            "train.cpus_per_worker",
            "must be >= 1",
            self.cpus_per_worker,
        )
        _check(
            self.gpus_per_worker >= 0,
            "train.gpus_per_worker",
            "must be >= 0",
            self.gpus_per_worker,
        )
        _one_of("train.amp", self.amp, ["bf16", "fp16", "off"])
        _check(self.max_failures >= 0, "train.max_failures", "must be >= 0", self.max_failures)
        _check(
            self.loader_workers >= 0, "train.loader_workers", "must be >= 0", self.loader_workers
        )
        _check(
            1 <= self.patches_per_epoch <= 10_000_000,
            "train.patches_per_epoch",
            "must be in [1, 10000000]",
            self.patches_per_epoch,
        )
        _check(
            0.0 <= self.fg_oversample <= 1.0,
            "train.fg_oversample",
            "must be in [0, 1]",
            self.fg_oversample,
        )
        _check(
            0.0 <= self.tile_overlap < 1.0,
            "train.tile_overlap",
            "must be in [0, 1)",
            self.tile_overlap,
        )
        _one_of("train.tta", self.tta, ["none", "flips"])
        _check(
            self.val_max_images >= 0, "train.val_max_images", "must be >= 0", self.val_max_images
        )


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "augment": AugmentConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
}

# Presets are flat leaf values applied before the file and the overrides.
PRESETS: dict[str, dict[str, Any]] = {
    # REFERENCE.md 1a: the Keras nuclei UNet on DSB2018 (1,941,105 parameters).
    "seed_keras": {
        "arch": "unet",
        "encoder": "none",
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


@dataclass(frozen=True)
class RunConfig:
    """The whole resolved configuration of one training run."""

    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        data, model, train = self.data, self.model, self.train
        if train.early_stop_metric == "val_dsb_score":
            _check(
                train.dsb_every == 1 and data.num_classes <= 2,
                "train.early_stop_metric",
                "val_dsb_score needs the DSB2018 score every epoch of a binary task "
                "(`train.dsb_every: 1`, `data.num_classes` <= 2), so the kept epoch is chosen "
                f"among them all; dsb_every is {train.dsb_every}, num_classes {data.num_classes}",
                train.early_stop_metric,
            )
        if data.input_mode == "patch" and model.padding == "same":
            multiple = 2**model.depth
            _check(
                all(side % multiple == 0 for side in data.patch_size),
                "data.patch_size",
                f"must be a multiple of 2**depth = {multiple} (model.depth {model.depth})",
                list(data.patch_size),
            )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict (YAML/JSON-ready: sizes are lists)."""
        return {
            name: {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
            for name, section in dataclasses.asdict(self).items()
        }

    def flat(self) -> dict[str, Any]:
        """Leaf name -> value, e.g. ``{"encoder": "resnet34", "epochs": 20, ...}``."""
        return {k: v for section in self.to_dict().values() for k, v in section.items()}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, source: str = "config") -> RunConfig:
        """Build from nested sections and/or flat leaf keys (plus an optional ``preset``)."""
        return _build(_normalize(raw, source), source)

    def replace(self, **leaves: Any) -> RunConfig:
        """A copy with some leaf values changed (validated)."""
        merged = self.flat()
        merged.update(_normalize(leaves, "replace"))
        return _build(merged, "replace")


LEAF_SECTION: dict[str, str] = {
    f.name: section for section, klass in SECTIONS.items() for f in dataclasses.fields(klass)
}


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
        _one_of(f"{source}: preset", preset, PRESETS)
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
    valid = (
        sorted(f.name for f in dataclasses.fields(SECTIONS[section]))
        if section
        else sorted([*SECTIONS, *LEAF_SECTION, "preset"])
    )
    if leaf not in valid:
        where = f"`{section}.{leaf}`" if section else f"`{leaf}`"
        raise ConfigError(f"{source}: unknown key {where}; valid keys are {valid}.")


def _build(flat: Mapping[str, Any], source: str) -> RunConfig:
    per_section: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for leaf, value in flat.items():
        section = LEAF_SECTION[leaf]
        per_section[section][leaf] = _coerce(SECTIONS[section], section, leaf, value, source)
    try:
        return RunConfig(**{name: SECTIONS[name](**vals) for name, vals in per_section.items()})
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


@functools.cache
def _type_hints(klass: type) -> dict[str, Any]:
    return typing.get_type_hints(klass)


def _coerce(klass: type, section: str, leaf: str, value: Any, source: str) -> Any:
    """Check a raw value against the field's annotated type; ints widen to floats."""
    hint = _type_hints(klass)[leaf]
    key = f"{source}: `{section}.{leaf}`"
    if typing.get_origin(hint) is tuple:  # a size: one number (square) or [height, width]
        sides = list(value) if isinstance(value, list | tuple) else [value, value]
        if len(sides) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in sides):
            return (sides[0], sides[1])
        raise ConfigError(f"{key} must be one int or [height, width] ints, but got {value!r}.")
    allowed = typing.get_args(hint) or (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                break
            return float(value)
        if kind is str and isinstance(value, str):
            return value
    names = " or ".join("null" if k is type(None) else k.__name__ for k in allowed)
    raise ConfigError(f"{key} must be {names}, but got {value!r}.")


def parse_override(text: str) -> tuple[str, Any]:
    """``"epochs=2"`` / ``"train.epochs=2"`` -> ``("epochs", 2)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set must look like key=value, but got {text!r}.")
    if "." in key:
        section, _, leaf = key.partition(".")
        if section not in SECTIONS:
            raise ConfigError(
                f"--set {key}: unknown section `{section}`; valid sections are {sorted(SECTIONS)}."
            )
        _check_leaf(leaf, "--set", section=section)
        key = leaf
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def read_yaml(path: Path) -> Any:
    """Read a YAML file; a missing file or a syntax error is a ConfigError with the line."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file does not exist.")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: must be UTF-8 text.") from None


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
        key, value = parse_override(text)
        if key == "preset":
            flat.update(_normalize({"preset": value}, "--set"))
        else:
            _check_leaf(key, "--set")
            flat[key] = value
    flat.update({k: v for k, v in leaves.items() if v is not None})
    return flat, str(path) if path else "--set"


def auto_leaves(flat: Mapping[str, Any], source: str) -> tuple[str, ...]:
    """The leaves set to ``auto``: only :data:`PLANNED_LEAVES` may be."""
    auto = tuple(leaf for leaf, value in flat.items() if value == AUTO)
    for leaf in auto:
        if leaf not in PLANNED_LEAVES:
            raise ConfigError(
                f"{source}: `{LEAF_SECTION[leaf]}.{leaf}` cannot be `auto`; the plan fills "
                f"only {list(PLANNED_LEAVES)}."
            )
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
    see :func:`unet_search.plan.plan_run`)."""
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


def code_version() -> str:
    """Package version plus the git commit when run from a checkout (``0.1.0+g1a2b3c4``)."""
    from unet_search import __version__

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
