"""The BioImage.IO package: `unet-search export --format bioimageio` of a trained model
passes `bioimageio test` (bioimageio.core's own command, offline), says what a tiling tool
needs (sizes, halo, classes), its test output is predict's probabilities; a model at scale
0.5 gives through the package (bioimageio.core's prediction) the masks predict gives; bad
input is one line and writes nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TrainedModel

from unet_search.cli.app import main
from unet_search.models.build import build_model, save_model_dir
from unet_search.models.card import ModelCard
from unet_search.serve.bioimageio import PROVENANCE_KEY, TEST_INPUT, TEST_OUTPUT, write_package
from unet_search.serve.bioimageio_files import PackageInfo
from unet_search.serve.inference import Predictor
from unet_search.serve.onnx import TOLERANCE


def _offline_env(tmp: Path) -> dict[str, str]:
    """This machine's environment with bioimageio's cache in ``tmp`` and no proxy: a check
    that needed the network would fail here."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return {**env, "BIOIMAGEIO_CACHE_PATH": str(tmp / "bioimageio-cache"), "HF_HUB_OFFLINE": "1"}


def _probabilities(folder: Path, image: np.ndarray) -> np.ndarray:
    logits = Predictor.from_dir(folder).predict_logits([image])[0]
    return (torch.sigmoid(logits) if logits.shape[0] == 1 else torch.softmax(logits, 0)).numpy()


@pytest.fixture(scope="module")
def package(trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained model exported as a zip by the CLI, with a license and an author."""
    out = tmp_path_factory.mktemp("bioimageio") / "model.zip"
    args = ["export", str(trained_model.path), "--format", "bioimageio", "--out", str(out)]
    assert main([*args, "--license", "MIT", "--author", "Ada Lovelace"]) == 0
    return out


def test_the_package_passes_bioimageio_test_offline(package: Path, tmp_path: Path) -> None:
    bioimageio = Path(sys.executable).with_name("bioimageio")
    summary = tmp_path / "summary.json"
    done = subprocess.run(
        [str(bioimageio), "test", str(package), "--summary", str(summary)],
        capture_output=True,
        text=True,
        env=_offline_env(tmp_path),
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(summary.read_text())
    assert report["status"] == "passed"
    checks = {d["name"]: d["status"] for d in report["details"]}
    # both weight formats reproduce the test output, and run at every size the axes allow
    for weights in ("onnx", "pytorch_state_dict"):
        assert checks[f"Reproduce test outputs from test inputs ({weights})"] == "passed"
        runs = [name for name in checks if name.startswith(f"Run {weights} inference")]
        assert len(runs) == 6 and {checks[n] for n in runs} == {"passed"}


def test_the_package_says_what_a_tiling_tool_needs_and_predicts_as_predict(
    package: Path, trained_model: TrainedModel, tmp_path: Path
) -> None:
    from bioimageio.spec import load_model_description

    descr = load_model_description(package, perform_io_checks=False)
    assert str(descr.license) == "MIT" and [a.name for a in descr.authors] == ["Ada Lovelace"]
    image_axes = {str(a.id): a for a in descr.inputs[0].axes}
    out_axes = {str(a.id): a for a in descr.outputs[0].axes}
    # depth 2: a step of 4 px; the smallest size one 32-px tile; the halo half of predict's
    # overlap of those tiles (0.5), 8 px a side
    assert (image_axes["y"].size.min, image_axes["y"].size.step) == (32, 4)
    assert out_axes["y"].halo == out_axes["x"].halo == 8
    assert image_axes["channel"].channel_names == ["red", "green", "blue"]
    assert out_axes["channel"].channel_names == ["foreground"]
    assert descr.inputs[0].data.type == "uint8"
    provenance = descr.config.model_dump()[PROVENANCE_KEY]
    assert provenance["exported_from"] == str(trained_model.path)
    shutil.unpack_archive(package, tmp_path / "files", "zip")
    raw = np.load(tmp_path / "files" / TEST_INPUT)
    assert raw.shape == (1, 3, 32, 32)  # one 32-px tile, from the fixed synthetic image
    want = _probabilities(trained_model.path, raw[0].transpose(1, 2, 0))
    got = np.load(tmp_path / "files" / TEST_OUTPUT)[0]
    assert np.abs(got - want).max() < TOLERANCE
    assert want.std() > 0.05


@pytest.fixture(scope="module")
def half_scale_model(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """A model trained as ``trained_model`` is, at ``scale`` 0.5 (its 32-px patches cover
    64 px of the images)."""
    from unet_search.core.config import RunConfig
    from unet_search.data.dataset import load_dataset
    from unet_search.train.engine import build_loaders, fit, new_training_state, seed_everything
    from unet_search.train.losses import build_loss
    from unet_search.train.sliding import preprocessing_of

    cfg = RunConfig.from_dict(
        {
            **{"depth": 2, "base_filters": 8, "patch_size": 32, "patches_per_epoch": 64},
            **{"epochs": 3, "lr": 3e-3, "val_fraction": 0.25, "dsb_every": 0, "scale": 0.5},
        }
    )
    arrays = load_dataset(synth_dir, cfg.data)
    seed_everything(0)
    train, val = build_loaders(cfg, arrays, rank=0, world=1)
    state = new_training_state(build_model(cfg.model, 1), cfg, len(train), torch.device("cpu"))
    fit(state, cfg, train, val, build_loss(cfg.loss), torch.device("cpu"))
    state.module.load_state_dict(state.best_state or state.module.state_dict())
    path = tmp_path_factory.mktemp("half") / "model"
    save_model_dir(path, state.module, ModelCard(cfg.model, 1, preprocessing_of(cfg)))
    return TrainedModel(cfg, path, arrays, dict(state.best_metrics))


def test_through_the_package_a_half_scale_model_gives_predicts_masks(
    half_scale_model: TrainedModel, tmp_path: Path
) -> None:
    """A model at scale 0.5 takes images at their own size: bioimageio.core runs the package
    (its preprocessing, then the ONNX graph, which resamples inside) on whole images, and its
    masks are predict's: the same on an image of one tile, and where predict blends a larger
    one from Gaussian-weighted tiles, 97 % of the pixels at least (98.3 % measured).
    (bioimageio.core's own `predict` also pads the image by the halo, which changes what the
    network sees at its border.)"""
    from bioimageio.core import Sample, Tensor, create_prediction_pipeline
    from bioimageio.spec import load_model_description

    model, arrays = half_scale_model, half_scale_model.arrays
    info = PackageInfo("half scale")
    out = write_package(model.path, tmp_path / "pkg", arrays.image(0), info, "half")
    descr = load_model_description(out / "rdf.yaml", perform_io_checks=False)
    assert {str(a.id): a.size.min for a in descr.inputs[0].axes[2:]} == {"y": 64, "x": 64}
    threshold = model.cfg.train.threshold
    tiled = np.tile(arrays.image(1), (3, 3, 1))
    with create_prediction_pipeline(descr, weight_format="onnx") as pipeline:
        for image, agreement in ((tiled[:64, :64], 0.999), (tiled[:136, :144], 0.97)):
            x = Tensor.from_numpy(
                image.transpose(2, 0, 1)[None], dims=("batch", "channel", "y", "x")
            )
            sample = Sample(members={"image": x}, stat={}, id="held-out")
            done = pipeline.predict_sample_without_blocking(
                sample, skip_input_padding=True, skip_output_cropping=True
            )
            probabilities = done.members["probabilities"].data.values[0, 0]
            masks = Predictor.from_dir(model.path).predict([image])[0]
            assert masks.mean() > 0.05  # objects found, at their size
            agree = np.mean((probabilities > threshold) == (masks > 0))
            assert agree >= agreement, (image.shape, agree)


def test_bad_input_is_one_line_and_writes_nothing(
    trained_model: TrainedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["export", str(trained_model.path), "--format", "bioimageio", "--out"]
    assert main([*base, str(tmp_path / "a.zip"), "--license", "NOT-A-LICENSE"]) == 1
    assert "--license NOT-A-LICENSE: not an SPDX license identifier" in capsys.readouterr().err
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    assert main([*base, str(taken)]) == 1
    assert f"--out {taken}: exists" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["mine.txt"]
    cfg = trained_model.cfg.model.model_copy(update={"padding": "valid"})
    card = ModelCard(cfg, 1, ModelCard.read(trained_model.path).preprocessing)
    save_model_dir(tmp_path / "valid", build_model(cfg, 1), card)
    valid = ["export", str(tmp_path / "valid"), "--format", "bioimageio", "--out"]
    assert main([*valid, str(tmp_path / "b.zip")]) == 1
    err = capsys.readouterr().err
    assert "cannot be a BioImage.IO package: an unpadded" in err
    assert len(err.splitlines()) == 1
    onnx = ["export", str(trained_model.path), "--out", str(tmp_path / "m.onnx"), "--author", "A"]
    assert main(onnx) == 1
    assert "--author: only --format bioimageio takes it" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken", "valid"]
