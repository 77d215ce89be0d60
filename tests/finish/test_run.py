"""Real searches: Ray Tune + Optuna + ASHA on a session Ray, runs in a real SQLite MLflow."""

from __future__ import annotations

import contextlib
import html
import io
import itertools
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import LEAN, TINY, asha_space, store_in
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from PIL import Image

from unet_search.core.sections import DataConfig
from unet_search.core.tags import TAG_BASELINE, TAG_KIND, TAG_SEARCH_ID, TAG_TRIAL_ID
from unet_search.data.dataset import load_dataset
from unet_search.data.split import split_indices
from unet_search.data.synthetic import make_synthetic
from unet_search.finish.run import SearchResult, run_search
from unet_search.search.incumbent import gain_at_equal_epochs
from unet_search.serve.inference import load_model
from unet_search.space.load import load_space
from unet_search.space.settings import INCUMBENT_MARGIN
from unet_search.tracking.read import search_trials
from unet_search.train.engine import val_indices
from unet_search.train.metrics import dice_iou_per_image, instance_scores

pytestmark = pytest.mark.slow
VARIANT_KEYS = ("arch", "block", "pooling", "bottleneck", "attention")
# quick.yaml: tests/test_readme.py runs it (shrunk) as the README's tour does.
SPACES = sorted(
    p
    for p in Path(__file__).parents[2].joinpath("search_spaces").glob("*.yaml")
    if p.stem != "quick"
)


@pytest.fixture(scope="module")
def search_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("search") / "data"
    make_synthetic(out, n=16, size=64, seed=3)
    return out


def _clock(line: str) -> int:
    """The seconds a progress line's ``[mm:ss]`` says."""
    minutes, seconds = line.split("[", 1)[1].split("]", 1)[0].split(":")
    return 60 * int(minutes) + int(seconds)


def _search(
    tmp_path: Path,
    data: Path,
    workdir: Path,
    raw: dict,
    overrides: list[str] = (),
    **kwargs: object,
) -> SearchResult:
    path = tmp_path / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    spec = load_space(path, overrides)
    arrays = load_dataset(data, spec.base_config().data, workdir / "cache")
    return run_search(spec, arrays, data, workdir, **kwargs)


def _client(workdir: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")


def _assert_instance_tags_are_predicts(
    version: Any, model: str, images: Path, arrays: Any, out: Path
) -> None:
    """The version's ``test_dsb_score`` and ``test_ap50`` tags are the scores of the label
    images ``predict --output-kind instances`` writes for ``images`` (the test split)."""
    from unet_search.cli.app import main

    kind = ["--output", str(out), "--output-kind", "instances"]
    assert main(["predict", "--model", model, "--input", str(images), *kind]) == 0
    names = sorted(p.stem for p in images.iterdir())
    scores = [
        instance_scores(
            np.asarray(Image.open(out / f"{name}.png")).astype(np.int64),
            arrays.instances(arrays.names.index(name)),
        )
        for name in names
    ]
    for k, key in enumerate(("test_dsb_score", "test_ap50")):
        assert float(version.tags[f"unet_search.{key}"]) == pytest.approx(
            float(np.mean([s[k] for s in scores])), abs=1e-3
        )


E2E_SPACE = {
    "name": "e2e",
    "model_name": "unet-e2e",
    "fixed": {
        **TINY,
        "epochs": 2,
        "dsb_every": 2,
        "depth": 2,
        "test_fraction": 0.25,
        # the variants (the residual block and ASPP also train under DDP in test_cli.py's
        # killed-worker run); the baseline stays plain
        "block": "residual",
        "bottleneck": "aspp",
        "attention": "gate",
    },
    "params": {
        "base_filters": {"type": "choice", "values": [4, 8]},
        "lr": {"type": "loguniform", "low": 1.0e-3, "high": 1.0e-2},  # no two trials tie
    },
    "search": {
        "num_samples": 3,
        "seed": 1,
        "scheduler": {"type": "fifo"},
        # sampled, and registered as champion whatever Otsu scores
        "default_trial": False,
        "champion_must_beat_otsu": False,
        "latency_image": 64,  # ONNX on (this test's), latency on a small image
    },
}


@dataclass(frozen=True)
class EndToEnd:
    """One whole search, run once for the end-to-end tests below: what it returned, its
    work dir (``UNET_SEARCH_HOME``), a folder for the tests' files, what it printed, its
    data as the search split it, and the held-out test split's images as files."""

    out: SearchResult
    workdir: Path
    tmp: Path
    shown: str
    arrays: Any
    cfg: Any
    split: dict[str, list[str]]
    images: Path

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.workdir / 'mlflow.db'}"


@pytest.fixture(scope="module")
def e2e(
    ray_local: None,
    search_data: Path,
    empty_store: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> EndToEnd:
    tmp = tmp_path_factory.mktemp("e2e")
    home = tmp / "home"
    store_in(home, empty_store)
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as env, contextlib.redirect_stdout(printed):
        env.setenv("UNET_SEARCH_HOME", str(home))
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        out = _search(tmp, search_data, home, E2E_SPACE)
    cfg = load_space(tmp / "e2e.yaml").base_config()
    arrays = load_dataset(search_data, cfg.data)
    local = _client(home).download_artifacts(out.parent_run_id, "split.json", str(tmp))
    split = json.loads(Path(local).read_text())
    images = tmp / "test_images"
    images.mkdir()
    for name in split["test"]:
        (images / f"{name}.png").write_bytes(
            (search_data / name / "images" / f"{name}.png").read_bytes()
        )
    return EndToEnd(out, home, tmp, printed.getvalue(), arrays, cfg, split, images)


@pytest.fixture()
def at_home(e2e: EndToEnd, monkeypatch: pytest.MonkeyPatch) -> EndToEnd:
    """The end-to-end search, with this test's commands pointed at its work dir."""
    monkeypatch.setenv("UNET_SEARCH_HOME", str(e2e.workdir))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return e2e


def _predict(e2e: EndToEnd, out: Path, *more: str) -> None:
    """``unet-search predict`` of the champion on the held-out test images into ``out``."""
    from unet_search.cli.app import main

    model = "models:/unet-e2e@champion"
    args = ["predict", "--model", model, "--input", str(e2e.images), "--output", str(out)]
    assert main([*args, *more]) == 0


def _dice(mask: np.ndarray, truth: np.ndarray) -> float:
    pred, want = torch.from_numpy(mask[None]).long(), torch.from_numpy(truth[None]).long()
    return float(dice_iou_per_image(pred, want, 1)[0][0])


def test_end_to_end_a_search_logs_a_parent_run_and_a_child_run_per_trial(
    e2e: EndToEnd, search_data: Path
) -> None:
    out = e2e.out
    assert out.search_id == "e2e-1"
    assert [t.status for t in out.trials] == ["FINISHED"] * 3
    assert [t.index for t in out.trials] == [0, 1, 2]
    assert out.trials[0].baseline and out.baseline is out.trials[0]
    client = _client(e2e.workdir)
    parents = client.search_runs([out.experiment_id], f"tags.`{TAG_KIND}` = 'search'")
    assert [p.info.run_id for p in parents] == [out.parent_run_id]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["num_trials"] == 3
    assert parent.data.metrics["best_val_dice"] == pytest.approx(out.best.value)
    assert "baseline_val_dice" in parent.data.metrics
    assert {a.path for a in client.list_artifacts(out.parent_run_id)} >= {
        "space.yaml",
        "summary.csv",
        "summary.json",
    }
    children = client.search_runs(
        [out.experiment_id], f"tags.`{TAG_SEARCH_ID}` = 'e2e-1' and tags.`{TAG_TRIAL_ID}` != ''"
    )
    assert len(children) == 3
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {out.parent_run_id}
    assert {c.info.status for c in children} == {"FINISHED"}
    names = sorted(c.info.run_name for c in children)
    assert names[0] == "t000 baseline seed_keras"
    assert names[1].startswith("t001 unet scratch d2") and " residual+aspp+gate" in names[1]
    for child in children:
        baseline = child.info.run_name == names[0]
        variant = [child.data.params[k] for k in ("block", "bottleneck", "attention")]
        assert variant == (
            ["plain", "plain", "none"] if baseline else ["residual", "aspp", "gate"]
        )
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_dice")]
        assert sorted(steps) == [1, 2]
        assert child.data.tags[TAG_TRIAL_ID]
    study_trials = out.study.trials
    assert [t.state for t in study_trials] == [TrialState.COMPLETE] * 3
    assert study_trials[0].user_attrs[TAG_BASELINE] and study_trials[0].params == {}
    assert search_trials(e2e.uri, "e2e-1")[1][0].value == pytest.approx(out.best.value)


def test_end_to_end_the_champion_scores_its_number_through_load_model(
    e2e: EndToEnd, search_data: Path
) -> None:
    """The number on the champion is the number you get: its validation images predicted
    through load_model score the registered value."""
    out, client = e2e.out, _client(e2e.workdir)
    reg = out.registration
    assert reg is not None and (reg.name, reg.version, reg.alias) == ("unet-e2e", "1", "champion")
    version = client.get_model_version_by_alias("unet-e2e", "champion")
    assert (
        version.tags["unet_search.data_fingerprint"]
        == load_dataset(search_data, DataConfig(val_fraction=0.25, test_fraction=0.25)).fingerprint
    )
    assert version.tags["unet_search.trial_id"] == out.best.trial_id
    assert version.run_id == out.parent_run_id  # the model is logged in the search's run
    assert float(version.tags["unet_search.metric_value"]) == pytest.approx(out.best.value)
    champion = load_model("models:/unet-e2e@champion", tracking_uri=e2e.uri)
    indices = [int(i) for i in val_indices(e2e.cfg, e2e.arrays)]
    masks = champion.predict([e2e.arrays.image(i) for i in indices])
    dices = [_dice(m, e2e.arrays.mask(i)) for m, i in zip(masks, indices, strict=True)]
    assert float(np.mean(dices)) == pytest.approx(out.best.value, abs=1e-3)
    assert e2e.split["val"] == [e2e.arrays.names[i] for i in indices]


def test_end_to_end_the_held_out_split_is_scored_once_as_predict_segments_it(
    at_home: EndToEnd,
) -> None:
    """The held-out test split: named in split.json, seen by no trial, scored once at the
    end; the version carries the Dice `unet-search predict` gives on those images."""
    e2e, arrays = at_home, at_home.arrays
    client = _client(e2e.workdir)
    version = client.get_model_version_by_alias("unet-e2e", "champion")
    parent = client.get_run(e2e.out.parent_run_id)
    split = e2e.split
    assert [len(split[part]) for part in ("train", "val", "test")] == [8, 4, 4]
    assert sorted([*split["train"], *split["val"], *split["test"]]) == sorted(arrays.names)
    test_dice = float(version.tags["unet_search.test_dice"])
    assert parent.data.metrics["test_dice"] == pytest.approx(test_dice)
    assert {"test_iou", "test_dsb_score", "otsu_test_dice"} <= set(parent.data.metrics)
    assert float(version.tags["unet_search.test_dsb_score"]) == pytest.approx(
        parent.data.metrics["test_dsb_score"]
    )
    _predict(e2e, e2e.tmp / "test_masks")
    predicted = [
        _dice(
            np.asarray(Image.open(e2e.tmp / "test_masks" / f"{name}.png")) > 0,
            arrays.mask(arrays.names.index(name)),
        )
        for name in split["test"]
    ]
    assert float(np.mean(predicted)) == pytest.approx(test_dice, abs=1e-3)


def test_end_to_end_the_onnx_export_predicts_as_pytorch(at_home: EndToEnd) -> None:
    """Its ONNX export (search.onnx, on by default), checked at registration on a validation
    image: MLflow's onnx flavor reads it, and onnxruntime predicts the test images as
    PyTorch does (the ASPP bottleneck: a graph of the model's tile)."""
    import mlflow.onnx

    e2e = at_home
    client = _client(e2e.workdir)
    version = client.get_model_version_by_alias("unet-e2e", "champion")
    assert version.tags["unet_search.onnx"] == "true"
    assert 0.0 <= float(version.tags["unet_search.onnx_max_logit_diff"]) < 1e-3
    where = client.get_model_version_download_uri("unet-e2e", version.version)
    proto = mlflow.onnx.load_model(where)
    assert {o.domain: o.version for o in proto.opset_import}[""] >= 17
    assert [i.name for i in proto.graph.input] == ["image"]
    _predict(e2e, e2e.tmp / "torch_masks")
    _predict(e2e, e2e.tmp / "onnx_masks", "--runtime", "onnx")
    for name in e2e.split["test"]:
        torch_mask = np.asarray(Image.open(e2e.tmp / "torch_masks" / f"{name}.png"))
        onnx_mask = np.asarray(Image.open(e2e.tmp / "onnx_masks" / f"{name}.png"))
        assert (torch_mask == onnx_mask).mean() >= 0.999, name


def test_end_to_end_the_registered_version_carries_a_bioimageio_package(
    at_home: EndToEnd,
) -> None:
    """The champion's BioImage.IO package, tested at registration, beside onnx/: its test
    tensors from a validation image, the search's provenance equal to the version's tags."""
    import mlflow
    from bioimageio.spec import load_model_description

    e2e = at_home
    client = _client(e2e.workdir)
    version = client.get_model_version_by_alias("unet-e2e", "champion")
    assert version.tags["unet_search.bioimageio"] == "true"
    where = client.get_model_version_download_uri("unet-e2e", version.version)
    local = Path(mlflow.artifacts.download_artifacts(where, dst_path=str(e2e.tmp / "pkg")))
    descr = load_model_description(local / "bioimageio" / "rdf.yaml", perform_io_checks=False)
    provenance = descr.config.model_dump()["unet_search"]
    assert provenance["run_id"] == version.tags["unet_search.run_id"]
    assert provenance["data_fingerprint"] == version.tags["unet_search.data_fingerprint"]
    for key, value in provenance["test"].items():
        assert value == pytest.approx(float(version.tags[f"unet_search.{key}"]), abs=1e-6)
    assert str(descr.license) == "CC-BY-4.0" and "test_dice" in descr.description
    val_image = e2e.arrays.image(int(split_indices(len(e2e.arrays), e2e.cfg.data).val[0]))
    registered = np.load(local / "bioimageio" / "test_input.npy")[0].transpose(1, 2, 0)
    (h, w), (big_h, big_w) = registered.shape[:2], val_image.shape[:2]
    assert h <= big_h and w <= big_w  # one tile, cut from the middle of a validation image
    top, left = (big_h - h) // 2, (big_w - w) // 2
    assert np.array_equal(registered, val_image[top : top + h, left : left + w])
    # `export --format bioimageio` of a registered model: the README's tour runs it


def test_end_to_end_the_instance_scores_are_those_predict_writes(at_home: EndToEnd) -> None:
    """The DSB score and AP50 on the version are those of the label images `predict
    --output-kind instances` writes, decoded as the best run chose on its validation images
    (logged with it)."""
    e2e = at_home
    client = _client(e2e.workdir)
    version = client.get_model_version_by_alias("unet-e2e", "champion")
    model = "models:/unet-e2e@champion"
    objects = e2e.tmp / "objects"
    _assert_instance_tags_are_predicts(version, model, e2e.images, e2e.arrays, objects)
    best_run = client.get_run(version.tags["unet_search.run_id"]).data.metrics
    decoding = load_model(model, tracking_uri=e2e.uri).pre.decoding
    assert best_run["decoding_min_size"] == decoding.min_size
    assert best_run["decoding_marker"] == decoding.marker
    assert 0.0 <= best_run["decoded_val_dsb_score"] <= best_run["decoded_val_ap50"] <= 1.0


def test_end_to_end_the_search_says_little_and_best_and_the_report_show_it(
    at_home: EndToEnd, capsys: pytest.CaptureFixture[str]
) -> None:
    """The live view: concise lines, no Tune tables; `best` and the report show the
    held-out score as the version holds it."""
    from unet_search.cli.app import main

    e2e, out = at_home, at_home.out
    shown, workdir = e2e.shown, e2e.workdir
    assert "Trial status" not in shown and "trial_main_" not in shown
    assert f"search e2e-1: Ray's own log is {workdir / 'logs' / 'e2e-1.log'}" in shown
    progress = [line for line in shown.splitlines() if "] trials: " in line]
    assert (
        progress[-1]
        .split("] ", 1)[1]
        .startswith("trials: 0 running, 3 finished, 0 stopped early, 0 failed | best val_dice ")
    )
    assert f"({out.best.name})" in progress[-1]
    # Not a terminal: a line only when something changed, none alike in a row but a minute's
    # heartbeat. 3 trials added (pending), started and ended, 6 epochs reported: 15 events at
    # most, and a line a minute.
    lines = [(_clock(line), line.split("] ", 1)[1]) for line in progress]
    for (t0, a), (t1, b) in itertools.pairwise(lines):
        assert a != b or t1 - t0 >= 60, progress
    assert len(progress) <= 15 + lines[-1][0] // 60, progress
    assert (workdir / "logs" / "e2e-1.log").exists()
    version = _client(workdir).get_model_version_by_alias("unet-e2e", "champion")
    test_dice = float(version.tags["unet_search.test_dice"])
    capsys.readouterr()
    assert main(["best", "e2e-1", "--top", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 7 and table[1].split()[0] == out.best.name.split()[0]
    assert table[3].startswith(f"held-out test  test_dice {test_dice:.4f}  test_iou ")
    assert table[3].endswith("on 4 images: the best trial's kept model, images no choice saw")
    assert table[4:] == [  # what the search registered, as the registry holds it
        "registered   unet-e2e (load with models:/unet-e2e@ALIAS)",
        f"  v1    @champion              e2e-1 val_dice {out.best.value:.4f} test_dice "
        f"{test_dice:.4f}",
        "        no champion yet",
    ]
    assert out.report is not None
    assert f'<span id="held-out">test_dice {test_dice:.4f}' in out.report.read_text()


def test_end_to_end_a_downstream_app_loads_the_champion_in_a_fresh_process(
    e2e: EndToEnd,
) -> None:
    """The pyfunc and unet_search.load_model, in a process of their own, on odd sizes."""
    code = (
        "import json, numpy as np, mlflow, unet_search\n"
        "from unet_search import load_model\n"
        "imgs = np.random.default_rng(0).integers(0, 255, (2, 97, 131, 3), dtype=np.uint8)\n"
        "pyf = mlflow.pyfunc.load_model('models:/unet-e2e@champion').predict(imgs)\n"
        "own = load_model('models:/unet-e2e@champion').predict([imgs[0], imgs[1, :40, :33]])\n"
        "print(json.dumps({'pyfunc': list(pyf.shape), 'own': [list(m.shape) for m in own],"
        " 'same': bool((pyf[0] == own[0]).all())}))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": e2e.uri}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
        cwd=e2e.tmp,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    shapes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert shapes == {"pyfunc": [2, 97, 131], "own": [[97, 131], [40, 33]], "same": True}


def _asha_search(
    tmp_path: Path, data: Path, workdir: Path, capsys: pytest.CaptureFixture[str], scheduler: str
) -> tuple[SearchResult, str]:
    """The search of :func:`_asha_space` and its live view's last line."""
    out = _search(tmp_path, data, workdir, asha_space(f"asha-{scheduler}", scheduler))
    assert [t.params["lr"] for t in out.trials] == [0.01, 1e-7, 0.01]
    return out, [ln for ln in capsys.readouterr().out.splitlines() if "] trials: " in ln][-1]


def _stopped_early(workdir: Path, out: SearchResult) -> list[str]:
    runs = _client(workdir).search_runs(
        [out.experiment_id], "tags.unet_search.outcome = 'stopped_early'"
    )
    assert all(r.info.status == "KILLED" for r in runs)
    return sorted(r.info.run_id for r in runs)


def test_tunes_stopping_asha_stops_a_hopeless_trial_and_optuna_sees_it_pruned(
    ray_local: None,
    search_data: Path,
    workdir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Tune's rule decides when a trial reaches the rung (epoch 2): the hopeless trial is below
    # the cutoff of [good, hopeless] and stops; the third (as good as the first) goes on.
    out, last = _asha_search(tmp_path, search_data, workdir, capsys, "asha_stopping")
    assert [t.status for t in out.trials] == ["FINISHED", "KILLED", "FINISHED"]
    assert "0 running, 2 finished, 1 stopped early, 0 failed" in last
    assert [t.epochs for t in out.trials] == [4, 2, 4]
    assert _stopped_early(workdir, out) == [out.trials[1].run_id]
    # The report draws the stopped trial too (parallel coordinates, best so far).
    assert out.report is not None and "1 stopped early" in out.report.read_text()
    states = [t.state for t in out.study.trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    pruned = out.study.trials[1]
    assert list(pruned.intermediate_values) == [1, 2]  # every epoch up to the stop
    assert pruned.value == pruned.intermediate_values[2]  # Optuna's rule for PRUNED trials
    # Same seed, same config, same data: trials 0 and 2 are identical (reproducible trials).
    assert out.trials[0].value == out.trials[2].value
    assert out.study.trials[0].value == pytest.approx(out.trials[0].value)
    assert out.best is not None and out.best.status == "FINISHED"


def test_asha_pauses_at_the_rung_promotes_the_best_and_stops_the_rest(
    ray_local: None,
    search_data: Path,
    workdir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # ASHA as its paper has it: trial 0 reaches the rung alone (a rung of 1 promotes
    # floor(1/2) = 0) and pauses; the hopeless trial 1 reaches it and pauses; now trial 0 is
    # the best half of 2 and resumes from its checkpoint to epoch 4. Trial 2 (the same
    # config, the same values) reaches the rung third: floor(3/2) = 1 promotion, already
    # made, and an equal value does not displace the earlier trial. Nothing left to run or
    # promote: the paused trials 1 and 2 are stopped early.
    out, last = _asha_search(tmp_path, search_data, workdir, capsys, "asha")
    assert [t.status for t in out.trials] == ["FINISHED", "KILLED", "KILLED"]
    assert [t.epochs for t in out.trials] == [4, 2, 2]
    assert "0 running, 1 finished, 2 stopped early, 0 failed" in last
    assert _stopped_early(workdir, out) == sorted(t.run_id for t in out.trials[1:])
    # The paused-and-resumed trial kept one MLflow run with each epoch logged once.
    history = _client(workdir).get_metric_history(out.trials[0].run_id, "val_loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    states = [t.state for t in out.study.trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    first, hopeless, third = out.study.trials
    assert list(hopeless.intermediate_values) == list(third.intermediate_values) == [1, 2]
    assert hopeless.value == hopeless.intermediate_values[2]
    # Reproducible: trial 2 has trial 0's values at the epochs both trained.
    assert third.intermediate_values == {k: first.intermediate_values[k] for k in (1, 2)}
    assert first.value == pytest.approx(out.trials[0].value)
    assert out.best is not None and out.best.trial_id == out.trials[0].trial_id


def test_a_worse_search_registers_a_challenger_and_keeps_the_champion(
    ray_local: None, search_data: Path, workdir: Path, tmp_path: Path
) -> None:
    base = {
        "model_name": "unet-gate",
        "fixed": {**TINY, "epochs": 3, "depth": 2, "base_filters": 8, "dice_weight": 1.0},
        "search": {
            "num_samples": 1,
            "baseline": "none",
            "scheduler": {"type": "fifo"},
            "champion_must_beat_otsu": False,  # the gate between two searches is tested
            **LEAN,  # ONNX at registration: the end-to-end test's
        },
    }
    good = _search(
        tmp_path,
        search_data,
        workdir,
        {**base, "name": "gate", "params": {"lr": {"type": "choice", "values": [0.01]}}},
    )
    bad = _search(
        tmp_path,
        search_data,
        workdir,
        {**base, "name": "gate", "params": {"lr": {"type": "choice", "values": [1e-7]}}},
        ["threshold=0.99"],
    )
    assert good.search_id == "gate-1" and bad.search_id == "gate-2"
    assert good.best.value > bad.best.value
    assert (good.registration.alias, bad.registration.alias) == ("champion", "challenger")
    client = _client(workdir)
    assert str(client.get_model_version_by_alias("unet-gate", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("unet-gate", "challenger").version) == "2"


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_every_shipped_space_starts(
    ray_local: None, search_data: Path, workdir: Path, path: Path
) -> None:
    shrink = [
        "image_size=32",
        "patch_size=32",
        "patches_per_epoch=8",
        "epochs=1",
        "val_fraction=0.25",
        "num_workers=1",
        "cpus_per_worker=1",
        "gpus_per_worker=0",
        "loader_workers=0",
        "search.scheduler.grace_period=1",
        "search.max_concurrent_trials=1",
        # what each space draws, and its champion, are checked, not the default or Otsu
        "search.default_trial=false",
        "search.champion_must_beat_otsu=false",
        "search.onnx=false",
        "search.latency_image=64",
    ]
    # One trial each: seed_baseline's is the baseline; the others' a sampled one (the
    # baseline trains in seed_baseline's search and in the other tests).
    alone = path.stem == "seed_baseline"
    sets = [*shrink, "search.num_samples=1", *([] if alone else ["search.baseline=none"])]
    # full.yaml's seed 0 draws a mit_b1 UNet, seed 10 a 64-channel UNet 3+ (45 s on CPU);
    # seed 34 a depth-4 UNet on mobilenet_v2: the check is that the space runs.
    # variants.yaml's seed 6 draws two from-scratch UNet 3+ variants (asserted below).
    sets += {
        "full": ["search.seed=34"],
        "variants": ["search.seed=6", "search.num_samples=2"],
    }.get(path.stem, [])
    spec = load_space(path, sets)
    arrays = load_dataset(search_data, spec.base_config().data, workdir / "cache")
    out = run_search(spec, arrays, search_data, workdir)
    assert len(out.trials) == spec.settings.num_samples
    assert all(t.status == "FINISHED" for t in out.trials)
    assert out.trials[0].baseline == alone
    assert out.registration is not None and out.registration.alias == "champion"
    if path.stem == "variants":
        client = _client(workdir)
        drawn = sorted(
            tuple(client.get_run(t.run_id).data.params[k] for k in VARIANT_KEYS)
            for t in out.trials
        )
        assert drawn == [  # what its seed draws (deterministic): two UNet 3+ variants
            ("unet3plus", "residual", "strided", "plain", "none"),
            ("unet3plus", "separable", "avg", "aspp", "scse"),
        ]


def test_a_trial_no_node_can_place_fails_at_once(
    ray_local: None, search_data: Path, workdir: Path, tmp_path: Path
) -> None:
    from unet_search.distributed.trainer import ResourceError

    raw = {
        "name": "gpu",
        "fixed": {**TINY, "epochs": 1, "gpus_per_worker": 1},
        "params": {"lr": {"type": "choice", "values": [0.01]}},
    }
    with pytest.raises(ResourceError, match="no node of the Ray cluster has more than 0 GPUs"):
        _search(tmp_path, search_data, workdir, raw)
    raw = {
        "name": "cpu",
        "fixed": {**TINY, "epochs": 1},
        "params": {"num_workers": {"type": "int", "low": 1, "high": 3}},
    }
    with pytest.raises(ResourceError, match="a trial can ask for 3 CPUs"):
        _search(tmp_path, search_data, workdir, raw)
    assert not (workdir / "ray_results").exists()  # nothing started


def test_three_classes_end_to_end_train_search_register_predict(
    ray_local: None, workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Class-index masks through `train`, `search` (registration included) and `predict`:
    per-class Dice logged each epoch, `val_dice` their images' mean, class indices back at
    the images' own sizes, scoring what the registered version says."""
    from unet_search.cli.app import main

    data = tmp_path / "three"
    make_synthetic(data, n=12, size=40, max_size=56, object_px=8, style="fluorescence", classes=3)
    common = ["--set", "num_classes=3", "--set", "patch_size=32", "--set", "val_fraction=0.25"]
    common += [
        "--set",
        "dsb_every=0",
        "--set",
        "num_sample_images=2",
        "--set",
        "test_fraction=0.25",
    ]
    train = ["--set", "epochs=1", "--set", "patches_per_epoch=256"]
    assert main(["train", "--data", str(data), *common, *train]) == 0
    printed = capsys.readouterr().out
    final = json.loads(printed.split("final        ", 1)[1].splitlines()[0])
    assert {"val_dice_c1", "val_dice_c2"} <= set(final) and 0 <= final["val_dice_c2"] <= 1
    # `train` is the planned default: what no --set gives is planned (printed, logged)
    planned = dict(line.split()[:2] for line in printed.splitlines() if " " in line)
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("unet-search-train").experiment_id])
    params = run.data.params
    for leaf in ("batch_size", "normalization", "target"):
        assert params[leaf] == planned[leaf], leaf
    assert float(params["scale"]) == float(planned["scale"])
    assert params["depth"] == re.search(r"^depth .*\(fixed: (\d+)\)", printed, re.M)[1]
    assert (params["target"], params["depth"]) == ("semantic", "3")  # 3 classes; 32-px patch
    assert params["patch_size"] == "[32, 32]"  # given: kept

    space = tmp_path / "three.yaml"
    # ~48 steps of a small net: ~0.8 val_dice (measured), the seed baseline at ~0.1
    fixed = {"epochs": 3, "patches_per_epoch": 128, "batch_size": 8, "lr": 0.01, "image_size": 32}
    fixed.update(depth=2, base_filters=8)
    space.write_text(
        yaml.safe_dump(
            {
                "name": "three",
                "model_name": "unet-three",
                "fixed": fixed,
                "params": {"loss": {"type": "choice", "values": ["bce", "mix"]}},
                "search": {
                    **{"num_samples": 2, "seed": 0, "scheduler": {"type": "fifo"}},
                    **LEAN,
                },
            }
        )
    )
    assert main(["search", "--space", str(space), "--data", str(data), *common]) == 0
    out = capsys.readouterr().out
    assert "model unet-three v1 is the new champion" in out, out[-3000:]
    assert "Otsu" not in out  # no plain threshold for three classes
    client = _client(workdir)
    version = client.get_model_version_by_alias("unet-three", "champion")
    best = client.get_run(version.tags["unet_search.run_id"])
    per_class = [best.data.metrics[f"val_dice_c{k}"] for k in (1, 2)]
    assert all(0 < v <= 1 for v in per_class)
    parent = client.get_run(version.run_id)
    split = json.loads(
        Path(client.download_artifacts(version.run_id, "split.json", str(tmp_path))).read_text()
    )
    images, masks = tmp_path / "test_images", tmp_path / "test_masks"
    images.mkdir()
    for name in split["test"]:
        (images / f"{name}.png").write_bytes((data / "images" / f"{name}.png").read_bytes())
    model = "models:/unet-three@champion"
    assert main(["predict", "--model", model, "--input", str(images), "--output", str(masks)]) == 0
    arrays = load_dataset(data, DataConfig(num_classes=3, val_fraction=0.25, test_fraction=0.25))
    dices = []
    for name in split["test"]:
        predicted = np.asarray(Image.open(masks / f"{name}.png"))
        truth = arrays.mask(arrays.names.index(name))
        assert predicted.shape == truth.shape and set(np.unique(predicted)) <= {0, 1, 2}
        pred, target = (torch.from_numpy(a.astype(np.int64))[None] for a in (predicted, truth))
        dices.append(float(dice_iou_per_image(pred, target, 3)[0][0]))
    test_dice = float(version.tags["unet_search.test_dice"])
    assert float(np.mean(dices)) == pytest.approx(test_dice, abs=1e-3)
    assert parent.data.metrics["test_dice"] == pytest.approx(test_dice)
    assert (
        "test_dsb_score" not in parent.data.metrics and "otsu_test_dice" not in parent.data.metrics
    )
    assert test_dice > 0.5  # the stains tell the classes apart: a trained model finds them
    # Instances are objects of a binary model: a clear error before anything is written, and
    # the masks are kept (even with --overwrite, which would have replaced them).
    kept = {p.name: p.read_bytes() for p in masks.iterdir()}
    out = [*("predict", "--model", model, "--input", str(images), "--output", str(masks))]
    assert main([*out, "--output-kind", "instances", "--overwrite"]) == 1
    assert "instances are objects of a binary model" in capsys.readouterr().err
    assert sorted(kept) == sorted(f"{n}.png" for n in split["test"])
    assert {p.name: p.read_bytes() for p in masks.iterdir()} == kept


def test_storage_is_the_users_path_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--storage (or UNET_SEARCH_STORAGE) is where Ray keeps the search: a relative folder is
    relative to where the command runs (never to the work dir), a URI stays as written."""
    from unet_search.search.setup import storage_root

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("UNET_SEARCH_STORAGE", raising=False)
    home = tmp_path / "home"
    assert storage_root(home, "runs") == str(tmp_path / "runs")
    assert storage_root(home, "s3://bucket/runs") == "s3://bucket/runs"
    assert storage_root(home, None) == str(home / "ray_results")
    monkeypatch.setenv("UNET_SEARCH_STORAGE", "shared/ray")
    assert storage_root(home, None) == str(tmp_path / "shared" / "ray")


def _asha_small(name: str, num_samples: int, **search: object) -> dict:
    """A small ASHA search, as users try first: the baseline, the planned default and
    ``num_samples`` - 2 sampled trials, a rung every epoch (reduction 2), 3 epochs each."""
    return {
        "name": name,
        "model_name": f"unet-{name}",
        "fixed": {**TINY, "epochs": 3, "depth": 2, "base_filters": 8},
        "params": {"lr": {"type": "loguniform", "low": 3.0e-3, "high": 3.0e-2}},
        "search": {
            "num_samples": num_samples,
            "seed": 4,
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
            **LEAN,
            **search,
        },
    }


def test_a_two_trial_asha_search_registers_a_trained_model_not_the_baseline(
    ray_local: None, search_data: Path, workdir: Path, tmp_path: Path
) -> None:
    # The baseline and the planned default, one at a time, a rung every epoch (reduction 2).
    # The baseline reaches each rung alone, where any other trial would pause (floor(1/2) =
    # 0 promotions): it is the reference every result is compared with, so it trains on, all
    # its epochs before the default starts. The default then reaches each rung alone too (the
    # baseline does not count); with nothing else to run it trains on to max_t instead of
    # being stopped (before, the baseline was the only finished trial and was registered),
    # without a pause at each rung: it is the one that would go on.
    out = _search(
        tmp_path, search_data, workdir, _asha_small("small2", 2, max_concurrent_trials=1)
    )
    baseline, default = out.trials
    assert baseline.baseline and default.default
    assert (baseline.status, baseline.epochs) == ("FINISHED", 3)
    client = _client(workdir)
    ours = client.get_metric_history(baseline.run_id, "val_dice")
    theirs = client.get_metric_history(default.run_id, "val_dice")
    assert sorted(m.step for m in ours) == [1, 2, 3]
    assert max(m.timestamp for m in ours) < min(m.timestamp for m in theirs)
    assert (default.status, default.epochs) == ("FINISHED", 3)
    (result,) = (workdir / "ray_results" / out.search_id).glob(f"*{default.trial_id}*/result.json")
    rows = [json.loads(line) for line in result.read_text().splitlines()]
    assert [r["iterations_since_restore"] for r in rows] == [1, 2, 3]  # never restarted
    assert out.best is not None and out.best.trial_id == default.trial_id
    assert out.registration is not None
    version = client.get_model_version("unet-small2", out.registration.version)
    assert version.tags["unet_search.run_id"] == default.run_id


def test_a_search_for_instances_ranks_by_ap50_and_registers_what_predict_scores(
    ray_local: None, search_data: Path, workdir: Path, tmp_path: Path
) -> None:
    """``metric: val_ap50`` with the boundary target: trials are ranked by their kept AP50,
    and the registered version's instance scores are those of the label images
    ``predict --output-kind instances`` writes for the held-out test images."""
    raw = {
        "name": "objects",
        "fixed": {
            **{**TINY, "patches_per_epoch": 128, "dsb_every": 1, "test_fraction": 0.25},
            **{"epochs": 4, "depth": 2, "base_filters": 16, "target": "boundary"},
        },
        "params": {"lr": {"type": "loguniform", "low": 3.0e-3, "high": 3.0e-2}},
        "search": {
            **{"num_samples": 2, "metric": "val_ap50", "seed": 1, "baseline": "none"},
            "scheduler": {"type": "fifo"},
            **LEAN,
        },
    }
    out = _search(tmp_path, search_data, workdir, raw)
    client = _client(workdir)
    assert out.best is not None and out.registration is not None
    kept = {t.trial_id: client.get_run(t.run_id).data.metrics for t in out.trials}
    assert all("best_val_ap50" in m and "val_dsb_score" in m for m in kept.values())
    best = max(kept, key=lambda t: kept[t]["best_val_ap50"])
    assert out.best.trial_id == best
    version = client.get_model_version("unet-objects", out.registration.version)
    assert version.tags["unet_search.metric"] == "val_ap50"
    assert float(version.tags["unet_search.metric_value"]) == pytest.approx(
        kept[best]["best_val_ap50"]
    )
    split = json.loads(
        Path(client.download_artifacts(out.parent_run_id, "split.json", str(tmp_path))).read_text()
    )
    images = tmp_path / "test_images"
    images.mkdir()
    for name in split["test"]:
        (images / f"{name}.png").write_bytes(
            (search_data / name / "images" / f"{name}.png").read_bytes()
        )

    model = f"models:/unet-objects/{out.registration.version}"
    arrays = load_dataset(search_data, DataConfig())
    _assert_instance_tags_are_predicts(version, model, images, arrays, tmp_path / "objects")
    # It found objects (measured AP50 0.21): the equality above is not one of zeros.
    assert float(version.tags["unet_search.test_ap50"]) > 0.05, version.tags


def test_a_small_search_with_a_compute_budget_ends_with_a_final_fit_that_is_registered(
    ray_local: None, search_data: Path, workdir: Path, tmp_path: Path
) -> None:
    # 6 epochs: the exploring trials get 3 (final_fit 0.5), less than one 3-epoch trial
    # after the other's first rung, so the budget runs out while they explore.
    raw = _asha_small("final", 3, compute={"epochs": 6}, final_fit=0.5)
    raw["fixed"]["test_fraction"] = 0.2
    out = _search(tmp_path, search_data, workdir, raw)
    client = _client(workdir)

    # Trial 1 is the planned default (tagged, and Optuna knows it as its enqueued trial 1).
    assert [t.index for t in out.trials] == [0, 1, 2]
    baseline, default, sampled = out.trials
    assert baseline.baseline and default.default and not sampled.default
    assert client.get_run(default.run_id).data.tags["unet_search.default"] == "true"
    assert "unet_search.default" not in client.get_run(sampled.run_id).data.tags
    study_trial = out.study.trials[1]
    assert study_trial.user_attrs.get("unet_search.default") is True
    assert study_trial.params == {"lr": 3.0e-3}  # train's 1e-3, clipped into the space

    # Exploring keeps to its share: the epoch that spent it was the last (one more at most,
    # from a trial that was training beside it), no exploring trial trained on to max_t
    # (3) for it, and the final fit trains the best of them on from its checkpoint's kept
    # weights, for the epochs left; the epochs of every run but the baseline's add up to 6.
    final, fit = out.final, out.final_fit
    assert final is not None and fit is not None and fit.source is not None
    assert fit.explored_epochs in (3, 4)
    assert [(t.status, t.epochs <= 2) for t in (default, sampled)] == [("KILLED", True)] * 2
    # Its source: the planned default, unless the sampled trial beat it at equal epochs by
    # more than the margin. The curves compared are each trial's logged best_val_dice.
    for trial in (default, sampled):
        logged = client.get_metric_history(trial.run_id, "best_val_dice")
        assert trial.curve == tuple(sorted((m.step, pytest.approx(m.value)) for m in logged))
    epoch, gain = gain_at_equal_epochs(default.curve, sampled.curve, "max") or (0, 0.0)
    switch = gain > INCUMBENT_MARGIN
    assert fit.source.trial_id == (sampled if switch else default).trial_id
    told = client.get_run(out.parent_run_id).data.tags["unet_search.final_fit_source"]
    assert told == fit.chosen and f"{gain:+.4f} at epoch {epoch}" in told, (told, gain)
    run = client.get_run(final.run_id)
    (trial_dir,) = (workdir / "ray_results" / out.search_id).glob(f"*{fit.source.trial_id}*")
    start = Path(run.data.params["init_weights"])
    assert start.parent == trial_dir and start.name.startswith("checkpoint_")
    assert run.data.tags["unet_search.final_fit"] == "true"
    assert run.data.tags["mlflow.parentRunId"] == out.parent_run_id
    assert run.info.run_name == f"final {fit.source.name}"
    assert run.data.params["lr"] == str(fit.source.params["lr"])
    assert run.data.params["epochs"] == str(final.epochs)
    epochs = {
        t.run_id: int(client.get_run(t.run_id).data.metrics["epoch"])
        for t in (*out.trials, final)
        if not t.baseline
    }
    assert sum(epochs.values()) == 6 and epochs[final.run_id] == final.epochs >= 2
    history = client.get_metric_history(final.run_id, "val_dice")
    assert sorted(m.step for m in history) == list(range(1, final.epochs + 1))
    parent = client.get_run(out.parent_run_id).data.metrics
    assert parent["explore_epochs"] + parent["final_fit_epochs"] == 6
    # The report says what the final fit trained, from where, with what the search spent.
    assert out.report is not None
    page = out.report.read_text()
    shown = page.split('<span id="final-fit">', 1)[1].split("</span>", 1)[0]
    assert shown.startswith(f"final {fit.source.name}: {final.value:.4f}, {final.epochs} epochs")
    assert "from its source's kept weights" in shown
    source = page.split('<span id="final-source">', 1)[1].split("</span>", 1)[0]
    assert html.unescape(source) == fit.chosen
    explored = f"the exploring trials spent {fit.explored_epochs} epochs"
    assert f"{explored}, the final fit {final.epochs}" in shown

    # Its kept weights are what is registered and scored on the held-out test images: the
    # version's test_dice is the Dice `predict` gets on them.
    assert out.best is final and out.registration is not None
    version = client.get_model_version("unet-final", out.registration.version)
    assert version.tags["unet_search.run_id"] == final.run_id
    data = load_space(tmp_path / "final.yaml").base_config().data
    arrays = load_dataset(search_data, data)
    test = [int(i) for i in split_indices(len(arrays), data).test]
    assert len(test) == 3
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    model = load_model(f"models:/unet-final/{out.registration.version}", tracking_uri=uri)
    masks = model.predict([arrays.image(i) for i in test])
    dices = [
        dice_iou_per_image(
            torch.from_numpy(m[None]).long(), torch.from_numpy(arrays.mask(i)[None]).long(), 1
        )[0][0]
        for m, i in zip(masks, test, strict=True)
    ]
    test_dice = float(version.tags["unet_search.test_dice"])
    assert test_dice == pytest.approx(float(np.mean(dices)), abs=1e-3)

    # The Otsu rule decides its alias: champion only with a validation Dice above Otsu's.
    beats = final.value >= out.otsu_val_dice
    assert out.registration.alias == ("champion" if beats else "challenger")
    if not beats:
        assert "below a plain Otsu threshold's" in out.registration.reason


def test_resume_reads_the_plan_its_search_started_with_instead_of_planning_again(
    search_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], empty_store: Path
) -> None:
    """plan.json on the parent run is what `resume` plans with: a plan whose values differ
    from what planning the data again would give (written here by hand) is the one the
    resumed space uses; a search from before plan.json is planned again; a plan.json that
    is not one is a clear error naming it."""
    from unet_search.core.errors import UserError
    from unet_search.core.names import PLAN_FILE
    from unet_search.plan.planner import Plan
    from unet_search.search.driver import _resumed_space
    from unet_search.space.load import plan_space
    from unet_search.tracking.client import create_run, ensure_experiment, log_text
    from unet_search.tracking.state import SearchState

    raw = {
        "name": "planned",
        "fixed": {"patch_size": "auto", "patches_per_epoch": "auto", "epochs": 1},
        "params": {"lr": {"type": "loguniform", "low": 1.0e-3, "high": 1.0e-2}},
    }
    path = tmp_path / "planned.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = load_space(path)
    arrays = load_dataset(search_data, spec.base_config().data)
    planned = plan_space(spec, arrays)
    assert planned.plan is not None
    kept = Plan(**{**vars(planned.plan), "patches_per_epoch": 7, "patch_size": (48, 48)})
    uri = store_in(tmp_path, empty_store)
    experiment = ensure_experiment(uri, "planned", tmp_path)
    state = SearchState(
        "planned-1", "planned.yaml", "", (), str(search_data), "m", "", uri, experiment, "", ""
    )

    with_plan = create_run(uri, experiment, "planned-1", {}, {})
    log_text(uri, with_plan, kept.to_json(), PLAN_FILE)
    resumed = _resumed_space(spec, arrays, replace(state, parent_run_id=with_plan))
    assert resumed.plan == kept
    train, data = resumed.base_config().train, resumed.base_config().data
    assert (train.patches_per_epoch, data.patch_size) == (7, (48, 48))
    assert "the plan it started with (plan.json of its run)" in capsys.readouterr().out

    before = create_run(uri, experiment, "planned-2", {}, {})  # a search from before plan.json
    again = _resumed_space(spec, arrays, replace(state, parent_run_id=before))
    assert again.plan == planned.plan and again.plan.patches_per_epoch != 7
    assert "planned again from the data (no plan.json)" in capsys.readouterr().out

    broken = create_run(uri, experiment, "planned-3", {}, {})
    log_text(uri, broken, '{"budget": "cpu-quick"}', PLAN_FILE)
    with pytest.raises(UserError, match=r"plan\.json of search planned-1: not a plan written"):
        _resumed_space(spec, arrays, replace(state, parent_run_id=broken))


def test_a_two_objective_search_keeps_a_limit_before_training_and_reports_its_front(
    ray_local: None,
    search_data: Path,
    workdir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """search.objectives and search.constraints: Dice against size under MO-ASHA. Each
    sampled model's parameters are counted (and its latency measured) before its first
    epoch; one over the limit trains no epoch, its run says infeasible with what it
    measured, and Optuna holds it COMPLETE with its constraint. pareto.json is the finished
    trials' front, the report draws it, the version says how it was chosen."""
    limit = 100_000  # depth 2: 7,549 parameters at 4 filters, 29,625 at 8, 467,169 at 32
    sizes = {4: 7_549, 8: 29_625, 32: 467_169}
    raw = {
        "name": "front",
        "fixed": {**TINY, "epochs": 2, "depth": 2},
        "params": {
            "base_filters": {"type": "choice", "values": [4, 8, 32]},
            "lr": {"type": "loguniform", "low": 3.0e-3, "high": 3.0e-2},
        },
        "search": {
            # random draws throughout (TPE's start: which trials its model would sample
            # depends on the order they end in), the seed's: 8, 32, 8, 4, 4 filters
            **{"num_samples": 6, "seed": 9, "startup_trials": 6, "default_trial": False},
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
            "objectives": [{"metric": "val_dice"}, {"metric": "num_parameters"}],
            "constraints": [{"metric": "num_parameters", "max": limit}],
            "champion_must_beat_otsu": False,
            **LEAN,
        },
    }
    out = _search(tmp_path, search_data, workdir, raw)
    client = _client(workdir)
    assert [d.name for d in out.study.directions] == ["MAXIMIZE", "MINIMIZE"]
    sampled = [t for t in out.trials if not t.baseline]
    widths = {t.trial_id: t.params["base_filters"] for t in sampled}
    assert 32 in widths.values() and len({w for w in widths.values() if w != 32}) >= 1, widths
    outcomes = {}
    for trial in sampled:
        run = client.get_run(trial.run_id)
        over = widths[trial.trial_id] == 32
        outcomes[trial.trial_id] = outcome = run.data.tags["unet_search.outcome"]
        assert (outcome == "infeasible") == over, (widths[trial.trial_id], outcome)
        assert float(run.data.params["num_parameters"]) == sizes[widths[trial.trial_id]]
        assert run.data.metrics["inference_ms"] > 0 and run.data.params["latency_image"] == "64x64"
        epochs = len(client.get_metric_history(trial.run_id, "train_loss"))
        assert (epochs == 0) == over  # not one epoch over the limit
    baseline = client.get_run(out.baseline.run_id)  # a reference: measured, held to no limit
    assert float(baseline.data.params["num_parameters"]) > limit
    assert baseline.data.tags["unet_search.outcome"] == "finished"

    by_number = {t.number: t for t in out.study.trials}
    states = {}
    for trial in sampled:
        optuna_trial = by_number[trial.index]
        states[outcomes[trial.trial_id]] = states.get(outcomes[trial.trial_id], set())
        states[outcomes[trial.trial_id]].add(optuna_trial.state)
        excess = optuna_trial.constraints["num_parameters"]
        assert excess == pytest.approx(sizes[widths[trial.trial_id]] / limit - 1.0)
        if optuna_trial.state == TrialState.COMPLETE:
            assert optuna_trial.values[1] == sizes[widths[trial.trial_id]]
    assert states["infeasible"] == {TrialState.COMPLETE}
    assert states["stopped_early"] == {TrialState.PRUNED}  # ASHA stopped them at the rung
    assert states["finished"] == {TrialState.COMPLETE}

    # The front: the finished trials (within the limit) no other beats in both objectives,
    # worked out here from their runs.
    finished = {
        t.trial_id: (client.get_run(t.run_id).data.metrics["best_val_dice"], sizes[w])
        for t in sampled
        if outcomes[t.trial_id] == "finished" and (w := widths[t.trial_id])
    }
    front = {
        k
        for k, (dice, size) in finished.items()
        if not any(
            d >= dice and s <= size and (d, s) != (dice, size) for d, s in finished.values()
        )
    }
    written = json.loads(
        Path(
            client.download_artifacts(out.parent_run_id, "pareto.json", str(tmp_path))
        ).read_text()
    )
    assert {e["trial_id"] for e in written} == front
    for entry in written:
        dice, size = finished[entry["trial_id"]]
        assert entry["values"] == {"val_dice": pytest.approx(dice), "num_parameters": size}
    assert out.best is not None and outcomes[out.best.trial_id] == "finished"
    assert out.best.value == max(dice for dice, _ in finished.values())
    version = client.get_model_version_by_alias("unet-front", "champion")
    assert version.tags["unet_search.objectives"] == "val_dice:max,num_parameters:min"
    assert version.tags["unet_search.constraints"] == "num_parameters<=100000"
    assert float(version.tags["unet_search.inference_ms"]) > 0
    assert version.tags["unet_search.latency"].startswith("64x64 cpu ")
    assert out.report is not None and (out.report.parent / "pareto_front.png").is_file()
    page = out.report.read_text()
    assert "<h2>Pareto front</h2>" in page
    shown = capsys.readouterr().out
    infeasible = sum(w == 32 for w in widths.values())
    assert f"{infeasible} infeasible" in shown
    assert {t.trial_id for t in out.front} == front  # what the summary prints
