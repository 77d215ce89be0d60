"""Faults and hostile input: a trial that raises, pickles planted next to weights, names that
would be paths. Real Ray, real Optuna, real SQLite MLflow (see tests/README.md)."""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from conftest import LEAN
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from unet_search.core.config import RunConfig
from unet_search.core.errors import ConfigError
from unet_search.core.names import STATE_FILE
from unet_search.data.dataset import load_dataset
from unet_search.data.synthetic import make_synthetic
from unet_search.distributed.checkpoint import resume
from unet_search.distributed.faults import FAULT_ENV
from unet_search.finish.run import run_search
from unet_search.models.build import build_model, save_model_dir
from unet_search.models.card import ModelCard
from unet_search.serve.inference import load_model
from unet_search.space.load import load_space
from unet_search.train.engine import new_training_state
from unet_search.train.sliding import preprocessing_of


class _Planted:
    """A pickle that, when unpickled, creates a marker file (an attacker's payload)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))  # type: ignore[return-value]


def _plant(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(_Planted(marker)))


@pytest.mark.slow
def test_a_trial_that_raises_is_failed_everywhere_and_the_search_goes_on(
    ray_local: None,
    workdir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "data"
    make_synthetic(data, n=12, size=48, seed=4)
    space = tmp_path / "oom.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "name": "oom",
                "fixed": {
                    "patch_size": 32,
                    "patches_per_epoch": 8,
                    "epochs": 2,
                    "depth": 2,
                    "dsb_every": 0,
                    "image_size": 32,
                },
                "params": {"base_filters": {"type": "choice", "values": [4, 8]}},
                "search": {
                    "num_samples": 3,
                    "seed": 3,
                    "scheduler": {"type": "fifo"},
                    "default_trial": False,  # TPE's draws, some of them failing
                    "champion_must_beat_otsu": False,
                    **LEAN,
                },
            }
        )
    )
    # Every trial with base_filters 8 runs out of memory (simulated) after its first epoch.
    monkeypatch.setenv(FAULT_ENV, "epoch=1,raise=oom,when=base_filters:8")
    spec = load_space(space)
    out = run_search(spec, load_dataset(data, spec.base_config().data), data, workdir)

    failed = [t for t in out.trials if t.status == "FAILED"]
    fine = [t for t in out.trials if t.status == "FINISHED"]
    assert len(out.trials) == 3 and failed and fine  # the search went on after the failure
    assert {t.params.get("base_filters") for t in failed} == {8}
    assert all(t.params.get("base_filters") != 8 for t in fine)
    assert all(t.value is None for t in failed)

    by_number = {t.number: t for t in out.study.trials}
    for t in out.trials:
        expected = TrialState.FAIL if t.status == "FAILED" else TrialState.COMPLETE
        assert by_number[t.index].state == expected  # Optuna was told the truth

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    for t in failed:
        run = client.get_run(t.run_id)
        assert run.info.status == "FAILED"
        assert run.data.tags["unet_search.outcome"] == "failed"
        error = run.data.tags["unet_search.error"]
        assert "OutOfMemoryError: simulated out of memory after epoch 1" in error
        trace = client.download_artifacts(t.run_id, "error.txt")
        text = Path(trace).read_text()
        assert 'File "' in text and "in maybe_fail" in text and "\x1b[" not in text
        assert [m.step for m in client.get_metric_history(t.run_id, "val_dice")] == [1]

    # Seed 3 draws base_filters 8 for both sampled trials: every trial but the baseline
    # failed, and the baseline is a reference, not a model to register in their
    # place (it was, before issue 24): nothing is registered.
    assert [t.baseline for t in fine] == [True] and len(failed) == 2
    assert out.best is None and out.registration is None
    assert not client.search_registered_models()
    last = [line for line in capsys.readouterr().out.splitlines() if "] trials: " in line][-1]
    assert f"{len(failed)} failed" in last
    assert out.report is not None and f"{len(failed)} failed" in out.report.read_text()


def _model_dir(tmp_path: Path) -> Path:
    cfg = RunConfig.from_dict({"depth": 2, "base_filters": 4, "patch_size": 32})
    model = build_model(cfg.model, cfg.data.num_classes)
    save_model_dir(
        tmp_path / "model",
        model,
        ModelCard(cfg.model, cfg.data.num_classes, preprocessing_of(cfg)),
    )
    return tmp_path / "model"


def test_a_pickle_planted_next_to_the_weights_is_never_run(tmp_path: Path) -> None:
    directory = _model_dir(tmp_path)
    marker = tmp_path / "pwned"
    for name in ("model.pkl", "python_model.pkl", "data.pkl", "model.pt", "state.pt"):
        _plant(directory / name, marker)
    predictor = load_model(directory)
    masks = predictor.predict([torch.zeros(40, 30, 3, dtype=torch.uint8).numpy()])
    assert masks[0].shape == (40, 30)
    assert not marker.exists()


def test_weights_replaced_by_a_pickle_fail_without_running_it(tmp_path: Path) -> None:
    directory = _model_dir(tmp_path)
    marker = tmp_path / "pwned"
    _plant(directory / "model.safetensors", marker)
    with pytest.raises(Exception) as err:
        load_model(directory)
    assert "pickle" not in type(err.value).__name__.lower()
    assert not marker.exists()


def test_a_checkpoint_carrying_a_pickle_is_refused_on_resume(tmp_path: Path) -> None:
    cfg = RunConfig.from_dict({"depth": 2, "base_filters": 4, "patch_size": 32})
    model = build_model(cfg.model, cfg.data.num_classes)
    state = new_training_state(model, cfg, 4, torch.device("cpu"))
    checkpoint, marker = tmp_path / "ckpt", tmp_path / "pwned"
    checkpoint.mkdir()
    _plant(checkpoint / STATE_FILE, marker)

    @contextlib.contextmanager
    def checkpoint_dir() -> Iterator[str | None]:
        yield str(checkpoint)

    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        resume(state, checkpoint_dir)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "-rf", "spaced name", "é", ""])
def test_a_search_name_that_is_a_path_is_refused_before_anything_is_written(
    name: str, tmp_path: Path, bare_workdir: Path
) -> None:
    from unet_search.cli.app import main

    space = tmp_path / "s.yaml"
    raw = {"name": "s", "params": {"lr": {"type": "choice", "values": [0.01, 0.001]}}}
    space.write_text(yaml.safe_dump(raw))
    args = ["search", "--space", str(space), "--data", str(tmp_path / "none"), f"--name={name}"]
    assert main(args) == 1
    assert not bare_workdir.exists() and not (tmp_path / "escape").exists()
    with pytest.raises(ConfigError, match="it names folders and runs"):
        run_search(load_space(space), None, tmp_path, bare_workdir, name=name)  # type: ignore[arg-type]
    assert not bare_workdir.exists()
    for command in ("report", "resume"):
        assert main([command, "--", name]) == 1
    assert not bare_workdir.exists()
