"""MLflow's side of a logged model: a pyfunc (models-from-code) logged to a run, or saved to a
folder, and registered. What the model is (its code file, weights, requirements, tensor
shapes) is :mod:`unet_search.serve.packaging`'s: this module only makes the MLflow calls."""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.models import Model
from mlflow.models.signature import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

from unet_search.tracking.registry import Registration, fluent_tracking_uri, promote

__all__ = ["log_and_register_pyfunc", "PyfuncModel", "save_pyfunc"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PyfuncModel:
    """A pyfunc model to log: ``python_model`` (the models-from-code file), its
    ``artifacts``, the ``code_paths`` shipped with it, its pinned ``requirements``, and its
    input and output tensors (dtype, shape; -1 for any size: MLflow 3 fixes H and W to the
    input example's otherwise) and its inference parameters (name, MLflow type, default: a
    parameter outside the signature is dropped by MLflow with a warning). ``folders`` are
    copied into the model folder as they are (name -> source); ``onnx``, the model-relative
    path of an ONNX file among them, adds MLflow's ``onnx`` flavor, so that
    ``mlflow.onnx.load_model`` reads it."""

    python_model: Path
    artifacts: Mapping[str, Path]
    code_paths: tuple[Path, ...]
    requirements: tuple[str, ...]
    inputs: tuple[str, tuple[int, ...]]
    outputs: tuple[str, tuple[int, ...]]
    params: tuple[tuple[str, str, object], ...] = ()
    folders: tuple[tuple[str, Path], ...] = ()
    onnx: str | None = None

    @property
    def signature(self) -> ModelSignature:
        (i_dtype, i_shape), (o_dtype, o_shape) = self.inputs, self.outputs
        inputs = Schema([TensorSpec(np.dtype(i_dtype), i_shape)])
        outputs = Schema([TensorSpec(np.dtype(o_dtype), o_shape)])
        if not self.params:
            return ModelSignature(inputs, outputs)
        params = [ParamSpec(name, kind, default) for name, kind, default in self.params]
        return ModelSignature(inputs, outputs, params=ParamSchema(params))

    @property
    def example(self) -> np.ndarray:
        """A small input: 32 px wherever the shape says any size."""
        dtype, shape = self.inputs
        size = [1 if i == 0 else (32 if s == -1 else s) for i, s in enumerate(shape)]
        return np.zeros(size, dtype)

    def _kwargs(self) -> dict[str, Any]:
        return {
            "python_model": str(self.python_model),
            "artifacts": {k: str(v) for k, v in self.artifacts.items()},
            "code_paths": [str(p) for p in self.code_paths],
            "signature": self.signature,
            "pip_requirements": list(self.requirements),
        }


class _PyfuncWithFolders:
    """The flavor module ``Model.log`` saves with: ``mlflow.pyfunc``'s ``save_model``, then
    the model's folders copied in and, with an ONNX file, the ``onnx`` flavor added."""

    __name__ = "mlflow.pyfunc"

    def __init__(self, model: PyfuncModel) -> None:
        self.model = model

    def save_model(self, path: str, mlflow_model: Model | None = None, **kwargs: Any) -> None:
        mlflow_model = mlflow_model or Model()
        mlflow.pyfunc.save_model(path, mlflow_model=mlflow_model, **kwargs)
        for name, source in self.model.folders:
            shutil.copytree(source, Path(path) / name)
        if self.model.onnx is not None:
            import onnx

            mlflow_model.add_flavor(
                "onnx",
                onnx_version=onnx.__version__,
                data=self.model.onnx,
                providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
                code=None,
            )
            mlflow_model.save(str(Path(path) / "MLmodel"))


def save_pyfunc(model: PyfuncModel, path: Path) -> None:
    """``model`` saved as an MLflow model folder at ``path`` (no run, no registry)."""
    _PyfuncWithFolders(model).save_model(str(path), **model._kwargs())


def log_and_register_pyfunc(
    tracking_uri: str,
    run_id: str,
    model: PyfuncModel,
    name: str,
    tags: Mapping[str, str],
    veto: str | None = None,
) -> Registration:
    """Log ``model`` as artifact ``model`` of run ``run_id``, register it as ``name`` with
    ``tags`` and :func:`promote` it (``veto``: why it must not be champion)."""
    # log_model needs the fluent active run; resuming leaves it FINISHED on exit (the caller
    # sets the run's final status afterwards).
    said = io.StringIO()  # MLflow's "Successfully registered model ..." lines: the log's
    with fluent_tracking_uri(tracking_uri), contextlib.redirect_stderr(said):
        with mlflow.start_run(run_id=run_id):
            info = Model.log(
                artifact_path=None,
                name="model",
                flavor=_PyfuncWithFolders(model),
                flavor_name="pyfunc.ModelFromCode",  # as mlflow.pyfunc.log_model names it
                input_example=model.example,
                **model._kwargs(),
            )
        version = mlflow.register_model(info.model_uri, name, tags=dict(tags))
    for line in said.getvalue().splitlines():
        _log.info("MLflow: %s", line)
    return promote(MlflowClient(tracking_uri), name, str(version.version), veto)
