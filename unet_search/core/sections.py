"""The six sections of a run configuration (data, augment, model, loss, optim, train):
frozen pydantic models (:mod:`unet_search.core.schema`), each field with its type and rule
(:mod:`unet_search.core.config` builds them into a ``RunConfig``).

Every leaf name is unique across sections, so a flat ``--set epochs=2`` or an MLflow param
``encoder`` maps one to one onto a field; ``--set train.epochs=2`` works too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Self

from pydantic import BeforeValidator, model_validator

from unet_search.core.metrics import VAL_METRICS
from unet_search.core.schema import Frozen, at_least, between, broken, choice, rule

__all__ = [
    "IGNORE",
    "INPUT_MODES",
    "MASK_KINDS",
    "WEIGHTED_LOSSES",
    "TARGET_CLASSES",
    "TARGETS",
    "NORMALIZATION_NAMES",
    "AUTO",
    "PLANNED_LEAVES",
    "auto_rule",
    "AutoSetting",
    "network_input",
    "RESIZE_DEFAULT",
    "BLOCKS",
    "POOLINGS",
    "BOTTLENECKS",
    "ATTENTIONS",
    "MAX_BOTTLENECK_TOKENS",
    "bottleneck_side",
    "DataConfig",
    "AugmentConfig",
    "ModelConfig",
    "LossConfig",
    "OptimConfig",
    "TrainConfig",
]


IGNORE = 255  # mask value of pixels that are padding, not data: no loss there


INPUT_MODES = ("patch", "resize")


# What the network learns from the truth (unet_search.data.targets): the mask itself, or for
# binary tasks with instances, background / interior / boundary or levels of the distance to
# the object's edge, so touching objects part.
TARGETS = ("semantic", "boundary", "distance")
# The classes an instance target's network outputs: background / interior / boundary, and
# background + 4 distance levels (unet_search.data.targets.DISTANCE_LEVELS).
TARGET_CLASSES = {"boundary": 3, "distance": 5}


# The losses with a cross-entropy term, which `loss.border_weight` weights per pixel.
WEIGHTED_LOSSES = ("bce", "mix")


# How the images/masks layout's mask files are read: class indices (binary 0/1, 0/255), or
# instance label images (each object its own id, 0 the background; a binary task).
MASK_KINDS = ("semantic", "instances")


# default: x/255, or ImageNet statistics for pre-trained encoders (see transforms.Normalization)
NORMALIZATION_NAMES = ("default", "unit", "imagenet", "zscore", "percentile", "dataset")


AUTO = "auto"  # a value `unet_search.plan.planner` fills from the dataset's profile


PLANNED_LEAVES = (
    "scale",
    "patch_size",
    "depth",
    "batch_size",
    "patches_per_epoch",
    "normalization",
    "target",
)


def auto_rule(leaf: str) -> str | None:
    """Why ``leaf`` cannot be ``auto`` (None: it may, the plan fills it). The one rule: run
    configs and spaces both ask it."""
    if leaf in PLANNED_LEAVES:
        return None
    return f"cannot be `auto`; the plan fills only {list(PLANNED_LEAVES)}"


@dataclass(frozen=True)
class AutoSetting:
    """A setting a search space gives as ``auto``: a fixed leaf (``name``, no ``bound``), or
    the ``low`` / ``high`` bound of its searched int ``depth`` (``name``: the parameter's key,
    ``depth``, or ``depth:1`` for an alternative). Written as ``depth.low``."""

    name: str
    bound: str = ""  # "" (a fixed leaf) | "low" | "high"

    def __str__(self) -> str:
        return f"{self.name}.{self.bound}" if self.bound else self.name


# The from-scratch UNet's options (REFERENCE.md 1d-1e; unet_search.models.blocks builds them).
BLOCKS = ("plain", "residual", "separable")
POOLINGS = ("max", "avg", "strided")
BOTTLENECKS = ("plain", "dilated", "aspp", "transformer")
ATTENTIONS = ("none", "gate", "scse")
# A transformer bottleneck attends over every pair of its tokens: memory grows with their
# square. 1024 tokens = a 32 x 32 bottleneck (a 256-px patch at depth 3, 512 px at depth 4).
MAX_BOTTLENECK_TOKENS = 1024


RESIZE_DEFAULT = 128  # resize mode's square when `image_size` is not given (the Keras seed)


def _size(value: Any) -> Any:
    """A size: one int (a square) or [height, width] ints."""
    sides = list(value) if isinstance(value, list | tuple) else [value, value]
    if len(sides) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in sides):
        return (sides[0], sides[1])
    raise broken("", "must be one int or [height, width] ints", value)


Size = Annotated[
    tuple[int, int],
    BeforeValidator(_size),
    rule(
        "must be one side or [height, width], each in [16, 4096]",
        lambda size: all(16 <= side <= 4096 for side in size),
    ),
]
Fraction = Annotated[float, between(0, 1)]


class DataConfig(Frozen):
    """How the dataset is read and shown to the model, and the validation split.

    ``input_mode: patch`` (the default) trains on random ``patch_size`` patches at the data's
    own pixel scale (times ``scale``) and predicts whole images with a sliding window;
    ``input_mode: resize`` squashes every image to one ``image_size`` square (the Keras seed)."""

    section = "data"
    input_mode: Annotated[str, choice(INPUT_MODES)] = "patch"
    patch_size: Size = (128, 128)  # (height, width); a number means a square
    # images are resampled by this factor before the model (patch mode)
    scale: Annotated[float, between(0.05, 4.0)] = 1.0
    normalization: Annotated[str, choice(NORMALIZATION_NAMES)] = "default"
    image_size: Annotated[int, between(16, 4096)] | None = None  # resize mode; None: 128
    # 1: binary foreground (sigmoid); C >= 2: class indices 0..C-1
    num_classes: Annotated[int, between(1, 255)] = 1
    target: Annotated[str, choice(TARGETS)] = "semantic"
    masks: Annotated[str, choice(MASK_KINDS)] = "semantic"  # the images/masks layout's
    val_fraction: Annotated[float, between(0, 1, low_open=True, high_open=True)] = 0.1
    # Held out from every choice of a search, scored once at its end; None: 0.1 of a
    # dataset of at least 20 images, else none (unet_search.data.split.test_fraction_of).
    test_fraction: float | None = None
    split_seed: int = 0

    @model_validator(mode="after")
    def _fits(self) -> Self:
        if self.image_size is not None and self.input_mode != "resize":
            raise broken(
                "data.image_size",
                "belongs to input_mode: resize (every image squashed to one square); in "
                "patch mode the model sees patches of `data.patch_size` at the data's own "
                "scale: set patch_size instead, or input_mode: resize",
                self.image_size,
            )
        if self.target != "semantic" and self.num_classes > 2:
            raise broken(
                "data.target",
                f"{self.target!r} parts touching objects of a binary task (num_classes 1 or 2), "
                f"but num_classes is {self.num_classes}: use target: semantic",
                self.target,
            )
        if self.masks == "instances" and self.num_classes > 2:
            raise broken(
                "data.masks",
                f"instances needs a binary task (num_classes 1 or 2; num_classes is "
                f"{self.num_classes}): label images hold object ids, not classes",
                self.masks,
            )
        test = self.test_fraction
        if test is not None and not (0.0 <= test < 1.0 and self.val_fraction + test < 1):
            raise broken(
                "data.test_fraction",
                f"must be in [0, 1) and leave training images beside val_fraction "
                f"{self.val_fraction}",
                test,
            )
        return self

    @property
    def square(self) -> int:
        """The side every image is resized to in resize mode."""
        return self.image_size or RESIZE_DEFAULT

    @property
    def network_classes(self) -> int:
        """The classes the network outputs: the task's (``num_classes``), or the instance
        target's (``boundary``: background, interior, boundary; ``distance``: background and
        4 levels)."""
        return TARGET_CLASSES.get(self.target, self.num_classes)

    @property
    def input_size(self) -> tuple[int, int]:
        """What the model trains on: a patch, or resize mode's square."""
        return network_input(self.input_mode, self.patch_size, self.square)


def network_input(input_mode: str, patch: tuple[int, int], square: int) -> tuple[int, int]:
    """(height, width) the network sees at once, in training and in every prediction tile:
    patch mode's patch, or resize mode's square. The one rule (the config and a saved model's
    prediction plan both ask it)."""
    return patch if input_mode == "patch" else (square, square)


def bottleneck_side(size: tuple[int, int], depth: int) -> tuple[int, int]:
    """(height, width) of a same-padded UNet's bottleneck for an input of ``size``: each side
    over ``2**depth``, rounded up (inputs are padded to a multiple)."""
    return (-(-size[0] // 2**depth), -(-size[1] // 2**depth))


class AugmentConfig(Frozen):
    """Training augmentation; ``aug_strength`` 0 turns it off, 1 is the strongest."""

    section = "augment"
    aug_strength: Fraction = 0.5
    elastic: bool = False


class ModelConfig(Frozen):
    """Architecture; names and combinations are checked against the registries in
    :mod:`unet_search.models.build` (``validate_model_config``).

    The from-scratch UNet (encoder ``none``) takes every variant of REFERENCE.md 1d-1e:
    ``block`` (plain, residual, depthwise-separable), ``pooling`` (max, avg, a stride-2 conv),
    ``bottleneck`` (plain, dilated rates 1-2-4, ASPP, a transformer), ``attention`` (none,
    Attention U-Net gates on the skips, scSE in the decoder) and ``arch: unet3plus``. The
    old ``arch: attention_unet`` is read as ``unet`` + ``attention: scse`` (the same model)."""

    section = "model"
    arch: str = "unet"
    encoder: str = "none"  # "none": the from-scratch UNet; else an smp encoder name
    encoder_weights: str | None = None
    depth: Annotated[int, between(2, 5)] = 4  # poolings (plain UNet) / encoder_depth (smp)
    base_filters: Annotated[int, between(1, 1024)] = 16
    dropout: Annotated[float, between(0, 1, high_open=True)] = 0.0
    # constant | ramp (the Keras seed's 1/3, 2/3, 1 ramp)
    dropout_schedule: Annotated[str, choice(["constant", "ramp"])] = "constant"
    upsampling: str = "transpose"
    batchnorm: bool = True
    padding: Annotated[str, choice(["same", "valid"])] = "same"
    in_channels: Annotated[int, choice([1, 3])] = 3
    block: Annotated[str, choice(BLOCKS)] = "plain"
    pooling: Annotated[str, choice(POOLINGS)] = "max"
    bottleneck: Annotated[str, choice(BOTTLENECKS)] = "plain"
    attention: Annotated[str, choice(ATTENTIONS)] = "none"
    transformer_layers: Annotated[int, between(1, 24)] = 2
    transformer_heads: Annotated[int, between(1, 64)] = 4
    transformer_width: Annotated[int, between(4, 4096)] = 128  # token width (TransUNet's D)
    unet3plus_channels: Annotated[int, between(1, 1024)] = 64  # per full-scale skip (paper: 64)

    @model_validator(mode="before")
    @classmethod
    def _old_arch(cls, raw: Any) -> Any:
        """``attention_unet`` (before the attention option): ``unet`` with scSE attention."""
        if isinstance(raw, dict) and raw.get("arch") == "attention_unet":
            if raw.get("attention", "scse") not in ("none", "scse"):
                raise broken(
                    "model.attention",
                    "must be 'scse' or left out with `arch: attention_unet` (which is `unet` "
                    "with `attention: scse`)",
                    raw["attention"],
                )
            raw = {**raw, "arch": "unet", "attention": "scse"}
        return raw

    @model_validator(mode="after")
    def _default_upsampling(self) -> Self:
        """The default ``transpose`` is the from-scratch UNet's: when it is not set, UNet 3+
        (its full-scale skips are resampled) takes ``bilinear``, as its paper does, and an smp
        decoder (no transposed conv) ``nearest``, as smp does. A value that was set is kept
        and checked (``validate_model_config``)."""
        if "upsampling" not in self.model_fields_set:
            if self.arch == "unet3plus":
                object.__setattr__(self, "upsampling", "bilinear")
            elif self.encoder != "none":
                object.__setattr__(self, "upsampling", "nearest")
        return self

    @model_validator(mode="after")
    def _transformer(self) -> Self:
        width, heads = self.transformer_width, self.transformer_heads
        if width % 4 or width % heads:
            raise broken(
                "model.transformer_width",
                f"must be a multiple of 4 (2-D sine position codes) and of "
                f"`transformer_heads` ({heads})",
                width,
            )
        return self


class LossConfig(Frozen):
    """Loss; ``mix`` is ``dice_weight * dice + (1 - dice_weight) * bce`` (CE if multi-class)."""

    section = "loss"
    loss: str = "mix"
    dice_weight: Fraction = 0.5
    focal_gamma: Annotated[float, at_least(0)] = 2.0
    tversky_alpha: float = 0.3
    tversky_beta: float = 0.7
    # The original UNet's border weight map's w0 (Ronneberger et al. 2015: 10) on the
    # cross-entropy; 0: none (unet_search.data.targets.border_weights).
    border_weight: Annotated[float, between(0, 100)] = 0.0

    @model_validator(mode="after")
    def _tversky(self) -> Self:
        alpha, beta = self.tversky_alpha, self.tversky_beta
        if not (alpha >= 0 and beta >= 0 and alpha + beta > 0):
            raise broken(
                "loss.tversky_alpha",
                "and `tversky_beta` must be >= 0 with a positive sum",
                (alpha, beta),
            )
        if self.border_weight > 0 and self.loss not in WEIGHTED_LOSSES:
            raise broken(
                "loss.border_weight",
                f"weights the cross-entropy of loss {' or '.join(WEIGHTED_LOSSES)}, but loss is "
                f"{self.loss!r}: set loss: mix, or border_weight: 0",
                self.border_weight,
            )
        return self


class OptimConfig(Frozen):
    """Optimizer and learning-rate schedule."""

    section = "optim"
    optimizer: str = "adamw"
    lr: Annotated[float, between(0, 10, low_open=True)] = 1e-3
    weight_decay: Annotated[float, at_least(0)] = 1e-4
    lr_schedule: str = "cosine"
    grad_clip: Annotated[float, at_least(0)] = 1.0  # max gradient norm; 0: no clipping


class TrainConfig(Frozen):
    """Epoch loop, early stopping, evaluation and resources of one training run."""

    section = "train"
    epochs: Annotated[int, between(1, 100_000)] = 20
    # The LR schedule spans this many epochs (0: `epochs`): a search's exploring trials span
    # its whole compute, so that the best of them can go on as one long run (final fit).
    schedule_epochs: Annotated[int, between(0, 100_000)] = 0
    batch_size: Annotated[int, between(1, 4096)] = 8
    seed: int = 0
    threshold: Annotated[float, between(0, 1, low_open=True, high_open=True)] = 0.5
    early_stop_patience: Annotated[int, at_least(0)] = 0  # 0 turns early stopping off
    early_stop_metric: Annotated[str, choice(VAL_METRICS)] = "val_dice"
    # The weights a run keeps (its model, the final fit's start): the epoch with the best
    # `early_stop_metric`, or the last epoch's (nnU-Net's rule: lost 0.04-0.19 held-out Dice
    # on real sets, bench/README.md "12, the planned default: which weights it keeps").
    keep_weights: Annotated[str, choice(["best", "last"])] = "best"
    # Validate, keep and save a moving average of the weights, its horizon in epochs (0: the
    # weights as trained; unet_search.train.average). 1 epoch for the planned default:
    # medians -0.009 / +0.008 on two real sets, seed spread larger (bench/README.md, "12, the
    # planned default"): off by default.
    ema_horizon: Annotated[float, between(0, 1000)] = 0.0
    # compute the DSB2018 instance score every N epochs (0: never)
    dsb_every: Annotated[int, at_least(0)] = 1
    num_sample_images: Annotated[int, between(0, 64)] = 4
    # log prediction overlays every N epochs (0: only the final one)
    samples_every: Annotated[int, at_least(0)] = 5
    num_workers: Annotated[int, at_least(1)] = 1
    cpus_per_worker: Annotated[int, at_least(1)] = 1
    gpus_per_worker: Annotated[float, at_least(0)] = 0.0
    amp: Annotated[str, choice(["bf16", "fp16", "off"])] = "bf16"  # on GPU only
    channels_last: bool = True  # on GPU only
    max_failures: Annotated[int, at_least(0)] = 2
    loader_workers: Annotated[int, at_least(0)] = 0
    # Patch mode: patches per epoch over all ranks (an epoch is the same learning for any
    # image size), and the share of them centred on a foreground pixel (nnU-Net's 0.33).
    patches_per_epoch: Annotated[int, between(1, 10_000_000)] = 256
    fg_oversample: Fraction = 0.33
    # Whole-image prediction (validation and predict): tile overlap and test-time flips.
    tile_overlap: Annotated[float, between(0, 1, high_open=True)] = 0.5
    tta: Annotated[str, choice(["none", "flips"])] = "none"
    # validation scores at most this many images (0: all)
    val_max_images: Annotated[int, at_least(0)] = 200
