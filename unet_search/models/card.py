"""A saved model's card (``model_config.json`` beside the weights): what the network is, how
many outputs it has, what a predictor must do to an image for it, and the card's format.
Read once, typed, by every way a model is loaded (``load_model``, the pyfunc, ONNX, the
registry). Cards written before the format was versioned read as format 1."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unet_search.core.errors import UserError
from unet_search.core.names import CONFIG_FILE
from unet_search.core.sections import ModelConfig

__all__ = ["FORMAT_VERSION", "ModelCard"]

FORMAT_VERSION = 1  # what this version writes; a newer card is refused with a clear message


@dataclass(frozen=True)
class ModelCard:
    """``model``: the network's build config (``encoder_weights`` never saved: the weights are
    in the folder); ``num_classes``: its outputs as built (the instance target's classes, not
    the task's); ``preprocessing``: what a predictor does to an image, the JSON keys other
    tools read (typed by :class:`unet_search.train.sliding.Preprocessing`)."""

    model: ModelConfig
    num_classes: int
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": {**self.model.__dict__, "encoder_weights": None},
            "num_classes": self.num_classes,
            "preprocessing": dict(self.preprocessing),
            "format_version": self.format_version,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = CONFIG_FILE) -> ModelCard:
        """The card :meth:`to_dict` wrote (or an older version of it); a UserError naming
        ``source`` if it is none, or newer than this version reads. The build config keeps
        its own rules (a ConfigError naming the key, as loading a model always gave)."""
        try:
            version = int(raw.get("format_version", 1))
            fields, classes = dict(raw["model"]), int(raw["num_classes"])
            preprocessing = dict(raw.get("preprocessing") or {})
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{source}: not a model card unet-search wrote ({err})") from None
        if version > FORMAT_VERSION:
            raise UserError(
                f"{source}: a model card of format {version}, newer than this unet-search "
                f"reads ({FORMAT_VERSION}): upgrade unet-search to load it."
            )
        return cls(ModelConfig(**fields), classes, preprocessing)

    def write(self, folder: Path) -> None:
        (folder / CONFIG_FILE).write_text(json.dumps(self.to_dict(), indent=2), "utf-8")

    @classmethod
    def read(cls, folder: Path) -> ModelCard:
        """The card of the saved model in ``folder``."""
        path = folder / CONFIG_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UserError(f"{path}: not a readable model card ({err})") from None
        if not isinstance(raw, Mapping):
            raise UserError(f"{path}: not a model card unet-search wrote (not a mapping)")
        return cls.from_dict(raw, str(path))
