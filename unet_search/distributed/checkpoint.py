"""A worker's checkpoints and the weights it starts from: the training state saved with the
MLflow logging not yet sent and what the trial measured before training; read back when a
trial restarts; and a final fit's start, from a run's kept model or a trial's checkpoint."""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray.train
import torch
from safetensors.torch import load_file

from unet_search.core.names import (
    BEST_MODEL_DIR,
    MEASURED_FILE,
    MODEL_FILE,
    STATE_FILE,
    UNSENT_FILE,
)
from unet_search.tracking.client import download_artifacts
from unet_search.tracking.outage import Outbox, with_patience
from unet_search.train.engine import TrainingState

__all__ = ["resume", "save_checkpoint", "warm_start", "warm_start_from_checkpoint"]


def save_checkpoint(
    state: TrainingState, outbox: Outbox | None = None, measured: dict[str, float] | None = None
) -> str:
    """The training state, the MLflow logging not yet sent (a restarted trial sends it) and
    what the trial measured before training, in a new temporary folder."""
    directory = tempfile.mkdtemp(prefix="unet-search-ckpt-")
    torch.save(state.state_dict(), Path(directory) / STATE_FILE)
    unsent = outbox.pending() if outbox is not None else []
    if unsent:
        (Path(directory) / UNSENT_FILE).write_text(json.dumps(unsent), "utf-8")
    if measured:
        (Path(directory) / MEASURED_FILE).write_text(json.dumps(measured), "utf-8")
    return directory


def resume(
    state: TrainingState,
    checkpoint_dir: Callable[[], contextlib.AbstractContextManager[str | None]],
    outbox: Outbox | None = None,
) -> dict[str, float]:
    """Restore the checkpoint a restarted trial has (``checkpoint_dir()``: its folder, or
    None), if any; returns what it measured before its first epoch (empty without)."""
    measured: dict[str, float] = {}
    with checkpoint_dir() as directory:
        if directory is None:
            return measured
        saved = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
        unsent = Path(directory) / UNSENT_FILE
        if outbox is not None and unsent.is_file():
            outbox.restore(json.loads(unsent.read_text("utf-8")))
        if (Path(directory) / MEASURED_FILE).is_file():
            found = json.loads((Path(directory) / MEASURED_FILE).read_text("utf-8"))
            measured = {str(k): float(v) for k, v in found.items()}
    state.load_state_dict(saved)
    return measured


def warm_start(model: torch.nn.Module, uri: str, run_id: str, patience_s: float) -> None:
    """``model`` takes the kept weights (``best_model``) of run ``run_id``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = with_patience(
            uri,
            f"run {run_id}: its kept weights",
            lambda: download_artifacts(uri, run_id, BEST_MODEL_DIR, Path(tmp)),
            patience_s,
        )
        model.load_state_dict(load_file(str(path / MODEL_FILE)))


def warm_start_from_checkpoint(
    model: torch.nn.Module, path: str, go_on: bool = False
) -> dict[str, Any] | None:
    """``model`` takes the kept weights of a trial's checkpoint (``path``: a folder, or a
    URI of the search's storage): its best epoch's, else its last epoch's. ``go_on``: its
    last epoch's, and the optimizer's state there is returned (else None)."""
    with ray.train.Checkpoint(path).as_directory() as directory:
        saved = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
    if go_on:
        model.load_state_dict(saved["model"])
        return dict(saved["optimizer"])
    model.load_state_dict(saved["best_state"] or saved["model"])
    return None
