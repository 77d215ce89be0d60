"""unet-search: Ray-distributed hyperparameter and variant search for UNet segmentation."""

from __future__ import annotations

import os

# Never reach a hub or an update server at run time: set before smp/timm/albumentations load.
# Processes started by Ray get the same variables through the runtime env (see
# distributed/trainer.py, init_ray).
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
# What every Ray process of ours gets (the driver's runtime env, a submitted job's env).
RAY_ENV = {
    **OFFLINE_ENV,
    "RAY_TRAIN_V2_ENABLED": "1",
    # Ray Train's controller polls its workers every 2 s by default, so every result and the
    # end of every run reach Tune up to 2 s late: 0.5 s cuts ~2 s off each TorchTrainer trial
    # (bench/trial_cost.py). A value in the environment wins.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get(
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"
    ),
}
for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)

# Quiet by default: no per-file progress bars when models and artifacts are downloaded.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# A search saves Tune's state at every trial checkpoint (every epoch: what `resume` needs),
# which Tune warns about, in every search's log, whenever two come within 5 s. Deliberate.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

__version__ = "0.1.0"
__all__ = ["OFFLINE_ENV", "RAY_ENV", "__version__", "load_model"]


def load_model(  # type: ignore[no-untyped-def]
    uri: str, device: str = "cpu", tracking_uri: str | None = None
):
    """``unet_search.load_model("models:/NAME@champion").predict(images)`` -> masks at the
    images' original sizes. See :func:`unet_search.serve.inference.load_model`."""
    from unet_search.serve.inference import load_model as _load

    return _load(uri, device, tracking_uri)
