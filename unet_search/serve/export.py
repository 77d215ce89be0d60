"""Log a trained model as an MLflow pyfunc (models-from-code, weights as safetensors, never a
pickle), register it and hand it to the champion gate."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import mlflow
import numpy as np
from mlflow.models.signature import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Schema, TensorSpec

from unet_search.core.tags import PREFIX as TAG_PREFIX
from unet_search.core.tags import (
    TAG_METRIC,
    TAG_MODE,
    TAG_VALUE,
)
from unet_search.tracking.registry import Registration, fluent_tracking_uri, promote

__all__ = ["PYFUNC_FILE", "PACKAGE_DIR", "SIGNATURE", "log_and_register"]


PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")


PACKAGE_DIR = Path(__file__).parents[1]  # the whole package, logged as the model's code


# (N, H, W, 3) uint8 in, (N, H, W) uint8 masks out: any batch size, height and width.
SIGNATURE = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
    outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]),
)


def _requirements() -> list[str]:
    from importlib.metadata import version

    pins = [
        "torch",
        "segmentation-models-pytorch",
        "safetensors",
        "numpy",
        "opencv-python-headless",
        "pillow",
        "tifffile",
        "scipy",
        "albumentations",
        "pyyaml",
        "mlflow",
    ]
    return [f"{name}=={version(name).split('+')[0]}" for name in pins]


def log_and_register(
    tracking_uri: str,
    run_id: str,
    model_dir: Path,
    name: str,
    metric: str,
    value: float,
    mode: str,
    tags: dict[str, str],
    test: Mapping[str, float] | None = None,
    veto: str | None = None,
) -> Registration:
    """Log ``model_dir`` as a pyfunc model in run ``run_id``, register it as ``name`` (tagged
    with ``tags``, the metric, its value and mode, and the ``test`` scores as
    ``unet_search.<key>``) and :func:`promote` it (``veto``: why it must not be champion)."""
    client = MlflowClient(tracking_uri)
    # log_model needs the fluent active run; resuming leaves it FINISHED on exit (the caller
    # sets the run's final status afterwards).
    all_tags = {
        **tags,
        **{TAG_PREFIX + key: repr(float(v)) for key, v in (test or {}).items()},
        TAG_METRIC: metric,
        TAG_VALUE: repr(float(value)),
        TAG_MODE: mode,
    }
    with fluent_tracking_uri(tracking_uri):
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(PYFUNC_FILE),
                artifacts={"model_dir": str(model_dir)},
                code_paths=[str(PACKAGE_DIR)],
                signature=SIGNATURE,
                input_example=np.zeros((1, 32, 32, 3), np.uint8),
                pip_requirements=_requirements(),
            )
        version = mlflow.register_model(info.model_uri, name, tags=all_tags)
    return promote(client, name, str(version.version), veto)
