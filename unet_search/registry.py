"""MLflow Model Registry: log a trial's best model as a pyfunc, register it, gate `champion`.

The logged model holds ``model.safetensors`` + ``model_config.json`` (weights and build
config, incl. preprocessing) and is served through ``pyfunc_model.py`` (models-from-code, no
pickle), with the ``unet_search`` package shipped as code. The alias ``champion`` moves to a
new version only when it beats the current champion's metric on the same dataset
fingerprint; otherwise the new version gets ``challenger``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Schema, TensorSpec

from unet_search.config import UserError

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "Champion",
    "Registration",
    "champion",
    "download_model",
    "log_and_register",
]

CHAMPION, CHALLENGER = "champion", "challenger"
TAG_METRIC, TAG_VALUE, TAG_MODE = (
    "unet_search.metric",
    "unet_search.metric_value",
    "unet_search.mode",
)
TAG_FINGERPRINT = "unet_search.data_fingerprint"
PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
PACKAGE_DIR = Path(__file__).parent
# (N, H, W, 3) uint8 in, (N, H, W) uint8 masks out: any batch size, height and width.
SIGNATURE = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
    outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]),
)


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    alias: str  # champion | challenger
    previous_version: str | None
    previous_value: float | None
    reason: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


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


def _beats(new: float, old: float, mode: str) -> bool:
    return new > old if mode == "max" else new < old


def _decide(
    client: MlflowClient, name: str, value: float, metric: str, mode: str, fingerprint: str
) -> tuple[str, str | None, float | None, str]:
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return CHAMPION, None, None, "no champion yet"
    old_fp = current.tags.get(TAG_FINGERPRINT)
    old_value = float(current.tags.get(TAG_VALUE, "nan"))
    old_metric, old_mode = current.tags.get(TAG_METRIC), current.tags.get(TAG_MODE)
    if (old_metric, old_mode) != (metric, mode):
        return (
            CHALLENGER,
            str(current.version),
            old_value,
            f"champion v{current.version} was chosen by {old_metric} ({old_mode}), this "
            f"model by {metric} ({mode}); not comparable",
        )
    if old_fp != fingerprint:
        return (
            CHALLENGER,
            str(current.version),
            old_value,
            f"champion v{current.version} was trained on other data "
            f"(fingerprint {old_fp} != {fingerprint}); not comparable",
        )
    if _beats(value, old_value, mode):
        return (
            CHAMPION,
            str(current.version),
            old_value,
            (f"{value:.4f} beats champion v{current.version}'s {old_value:.4f}"),
        )
    return (
        CHALLENGER,
        str(current.version),
        old_value,
        (f"{value:.4f} does not beat champion v{current.version}'s {old_value:.4f}"),
    )


@contextlib.contextmanager
def _fluent_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API pointed at ``uri``, and the process's setting restored after:
    ``mlflow.set_tracking_uri`` also exports MLFLOW_TRACKING_URI, so without the restore every
    later search or run in this process would log to this store."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # type: ignore[arg-type]  # None: unset again


def log_and_register(
    tracking_uri: str,
    run_id: str,
    model_dir: Path,
    name: str,
    metric: str,
    value: float,
    mode: str,
    tags: dict[str, str],
) -> Registration:
    """Log ``model_dir`` as a pyfunc model in run ``run_id``, register it as ``name`` and
    move ``champion`` only if it beats the current one on the same data and split
    (fingerprint) by the same ``metric`` and ``mode``."""
    client = MlflowClient(tracking_uri)
    # log_model needs the fluent active run; resuming leaves it FINISHED on exit (the caller
    # sets the run's final status afterwards).
    all_tags = {**tags, TAG_METRIC: metric, TAG_VALUE: repr(float(value)), TAG_MODE: mode}
    with _fluent_tracking_uri(tracking_uri):
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
    alias, prev, prev_value, reason = _decide(
        client, name, value, metric, mode, tags.get(TAG_FINGERPRINT, "")
    )
    client.set_registered_model_alias(name, alias, version.version)
    return Registration(name, str(version.version), alias, prev, prev_value, reason)


@dataclass(frozen=True)
class Champion:
    """The version the ``champion`` alias points at, and where it came from."""

    name: str
    version: str
    value: float | None
    metric: str
    search_id: str
    trial_run_id: str


def champion(tracking_uri: str, name: str) -> Champion | None:
    """The current champion of registered model ``name``, or None (no such model/alias)."""
    try:
        mv = MlflowClient(tracking_uri).get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    tags = mv.tags
    value = tags.get(TAG_VALUE)
    return Champion(
        name,
        str(mv.version),
        None if value is None else float(value),
        tags.get(TAG_METRIC, ""),
        tags.get("unet_search.search_id", ""),
        tags.get("unet_search.run_id", ""),
    )


def download_model(uri: str, tracking_uri: str | None = None) -> Path:
    """Download a model URI (``models:/`` and ``runs:/`` resolved in ``tracking_uri``, used as
    the registry too) to a temporary folder; a clear error if it does not resolve."""
    target = Path(tempfile.mkdtemp(prefix="unet-search-model-"))
    # MLflow resolves a models:/ URI in the process-wide registry only (its registry_uri
    # argument does not reach the lookup): set it for the call, then restore it.
    store = (
        contextlib.nullcontext() if tracking_uri is None else _fluent_tracking_uri(tracking_uri)
    )
    try:
        with store:
            return Path(
                mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target))
            )
    except MlflowException as err:
        raise UserError(f"{uri}: cannot be loaded ({err.message})") from None
