"""Ray Train in-process with one Ray per session: resource checks and what the workers import
(a worker killed mid-run: tests/test_cli.py, the 2-worker `train`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import fresh_python

from unet_search.core.config import RunConfig
from unet_search.data.dataset import load_dataset
from unet_search.distributed.trainer import ResourceError, run_training
from unet_search.train.sliding import preprocessing_of


def _cfg(**leaves: object) -> RunConfig:
    base = {
        "patch_size": 32,
        "patches_per_epoch": 8,
        "depth": 2,
        "base_filters": 4,
        "val_fraction": 0.25,
        "dsb_every": 0,
        "num_sample_images": 0,
    }
    return RunConfig.from_dict({**base, **leaves})


def test_preprocessing_records_what_inference_needs() -> None:
    pre = preprocessing_of(_cfg(threshold=0.4))
    assert (pre["input_mode"], pre["patch_size"], pre["scale"]) == ("patch", [32, 32], 1.0)
    assert (pre["tile_overlap"], pre["tta"], pre["threshold"]) == (0.5, "none", 0.4)
    assert pre["normalization"] == "unit" and pre["mean"] == [0.0, 0.0, 0.0]


@pytest.mark.slow
def test_the_training_code_imports_mlflow_only_where_it_logs() -> None:
    """Of a trial's Ray Train workers only rank 0 logs: the others import the training code
    (unet_search.distributed) and must not pay MLflow's import (~0.7 s each) as the trial
    starts. Nor does a worker import smp (timm, torchvision: 2.6 s) before it builds an smp
    model or uses smp's focal loss."""
    code = (
        "import json, sys\n"
        "def mlflow(): return sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow')\n"
        "import unet_search.distributed.recipe, unet_search.distributed.trainer\n"
        "assert not {'segmentation_models_pytorch', 'timm'} & set(sys.modules)\n"
        "before = mlflow()\n"
        "from unet_search.tracking.client import end_run\n"
        "try:\n"
        "    end_run('sqlite:///unused.db', 'no-run', 'NOT_A_STATUS')\n"
        "except Exception as err:\n"
        "    print(json.dumps([before, len(mlflow()), str(err)]))\n"
    )
    before, after, error = fresh_python(code)
    assert before == []
    # The first call that needs MLflow imports it (here its RunStatus refuses the status).
    assert after > 10 and "NOT_A_STATUS" in error


def test_impossible_resources_fail_at_once(
    ray_local: None, synth_dir: Path, workdir: Path
) -> None:
    cfg = _cfg(num_workers=8)
    arrays = load_dataset(synth_dir, cfg.data)
    with pytest.raises(ResourceError, match="8 CPUs, but the Ray cluster has 2"):
        run_training(cfg, arrays, synth_dir, workdir, "res")
    assert not (workdir / "mlartifacts").exists()
