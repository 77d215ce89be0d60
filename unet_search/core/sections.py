"""The six sections of a run configuration (data, augment, model, loss, optim, train): frozen
dataclasses, each checking its own values (:mod:`unet_search.core.config` builds them).

A run configuration has six sections (data, augment, model, loss, optim, train). Every leaf
name is unique across sections, so a flat ``--set epochs=2`` or an MLflow param ``encoder``
maps one to one onto a field; ``--set train.epochs=2`` works too.
"""

from __future__ import annotations

from dataclasses import dataclass

from unet_search.core.errors import check, one_of
from unet_search.core.metrics import VAL_METRICS

__all__ = [
    "IGNORE",
    "INPUT_MODES",
    "NORMALIZATION_NAMES",
    "AUTO",
    "PLANNED_LEAVES",
    "RESIZE_DEFAULT",
    "DataConfig",
    "AugmentConfig",
    "ModelConfig",
    "LossConfig",
    "OptimConfig",
    "TrainConfig",
]


IGNORE = 255  # mask value of pixels that are padding, not data: no loss there


INPUT_MODES = ("patch", "resize")


# default: x/255, or ImageNet statistics for pre-trained encoders (see transforms.Normalization)
NORMALIZATION_NAMES = ("default", "unit", "imagenet", "zscore", "dataset")


AUTO = "auto"  # a value `unet_search.train.plan` fills from the dataset's fingerprint


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
    # dataset of at least 20 images, else none (unet_search.data.split.test_fraction_of).
    test_fraction: float | None = None
    split_seed: int = 0

    def __post_init__(self) -> None:
        one_of("data.input_mode", self.input_mode, INPUT_MODES)
        check(
            all(16 <= side <= 4096 for side in self.patch_size),
            "data.patch_size",
            "must be one side or [height, width], each in [16, 4096]",
            list(self.patch_size),
        )
        check(0.05 <= self.scale <= 4.0, "data.scale", "must be in [0.05, 4]", self.scale)
        one_of("data.normalization", self.normalization, NORMALIZATION_NAMES)
        if self.image_size is not None:
            check(
                self.input_mode == "resize",
                "data.image_size",
                "belongs to input_mode: resize (every image squashed to one square); in "
                "patch mode the model sees patches of `data.patch_size` at the data's own "
                "scale: set patch_size instead, or input_mode: resize",
                self.image_size,
            )
            check(
                16 <= self.image_size <= 4096,
                "data.image_size",
                "must be in [16, 4096]",
                self.image_size,
            )
        check(
            1 <= self.num_classes <= 255,
            "data.num_classes",
            "must be in [1, 255]",
            self.num_classes,
        )
        check(
            0.0 < self.val_fraction < 1.0,
            "data.val_fraction",
            "must be in (0, 1)",
            self.val_fraction,
        )
        if self.test_fraction is not None:
            check(
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
        check(
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
        check(2 <= self.depth <= 5, "model.depth", "must be in [2, 5]", self.depth)
        check(
            1 <= self.base_filters <= 1024,
            "model.base_filters",
            "must be in [1, 1024]",
            self.base_filters,
        )
        check(0.0 <= self.dropout < 1.0, "model.dropout", "must be in [0, 1)", self.dropout)
        one_of("model.dropout_schedule", self.dropout_schedule, ["constant", "ramp"])
        one_of("model.padding", self.padding, ["same", "valid"])
        one_of("model.in_channels", self.in_channels, [1, 3])


@dataclass(frozen=True)
class LossConfig:
    """Loss; ``mix`` is ``dice_weight * dice + (1 - dice_weight) * bce`` (CE if multi-class)."""

    loss: str = "mix"
    dice_weight: float = 0.5
    focal_gamma: float = 2.0
    tversky_alpha: float = 0.3
    tversky_beta: float = 0.7

    def __post_init__(self) -> None:
        check(
            0.0 <= self.dice_weight <= 1.0,
            "loss.dice_weight",
            "must be in [0, 1]",
            self.dice_weight,
        )
        check(self.focal_gamma >= 0.0, "loss.focal_gamma", "must be >= 0", self.focal_gamma)
        check(
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
        check(0.0 < self.lr <= 10.0, "optim.lr", "must be in (0, 10]", self.lr)
        check(self.weight_decay >= 0.0, "optim.weight_decay", "must be >= 0", self.weight_decay)
        check(self.grad_clip >= 0.0, "optim.grad_clip", "must be >= 0", self.grad_clip)


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
        check(1 <= self.epochs <= 100_000, "train.epochs", "must be in [1, 100000]", self.epochs)
        check(
            1 <= self.batch_size <= 4096,
            "train.batch_size",
            "must be in [1, 4096]",
            self.batch_size,
        )
        check(0.0 < self.threshold < 1.0, "train.threshold", "must be in (0, 1)", self.threshold)
        check(
            self.early_stop_patience >= 0,
            "train.early_stop_patience",
            "must be >= 0",
            self.early_stop_patience,
        )
        one_of("train.early_stop_metric", self.early_stop_metric, VAL_METRICS)
        check(self.dsb_every >= 0, "train.dsb_every", "must be >= 0", self.dsb_every)
        check(
            0 <= self.num_sample_images <= 64,
            "train.num_sample_images",
            "must be in [0, 64]",
            self.num_sample_images,
        )
        check(self.samples_every >= 0, "train.samples_every", "must be >= 0", self.samples_every)
        check(self.num_workers >= 1, "train.num_workers", "must be >= 1", self.num_workers)
        check(
            self.cpus_per_worker >= 1,
            "train.cpus_per_worker",
            "must be >= 1",
            self.cpus_per_worker,
        )
        check(
            self.gpus_per_worker >= 0,
            "train.gpus_per_worker",
            "must be >= 0",
            self.gpus_per_worker,
        )
        one_of("train.amp", self.amp, ["bf16", "fp16", "off"])
        check(self.max_failures >= 0, "train.max_failures", "must be >= 0", self.max_failures)
        check(
            self.loader_workers >= 0, "train.loader_workers", "must be >= 0", self.loader_workers
        )
        check(
            1 <= self.patches_per_epoch <= 10_000_000,
            "train.patches_per_epoch",
            "must be in [1, 10000000]",
            self.patches_per_epoch,
        )
        check(
            0.0 <= self.fg_oversample <= 1.0,
            "train.fg_oversample",
            "must be in [0, 1]",
            self.fg_oversample,
        )
        check(
            0.0 <= self.tile_overlap < 1.0,
            "train.tile_overlap",
            "must be in [0, 1)",
            self.tile_overlap,
        )
        one_of("train.tta", self.tta, ["none", "flips"])
        check(
            self.val_max_images >= 0, "train.val_max_images", "must be >= 0", self.val_max_images
        )
