"""albumentations pipelines, normalization and the torch Dataset over cached arrays."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from unet_search.config import AugmentConfig, ModelConfig

__all__ = [
    "NORMALIZATIONS",
    "SegmentationDataset",
    "normalization_for",
    "to_tensor",
    "train_pipeline",
]

# name -> (mean, std) applied to pixel values scaled to [0, 1].
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # x / 255, as the Keras seed does
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # pre-trained encoders
}


def normalization_for(model: ModelConfig) -> str:
    """Pre-trained encoders expect ImageNet statistics; models trained from scratch use x/255."""
    return "imagenet" if model.encoder_weights else "unit"


def train_pipeline(cfg: AugmentConfig, seed: int | None = None) -> A.Compose:
    """Flips, rot90, affine, brightness/contrast (+ optional elastic), scaled by strength.

    Masks use nearest-neighbour interpolation and the same geometric transform as the image.
    ``seed`` makes the random draws reproducible (albumentations 2 has its own generator).
    """
    s = cfg.aug_strength
    if s == 0.0:
        return A.Compose([], seed=seed)
    reflect = cv2.BORDER_REFLECT_101
    steps: list[Any] = [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
        A.Affine(
            scale=(1.0 - 0.25 * s, 1.0 + 0.25 * s),
            translate_percent=(-0.1 * s, 0.1 * s),
            rotate=(-45.0 * s, 45.0 * s),
            shear=(-10.0 * s, 10.0 * s),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=reflect,
            p=0.3 + 0.5 * s,
        ),
        A.RandomBrightnessContrast(
            brightness_limit=0.3 * s, contrast_limit=0.3 * s, p=0.3 + 0.5 * s
        ),
    ]
    if cfg.elastic:
        steps.append(
            A.ElasticTransform(
                alpha=30.0 * s,
                sigma=5.0,
                border_mode=reflect,
                mask_interpolation=cv2.INTER_NEAREST,
                p=0.3,
            )
        )
    return A.Compose(steps, seed=seed)


def to_tensor(image: np.ndarray, normalization: str, in_channels: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (C, H, W) float32 normalized; C = 1 takes the channel mean."""
    # np.array copies: arrays from Ray's object store are read-only.
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1).div_(255.0)
    mean, std = NORMALIZATIONS[normalization]
    if in_channels == 1:
        return ((x.mean(dim=0, keepdim=True) - mean[0]) / std[0]).contiguous()
    return (
        (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    ).contiguous()


class SegmentationDataset(Dataset[dict[str, torch.Tensor]]):
    """Samples of cached arrays, optionally augmented.

    Yields dicts: ``image`` (C, H, W) float32, ``mask`` (H, W) int64 class indices and, when
    ``instances`` is given, ``instances`` (H, W) int32 labels (evaluation only: unaugmented).
    """

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        indices: Sequence[int] | np.ndarray,
        *,
        normalization: str,
        in_channels: int,
        pipeline: A.Compose | None = None,
        instances: np.ndarray | None = None,
    ) -> None:
        self.images, self.masks, self.instances = images, masks, instances
        self.indices = [int(i) for i in indices]
        self.normalization, self.in_channels, self.pipeline = normalization, in_channels, pipeline

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        i = self.indices[item]
        image, mask = self.images[i], self.masks[i]
        if self.pipeline is not None and len(self.pipeline.transforms):
            out = self.pipeline(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        sample = {
            "image": to_tensor(image, self.normalization, self.in_channels),
            "mask": torch.from_numpy(np.array(mask, dtype=np.int64)),
        }
        if self.instances is not None:
            sample["instances"] = torch.from_numpy(self.instances[i].astype(np.int32))
        return sample
