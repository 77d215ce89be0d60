"""The console script as a user runs it: real subprocesses, real Ray, real SQLite MLflow."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from unet_search.distributed.faults import FAULT_ENV
from unet_search.models.build import load_model_dir
from unet_search.models.card import ModelCard
from unet_search.space.load import load_space

EXE = str(Path(sys.executable).with_name("unet-search"))


def run(
    *args: str,
    home: Path,
    timeout: int = 600,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **(env or {}), "UNET_SEARCH_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [EXE, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )


def assert_user_error(proc: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")
    assert fragment in proc.stderr


@pytest.mark.parametrize(
    "command",
    ["make-data", "check-data", "plan", "train", "models", "search", "best", "predict", "export"],
)
def test_every_subcommand_has_help_with_an_example(command: str, tmp_path: Path) -> None:
    proc = run(command, "--help", home=tmp_path)
    assert proc.returncode == 0
    assert "example: unet-search " + command in proc.stdout


def test_usage_error_exits_2(tmp_path: Path) -> None:
    assert run("train", home=tmp_path).returncode == 2  # --data missing
    assert run("frobnicate", home=tmp_path).returncode == 2


def test_models_lists_presets_and_options_with_exact_counts(tmp_path: Path) -> None:
    proc = run("models", home=tmp_path)
    assert proc.returncode == 0
    assert "seed_keras" in proc.stdout and "1,941,105" in proc.stdout
    assert "original_unet" in proc.stdout and "31,030,658" in proc.stdout
    assert "mobilenet_v2" in proc.stdout and "unetplusplus" in proc.stdout
    rows = {
        tuple(line.split()[:2]): int(line.split()[2].replace(",", ""))
        for line in proc.stdout.splitlines()
        if line.startswith("  ") and line.split()[0].endswith(":")
    }
    # the reference UNet is seed_keras with batch norm: +2 per channel, -1 conv bias each
    # (1472 channels in its 18 3x3 convs)
    plain = rows[("block:", "plain")]
    assert plain == 1_941_105 + 1472
    assert rows[("pooling:", "max")] == rows[("attention:", "none")] == plain
    assert rows[("pooling:", "avg")] == plain  # pooling has no weights
    # a strided conv per level: 9 c^2 + c, c = 16, 32, 64, 128
    assert rows[("pooling:", "strided")] == plain + sum(9 * c * c + c for c in (16, 32, 64, 128))
    assert rows[("block:", "separable")] < plain / 4 < plain < rows[("block:", "residual")]
    for option in ("dilated", "aspp", "transformer"):
        assert rows[("bottleneck:", option)] > plain
    assert rows[("attention:", "gate")] > rows[("attention:", "scse")] > plain
    assert ("arch:", "unet3plus") in rows and "tu-<a timm model>" in proc.stdout


def test_make_data_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert_user_error(run("make-data", "synthetic", str(out), home=tmp_path), "not empty")
    assert (out / "keep.txt").read_text() == "precious"


def test_check_data_summary_and_errors(synth_dir: Path, tmp_path: Path) -> None:
    proc = run("check-data", str(synth_dir), home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "images       12" in proc.stdout and "fingerprint" in proc.stdout
    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    (bad / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(bad / "images" / "a.png")
    assert_user_error(
        run("check-data", str(bad), home=tmp_path / "h2"), "a.png: image has no mask"
    )
    assert not (tmp_path / "h2").exists()  # nothing written for bad data


def test_train_rejects_bad_config_before_anything_starts(synth_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert_user_error(
        run("train", "--data", str(synth_dir), "--set", "depht=3", home=home),
        "unknown key `depht`",
    )
    assert_user_error(
        run("train", "--data", str(synth_dir), "--set", "arch=unetplusplus", home=home),
        "needs an smp encoder",
    )
    assert not home.exists()


@pytest.fixture()
def another_local_ray() -> Iterator[None]:
    """Another local Ray on the machine (a notebook's, another search's), up for the test."""
    code = "import ray, sys; ray.init(address='local'); print('up', flush=True); sys.stdin.read()"
    other = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert other.stdout is not None and other.stdout.readline().strip() == "up"
    yield
    assert other.stdin is not None
    other.stdin.close()
    other.wait(timeout=120)


@pytest.mark.slow
def test_train_two_ddp_workers_end_to_end_a_killed_worker_resumes_in_the_same_run(
    synth_dir: Path, tmp_path: Path, another_local_ray: None
) -> None:
    """... while another local Ray runs on the machine: the run's Ray is its own, and every
    process of it (Ray Train's placement-group cleaner too) talks to that one alone."""
    home, marker = tmp_path / "home", tmp_path / "killed"
    proc = run(
        "train",
        "--data",
        str(synth_dir),
        "--workers",
        "2",
        "--experiment",
        "e2e",
        "--set",
        "epochs=2",
        "--set",
        "patch_size=32",
        "--set",
        "patches_per_epoch=8",
        "--set",
        "arch=unet3plus",  # UNet 3+'s full-scale skips under DDP (every parameter used)
        "--set",
        "block=residual",  # and the variants' modules
        "--set",
        "bottleneck=aspp",
        "--set",
        "upsampling=bilinear",
        "--set",
        "unet3plus_channels=4",
        "--set",
        "depth=3",
        "--set",
        "base_filters=8",
        "--set",
        "val_fraction=0.25",
        "--set",
        "num_sample_images=3",
        "--set",
        "normalization=auto",
        "--set",
        "batch_size=auto",
        "--set",
        "max_failures=1",
        home=home,
        env={FAULT_ENV: f"epoch=1,marker={marker}"},  # a worker dies after epoch 1, once
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "run id" in proc.stdout and "mlflow ui --backend-store-uri sqlite:///" in proc.stdout
    assert "multiple active Ray instances" not in proc.stdout + proc.stderr
    assert "PlacementGroupCleaner" not in proc.stdout + proc.stderr
    planned = dict(
        line.split()[:2]
        for line in proc.stdout.splitlines()
        if line.startswith(("norm", "batch", "target", "scale"))
    )
    assert planned["batch_size"] == "8"  # the cpu-quick budget's
    assert planned["normalization"] in ("zscore", "dataset")
    assert planned["target"] == "boundary"  # not given: planned (the nuclei touch)

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("e2e")
    runs = client.search_runs([experiment.experiment_id])
    assert marker.exists()  # a worker really died after epoch 1
    assert len(runs) == 1  # the restarted worker group logs to the same run
    run_ = runs[0]
    assert run_.info.status == "FINISHED"
    assert run_.info.run_id in proc.stdout
    assert run_.data.params["num_workers"] == "2" and run_.data.params["encoder"] == "none"
    assert run_.data.params["arch"] == "unet3plus"
    assert (run_.data.params["block"], run_.data.params["bottleneck"]) == ("residual", "aspp")
    assert run_.data.params["normalization"] == planned["normalization"]  # resolved, logged
    assert run_.data.params["batch_size"] == "8"
    assert run_.data.params["target"] == "boundary" and run_.data.params["scale"] == "1.0"
    assert run_.data.tags["ray.world_size"] == "2"
    check = run(
        "check-data",
        str(synth_dir),
        "--set",
        "val_fraction=0.25",
        home=home,
    )
    assert run_.data.tags["unet_search.data_fingerprint"] in check.stdout
    for key in (
        "train_loss",
        "val_loss",
        "val_dice",
        "val_iou",
        "val_dsb_score",
        "images_per_s",
        "epoch_s",
        "lr",
    ):
        history = client.get_metric_history(run_.info.run_id, key)
        # once each: epoch 1 was not re-run, training resumed from its checkpoint
        assert sorted(m.step for m in history) == [1, 2], key
    dice = [m.value for m in client.get_metric_history(run_.info.run_id, "val_dice")]
    assert all(0.0 <= d <= 1.0 for d in dice)
    assert run_.data.metrics["best_val_dice"] == pytest.approx(max(dice))

    local = Path(client.download_artifacts(run_.info.run_id, "", str(tmp_path / "art")))
    with Image.open(local / "samples" / "predictions.png") as png:
        assert png.size[1] > 3 * 160  # three samples, one row each
    model, card = load_model_dir(local / "best_model")
    pre = card.preprocessing
    assert (pre["input_mode"], pre["patch_size"], pre["tile_overlap"]) == ("patch", [32, 32], 0.5)
    assert pre["normalization"] == planned["normalization"]
    assert pre["target"] == "boundary"  # background / interior / boundary
    assert model(torch.zeros(1, 3, 40, 52)).shape == (1, 3, 40, 52)


def test_plan_prints_each_value_with_its_reason_and_writes_a_space(
    synth_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "nuclei.yaml"
    proc = run("plan", str(synth_dir), "--out", str(out), home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    # images of median 48x60 px (synth_dir): the patch fits them (rounded up to 16s), and
    # the epoch keeps cpu-quick's pixels (128 patches of 96 px)
    assert lines["patch_size"].split()[1] == "48x64" and "smaller than" in lines["patch_size"]
    assert lines["patches_per_epoch"].split()[1] == "384"
    assert lines["scale"].split()[1] == "1" and "own pixels" in lines["scale"]
    assert lines["depth"].split()[1] == "3..3"
    space = load_space(out)
    assert space.base_config().data.patch_size == (48, 64)
    assert {(p.low, p.high) for p in space.params if p.name == "depth"} == {(3, 3)}
    before = out.read_text()
    again = run("plan", str(synth_dir), "--out", str(out), home=tmp_path / "home")
    assert_user_error(again, "already exists")
    assert out.read_text() == before  # nothing overwritten
    assert_user_error(
        run("plan", str(synth_dir), "--budget", "tpu", home=tmp_path / "home"),
        "must be cpu-quick, cpu or gpu-<GiB",
    )


def test_search_rejects_a_bad_space_before_anything_starts(
    synth_dir: Path, tmp_path: Path
) -> None:
    space = tmp_path / "bad.yaml"
    space.write_text("name: bad\nparams:\n  depth: {type: int, low: 5, high: 3}\n")
    home = tmp_path / "home"
    proc = run("search", "--space", str(space), "--data", str(synth_dir), home=home)
    assert_user_error(proc, "`params.depth` needs `low <= high`, but got [5, 3]")
    assert str(space) in proc.stderr
    assert not home.exists()


def test_best_of_an_unknown_search_is_a_user_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert_user_error(run("best", "nope-1", home=home), "no MLflow store here yet")
    assert not home.exists()  # a read-only command creates nothing
    from unet_search.tracking.client import ensure_experiment

    ensure_experiment(f"sqlite:///{home / 'mlflow.db'}", "x", home)
    assert_user_error(run("best", "nope-1", home=home), "no search named 'nope-1'")


def test_predict_writes_masks_at_original_sizes(tmp_path: Path) -> None:
    from unet_search.core.sections import ModelConfig
    from unet_search.models.build import build_model, save_model_dir

    cfg = ModelConfig(depth=2, base_filters=4)
    save_model_dir(
        tmp_path / "model",
        build_model(cfg, 1),
        ModelCard(
            cfg,
            1,
            {
                "image_size": 32,
                "normalization": "unit",
                "in_channels": 3,
                "num_classes": 1,
                "threshold": 0.5,
            },
        ),
    )
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((37, 53, 3), np.uint8)).save(images / "a.png")
    Image.fromarray(np.zeros((20, 11), np.uint16)).save(images / "b.png")
    (images / "notes.txt").write_text("not an image")
    # --output is the user's path as given: relative to where the command runs, never to
    # the work dir (UNET_SEARCH_HOME)
    (tmp_path / "here").mkdir()
    proc = run(
        "predict",
        "--model",
        str(tmp_path / "model"),
        "--input",
        str(images),
        "--output",
        "masks",
        home=tmp_path / "home",
        cwd=tmp_path / "here",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "wrote 2 mask(s) to masks"
    out = tmp_path / "here" / "masks"
    sizes = {p.name: Image.open(p).size for p in sorted(out.iterdir())}
    assert sizes == {"a.png": (53, 37), "b.png": (11, 20)}
    assert not (tmp_path / "home" / "masks").exists()
    assert_user_error(
        run(
            "predict",
            "--model",
            str(tmp_path / "images"),
            "--input",
            str(images),
            "--output",
            str(tmp_path / "other"),
            home=tmp_path / "home",
        ),
        "is not a unet-search model",
    )


def test_a_relative_storage_inside_a_ray_job_is_refused_before_anything_starts(
    synth_dir: Path, tmp_path: Path
) -> None:
    """Inside a Ray job a relative path would point into the job's working_dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNET_SEARCH_", "MLFLOW_"))}
    env["RAY_JOB_CONFIG_JSON_ENV_VAR"] = '{"runtime_env": {}}'
    space = Path(__file__).parents[2] / "search_spaces" / "quick.yaml"
    for verb in (["search", "--space", str(space), "--data", str(synth_dir)], ["resume", "q-1"]):
        proc = subprocess.run(
            [EXE, *verb, "--storage", "runs"],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=300,
            check=False,
        )
        assert_user_error(proc, "--storage / UNET_SEARCH_STORAGE 'runs': must be an absolute")
        assert proc.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # nothing written


def run_on_a_terminal(
    *args: str, home: Path, rows: int = 40, columns: int = 120, timeout: int = 600
) -> tuple[int, bytes]:
    """The console script with its stdout a pseudo-terminal of ``rows`` x ``columns`` (as
    a user's): its exit code and every byte it wrote there (stderr apart, in
    ``home/stderr.txt`` when ``home`` exists)."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    import time

    env = {**os.environ, "UNET_SEARCH_HOME": str(home), "TERM": "xterm-256color"}
    for name in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "COLUMNS", "LINES"):
        env.pop(name, None)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    errors = (home / "stderr.txt").open("wb") if home.is_dir() else subprocess.DEVNULL
    proc = subprocess.Popen(
        [EXE, *args], stdout=slave, stderr=errors, stdin=subprocess.DEVNULL, env=env
    )
    os.close(slave)
    out, deadline = bytearray(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the other side closed: the process has ended
                break
            if not data:
                break
            out += data
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=60), bytes(out)


def _screen(output: bytes, rows: int = 40, columns: int = 120) -> list[str]:
    """What a terminal of that size shows once ``output`` has been written to it."""
    import pyte

    screen = pyte.Screen(columns, rows)
    pyte.ByteStream(screen).feed(output)
    return [line.rstrip() for line in screen.display]


def test_a_search_on_a_terminal_draws_a_live_panel_that_gives_way_to_the_summary(
    synth_dir: Path, tmp_path: Path
) -> None:
    """On a terminal the search draws one panel, updated in place (no progress lines), with
    the budget's bar, the best against the baseline and the trials; at the end it is gone
    and the last screen holds the summary, which fits in 40 lines. The search has two
    objectives and a parameter limit, given by `--set` on quick.yaml (a planned space whose
    metric and mode yield to them)."""
    space = Path(__file__).parents[2] / "search_spaces" / "quick.yaml"
    shrink = [
        *("patch_size=32", "patches_per_epoch=8", "image_size=32", "val_fraction=0.25"),
        *("dsb_every=0", "epochs=1", "search.num_samples=2", "search.compute=null"),
        *("search.scheduler.type=fifo", "search.scheduler.grace_period=1", "search.onnx=false"),
        "search.latency_image=64",
        "search.champion_must_beat_otsu=false",
        "search.objectives=[{metric: val_iou}, {metric: num_parameters}]",
        "search.constraints=[{metric: num_parameters, max: 3.0e6}]",
    ]
    sets = [arg for item in shrink for arg in ("--set", item)]
    home = tmp_path / "h"
    home.mkdir()
    code, output = run_on_a_terminal(
        "search", "--space", str(space), "--data", str(synth_dir), *sets, home=home
    )
    text = output.decode("utf-8", errors="replace")
    assert code == 0, text[-2000:] + (home / "stderr.txt").read_text()[-2000:]
    assert "Successfully registered" not in (home / "stderr.txt").read_text()  # in the log
    assert "search quick-1" in text and "elapsed" in text and "/ 2 trials" in text  # the panel
    assert "━" in text  # its bar
    assert "] trials: " not in text  # no progress lines on a terminal: the panel instead
    assert "Configuration for experiment" not in text  # nor Tune's boxes
    screen = _screen(output)
    first = next(i for i, line in enumerate(screen) if line.startswith("search quick-1: 2 trials"))
    last = next(i for i, line in enumerate(screen) if line.startswith("MLflow UI"))
    assert 0 <= first < last < 40  # the whole summary on the last screen
    assert not any("elapsed" in line for line in screen)  # the panel gave way to it
    assert "model unet-quick v1 is the new champion" in "\n".join(screen)
    assert any(line.startswith("Pareto front (1 trials") for line in screen), screen
    assert "note         `search.metric` val_dice of quick.yaml yields to --set search." in text
    tags = (
        MlflowClient(f"sqlite:///{home / 'mlflow.db'}").get_model_version("unet-quick", "1").tags
    )
    assert tags["unet_search.metric"] == "val_iou"
    assert tags["unet_search.objectives"] == "val_iou:max,num_parameters:min"
    assert tags["unet_search.constraints"] == "num_parameters<=3e+06"


def test_predict_on_a_terminal_shows_a_progress_bar_and_through_a_pipe_none(
    tmp_path: Path,
) -> None:
    from unet_search.core.config import RunConfig
    from unet_search.models.build import build_model, save_model_dir
    from unet_search.train.sliding import preprocessing_of

    cfg = RunConfig.from_dict({"depth": 2, "base_filters": 4, "patch_size": 32})
    save_model_dir(
        tmp_path / "model",
        build_model(cfg.model, 1),
        ModelCard(cfg.model, 1, preprocessing_of(cfg)),
    )
    images = tmp_path / "images"
    images.mkdir()
    for i in range(20):
        Image.fromarray(np.full((40, 50, 3), i * 10, np.uint8)).save(images / f"{i:02d}.png")
    args = ["predict", "--model", str(tmp_path / "model"), "--input", str(images)]
    code, output = run_on_a_terminal(*args, "--output", str(tmp_path / "t"), home=tmp_path)
    text = output.decode("utf-8", errors="replace")
    assert code == 0 and "predicting" in text and "20/20" in text  # the bar, at its end
    assert _screen(output)[0] == f"wrote 20 mask(s) to {tmp_path / 't'}"  # then gone
    piped = run(*args, "--output", str(tmp_path / "p"), home=tmp_path)
    assert piped.returncode == 0
    assert piped.stdout == f"wrote 20 mask(s) to {tmp_path / 'p'}\n"  # no bar in a pipe
