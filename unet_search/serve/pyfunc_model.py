"""MLflow models-from-code entry point: the pyfunc wrapper of a unet-search model.

MLflow saves this file as code (no cloudpickle); loading runs it, which builds the model
from ``model_config.json`` and loads ``model.safetensors``. ``predict`` takes an
(N, H, W, C) array of the type and channels the model was trained on (8-bit RGB, 16-bit
grey, ...: the logged signature; any N, H, W) and returns the (N, H, W) uint8
masks at the input size. Images of different sizes are separate calls (or
``unet_search.load_model``, which takes a list). With the parameter ``instances`` true
(``params={"instances": True}``, or ``"params"`` in a served request) it returns (N, H, W)
int32 instance labels instead, 0 the background (binary models).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel, PythonModelContext

from unet_search.serve.inference import Predictor, find_model_dir


class UNetSearchPyfunc(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        self.predictor = Predictor.from_dir(find_model_dir(Path(context.artifacts["model_dir"])))

    # An ndarray hint: MLflow infers no schema from it (the explicit signature logged with
    # the model is the contract) and no longer warns at each log_model that predict is
    # untyped. A pandas frame (a client's JSON read as records) is still taken.
    def predict(
        self,
        context: PythonModelContext | None,
        model_input: np.ndarray,
        params: dict[str, Any] | None = None,
    ) -> np.ndarray:
        if hasattr(model_input, "to_numpy") and not isinstance(model_input, np.ndarray):
            model_input = model_input.to_numpy()
        instances = bool((params or {}).get("instances", False))
        out = self.predictor.predict(model_input, instances=instances)
        return np.stack(out) if out else np.zeros((0, 0, 0), np.int32 if instances else np.uint8)


mlflow.models.set_model(UNetSearchPyfunc())
