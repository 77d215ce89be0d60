"""Predict masks with a saved or registered model, at each image's original size.

``load_model("models:/NAME@champion")`` (or ``runs:/...``, or a local directory) returns a
:class:`Predictor`. Loading reads JSON and safetensors only: no pickled code runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from unet_search.core.errors import UserError
from unet_search.core.names import CONFIG_FILE
from unet_search.data.dataset import DatasetArrays
from unet_search.data.decode import image_array, read_image
from unet_search.models.build import load_model_dir
from unet_search.models.card import ModelCard
from unet_search.train.instances import decode_instances, foreground_labels
from unet_search.train.metrics import otsu_dice, score_masks
from unet_search.train.sliding import (
    RESIZE_BATCH,
    Network,
    Preprocessing,
    predict_logits_many,
)

__all__ = [
    "ImageLike",
    "Predictor",
    "RUNTIMES",
    "find_model_dir",
    "load_model",
    "resolve_model",
    "score_images",
]

# What runs the network: PyTorch, or onnxruntime on the model's ONNX export
# (:mod:`unet_search.serve.onnx`); everything around it (tiles, TTA, decoding) is the same.
RUNTIMES = ("torch", "onnx")

ImageLike = np.ndarray | str | Path


def _as_image(item: ImageLike) -> np.ndarray:
    """A file, or an array as the files decode (:func:`image_array`): any bit depth."""
    if isinstance(item, str | Path):
        return read_image(Path(item))
    return image_array(np.asarray(item), "an image array")


class Predictor:
    """A model plus its preprocessing: ``predict(images) -> masks`` at each image's size.

    A patch-mode model predicts whole images with a Gaussian-weighted sliding window of its
    training patch size (an unpadded UNet by overlap-tile); a resize-mode model (and every
    model saved before patch mode) sees each image resized to its training square, its
    logits resized back. Then a threshold (binary) or arg-max (multi-class), as the model was
    trained: the same predictor its validation numbers were measured with
    (:mod:`unet_search.train.sliding`).
    """

    def __init__(
        self,
        model: Network,
        card: ModelCard,
        device: str | torch.device = "cpu",
        tta: str | None = None,
        keep: object = None,
    ) -> None:
        self.device = torch.device(device)
        if isinstance(model, torch.nn.Module):
            model = model.to(self.device)
        model.eval()
        self.model = model
        self.card = card
        self._keep = keep  # what the model needs alive (a temporary ONNX export)
        self.pre = Preprocessing.of_card(card)
        self.tiling = self.pre.tiling if tta is None else replace(self.pre.tiling, tta=tta)

    @classmethod
    def from_dir(
        cls,
        path: Path,
        device: str | torch.device = "cpu",
        tta: str | None = None,
        runtime: str = "torch",
        onnx_dir: Path | None = None,
    ) -> Predictor:
        """The model saved in folder ``path``, run by ``runtime``: ``onnx`` runs its ONNX
        files in ``onnx_dir`` (else ``path/onnx``; a model without them is exported to a
        temporary folder first)."""
        path = Path(path)
        if runtime == "torch":
            model, card = load_model_dir(path)
            return cls(model, card, device, tta)
        if runtime != "onnx":
            raise UserError(f"runtime must be one of {list(RUNTIMES)}, but got {runtime!r}.")
        from unet_search.serve.onnx import OnnxNetwork, TemporaryOnnx, find_onnx

        keep = None
        onnx_dir = onnx_dir or find_onnx(path, path)
        if onnx_dir is None:
            keep = TemporaryOnnx(path)
            onnx_dir = keep.path
        return cls(OnnxNetwork(onnx_dir, device), ModelCard.read(path), device, tta, keep)

    @torch.no_grad()
    def predict_logits(self, images: Sequence[ImageLike]) -> list[torch.Tensor]:
        """Logits (K, H, W) per image at its original size (on the CPU)."""
        norm, channels = self.pre.normalization, self.pre.in_channels
        out: list[torch.Tensor] = []
        for start in range(0, len(images), RESIZE_BATCH):  # decoded a batch at a time
            decoded = [_as_image(item) for item in images[start : start + RESIZE_BATCH]]
            out.extend(
                logits.cpu()
                for logits in predict_logits_many(
                    self.model, decoded, self.tiling, norm, channels, self.device
                )
            )
        return out

    def predict(
        self, images: Sequence[ImageLike] | np.ndarray, instances: bool = False
    ) -> list[np.ndarray]:
        """Masks (H, W) uint8 per image: 0/1 for binary models, class indices otherwise; with
        ``instances``, (H, W) int32 instance labels instead (0 the background, 1..n the
        objects), decoded as the model's target says (:mod:`unet_search.train.instances`).

        Args:
            images: HxWx3 (or HxWx4, HxWx1, HxW) arrays in their own values (8-bit,
                16-bit or float, as the files decode) or file paths, any sizes; or one
                (N, H, W, C) array.
            instances: return instance labels (binary models only).
        """
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        if instances and self.pre.num_classes > 2:
            raise UserError(
                f"instances are objects of a binary model, but this model has "
                f"{self.pre.num_classes} classes: predict masks instead."
            )
        return [self._output(logit, instances) for logit in self.predict_logits(list(images))]

    def predict_both(self, images: Sequence[ImageLike]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(mask, instances) per image from one forward pass each (binary models)."""
        return [
            (self._output(logit, False), self._output(logit, True))
            for logit in self.predict_logits(list(images))
        ]

    def _output(self, logits: torch.Tensor, instances: bool) -> np.ndarray:
        pre = self.pre  # the one thresholding and decoding (train.instances)
        if instances:
            return decode_instances(logits, pre.target, pre.threshold, pre.decoding)
        return (
            foreground_labels(logits[None], pre.target, pre.threshold)[0].numpy().astype(np.uint8)
        )


def score_images(
    predictor: Predictor, arrays: DatasetArrays, indices: Sequence[int], prefix: str
) -> dict[str, float]:
    """``<prefix>dice``, ``<prefix>iou`` (and ``<prefix>dsb_score``, ``<prefix>ap50`` of its
    instances, for binary instance truth) of the masks ``predictor`` gives for images
    ``indices`` of ``arrays``, exactly as ``unet-search predict`` segments them: whole
    images at their original sizes; plus ``otsu_<prefix>dice``, a plain Otsu threshold on
    the same images (binary tasks)."""
    indices = [int(i) for i in indices]
    num_classes = predictor.pre.num_classes
    out: dict[str, float] = {}
    with_instances = num_classes <= 2 and arrays.instance_pixels is not None
    for start in range(0, len(indices), RESIZE_BATCH):  # a batch of masks at a time
        chunk = indices[start : start + RESIZE_BATCH]
        images = [arrays.image(i) for i in chunk]
        if with_instances:  # the instances predict --output-kind instances gives
            masks, objects = map(list, zip(*predictor.predict_both(images), strict=True))
            scores = score_masks(masks, arrays, chunk, num_classes, objects)
        else:
            scores = score_masks(predictor.predict(images), arrays, chunk, num_classes)
        for key, value in scores.items():
            out[key] = out.get(key, 0.0) + value * len(chunk)
    scores = {f"{prefix}{key}": value / max(len(indices), 1) for key, value in out.items()}
    if num_classes <= 2:
        scores[f"otsu_{prefix}dice"] = otsu_dice(arrays, indices)
    return scores


def find_model_dir(root: Path) -> Path:
    """The folder holding ``model_config.json`` under ``root`` (an MLflow model or a dir)."""
    if (root / CONFIG_FILE).is_file():
        return root
    found = sorted(root.rglob(CONFIG_FILE))
    if not found:
        raise UserError(f"{root}: is not a unet-search model (no {CONFIG_FILE} inside).")
    return found[0].parent


def resolve_model(uri: str | Path, tracking_uri: str | None = None) -> tuple[Path, Path]:
    """(the MLflow model or folder, the unet-search model folder in it) of ``uri``: a
    ``models:/`` or ``runs:/`` URI (downloaded; resolved as :func:`load_model` says) or a
    local folder."""
    path = Path(str(uri))
    if not path.exists():
        from unet_search.tracking.registry import download_model

        if tracking_uri is None and str(uri).startswith(("models:/", "runs:/")):
            from unet_search.core.env import work_dir
            from unet_search.tracking.client import resolve_tracking_uri

            tracking_uri = resolve_tracking_uri(work_dir(), create=False)
        path = download_model(str(uri), tracking_uri)
    return path, find_model_dir(path)


def load_model(
    uri: str | Path,
    device: str = "cpu",
    tracking_uri: str | None = None,
    tta: str | None = None,
    runtime: str = "torch",
) -> Predictor:
    """Load a predictor from ``models:/NAME@alias``, ``models:/NAME/VERSION``, ``runs:/...``
    or a local directory. Registry and run URIs resolve in ``tracking_uri``, else
    ``$MLFLOW_TRACKING_URI``, else the work dir's store, where ``unet-search search``
    registered its models (as every other command reads it). ``tta`` (``none`` | ``flips``)
    overrides the test-time augmentation the model was validated with. ``runtime``
    (``torch`` | ``onnx``): what runs the network; ``onnx`` runs the model's ONNX file
    (``onnx/model.onnx`` of a registered version; a model without one is exported first) in
    onnxruntime, through the same tiles, TTA and decoding."""
    root, model_dir = resolve_model(uri, tracking_uri)
    if runtime != "onnx":
        return Predictor.from_dir(model_dir, device, tta, runtime)
    from unet_search.serve.onnx import find_onnx

    return Predictor.from_dir(model_dir, device, tta, runtime, find_onnx(root, model_dir))
