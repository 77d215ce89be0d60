"""What a registered model is: the pyfunc (models-from-code, weights as safetensors, never a
pickle) with the package as its code and its requirements pinned to what is installed,
tagged with its metric and test scores and handed to the champion gate. The MLflow calls are
:mod:`unet_search.tracking.models`'."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import requires, version
from pathlib import Path

from unet_search.core.names import BIOIMAGEIO_DIR, ONNX_DIR, ONNX_FILE
from unet_search.core.tags import PREFIX as TAG_PREFIX
from unet_search.core.tags import (
    TAG_METRIC,
    TAG_MODE,
    TAG_VALUE,
)
from unet_search.models.card import ModelCard
from unet_search.tracking.models import PyfuncModel, log_and_register_pyfunc
from unet_search.tracking.registry import Registration

__all__ = [
    "Candidate",
    "log_and_register",
    "PACKAGE_DIR",
    "PYFUNC_FILE",
    "pyfunc_model",
    "requirements",
]


PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")


PACKAGE_DIR = Path(__file__).parents[1]  # the whole package, logged as the model's code

DISTRIBUTION = "unet-search"
# What only a search, a report or the cluster needs: a served model never imports them.
# The ONNX and BioImage.IO tools export at registration; the served pyfunc runs PyTorch.
NOT_SERVED = frozenset(
    {"ray", "optuna", "matplotlib", "onnx", "onnxruntime", "onnxscript", "rich", "bioimageio.core"}
)


def requirements() -> tuple[str, ...]:
    """The served model's pip requirements: this package's own dependencies (its installed
    metadata, not a list kept by hand), less what only a search needs, each pinned to the
    version installed here, extras dropped (``mlflow[auth]`` -> ``mlflow``)."""
    out = []
    for line in requires(DISTRIBUTION) or []:
        if "extra ==" in line:
            continue  # an optional dependency (dev tools)
        name = re.split(r"[\s\[<>=!~;]", line, maxsplit=1)[0]
        if name.lower() not in NOT_SERVED:
            out.append(f"{name}=={version(name).split('+')[0]}")
    return tuple(out)


def pyfunc_model(
    model_dir: Path, onnx_dir: Path | None = None, bioimageio_dir: Path | None = None
) -> PyfuncModel:
    """The pyfunc of a trained model's folder: (N, H, W, C) images in, of the type and channels
    it was trained on (8-bit RGB for models saved before these were written down), (N, H, W)
    uint8 masks out, any batch size, height and width; with the parameter ``instances`` true,
    (N, H, W) int32 instance labels instead (binary models). ``onnx_dir``: its ONNX export
    (:func:`unet_search.serve.onnx.export_onnx`), logged as the model's ``onnx/`` folder
    and flavor; ``bioimageio_dir``: its BioImage.IO package
    (:func:`unet_search.serve.bioimageio.write_package`), logged as ``bioimageio/``."""
    folders = tuple(
        (name, folder)
        for name, folder in ((ONNX_DIR, onnx_dir), (BIOIMAGEIO_DIR, bioimageio_dir))
        if folder is not None
    )
    pre = ModelCard.read(model_dir).preprocessing
    dtype, channels = pre.get("image_dtype", "uint8"), int(pre.get("image_channels", 3))
    return PyfuncModel(
        python_model=PYFUNC_FILE,
        artifacts={"model_dir": model_dir},
        code_paths=(PACKAGE_DIR,),
        requirements=requirements(),
        inputs=(dtype, (-1, -1, -1, channels)),
        outputs=("uint8", (-1, -1, -1)),
        params=(("instances", "boolean", False),),
        folders=folders,
        onnx=f"{ONNX_DIR}/{ONNX_FILE}" if onnx_dir is not None else None,
    )


@dataclass(frozen=True)
class Candidate:
    """A model to register: its folder (and its ONNX export's), the metric it was chosen by
    with its value and mode, the held-out ``test`` scores (tagged ``unet_search.<key>``), the
    version's other ``tags``, ``veto``: why it must not be champion (None: it may), and its
    ONNX export's and BioImage.IO package's folders (None: it has none)."""

    model_dir: Path
    metric: str
    value: float
    mode: str
    tags: Mapping[str, str] = field(default_factory=dict)
    test: Mapping[str, float] = field(default_factory=dict)
    veto: str | None = None
    onnx_dir: Path | None = None
    bioimageio_dir: Path | None = None

    def version_tags(self) -> dict[str, str]:
        """Every tag of the registered version."""
        return {
            **self.tags,
            **{TAG_PREFIX + key: repr(float(v)) for key, v in self.test.items()},
            TAG_METRIC: self.metric,
            TAG_VALUE: repr(float(self.value)),
            TAG_MODE: self.mode,
        }


def log_and_register(
    tracking_uri: str, run_id: str, name: str, candidate: Candidate
) -> Registration:
    """Log ``candidate`` as a pyfunc model in run ``run_id`` (with its ONNX export), register
    it as ``name`` with its tags and promote it behind the champion gate."""
    model = pyfunc_model(candidate.model_dir, candidate.onnx_dir, candidate.bioimageio_dir)
    tags = candidate.version_tags()
    return log_and_register_pyfunc(tracking_uri, run_id, model, name, tags, candidate.veto)
