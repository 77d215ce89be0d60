"""Shared fixtures: tiny synthetic datasets, an isolated work dir, one Ray per session."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray exports metrics every 10 s by default; a test search's trials can start and end inside
# that. Every 2 s (gauges then live 4 s unrefreshed; LiveView refreshes them every 2 s).
os.environ.setdefault("RAY_metrics_report_interval_ms", "2000")
# Ray starts its workers at niceness +15 (worker_niceness): a test's trials would then run
# below everything `make test` starts beside this pytest at nice 10 (mypy, the side pytest),
# the opposite of what that nice is for. Workers run at their pytest's own priority.
os.environ.setdefault("RAY_worker_niceness", "0")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 synthetic images, 48 px high, DSB2018 layout (read-only for tests)."""
    from unet_search.data.synthetic import make_synthetic

    out = tmp_path_factory.mktemp("synth") / "data"
    make_synthetic(out, n=12, size=48, seed=7)
    return out


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with nothing in it but its tables: MLflow makes them with ~2 s of
    migrations (CPU) a new store, so the suite makes them once and each test's store starts
    as a copy. A store the product makes itself is tested where a command runs as a user
    runs it (test_readme.py, test_cli.py, test_cluster.py)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def store_in(folder: Path, empty_store: Path) -> str:
    """The URI of a new MLflow SQLite store ``folder/mlflow.db``, a copy of ``empty_store``."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(empty_store, folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


@pytest.fixture()
def bare_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh UNET_SEARCH_HOME per test, not made yet."""
    home = tmp_path / "home"
    monkeypatch.setenv("UNET_SEARCH_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


@pytest.fixture()
def workdir(bare_workdir: Path, empty_store: Path) -> Path:
    """A fresh UNET_SEARCH_HOME (SQLite MLflow, cache, Ray results) per test, its MLflow
    store (``mlflow.db``) a copy of :func:`empty_store`."""
    store_in(bare_workdir, empty_store)
    return bare_workdir


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A real local Ray, started once for the whole session."""
    import ray

    from unet_search.distributed.trainer import init_ray

    init_ray()
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    yield
    ray.shutdown()
    # No trial of the session's searches opened its run without its Tune state naming it
    # (the final fit's trial once waited 30 s on the exploring trials' state instead).
    unrecorded = [
        line
        for err in sorted(logs.glob("worker-*.err"))
        for line in err.read_text(errors="replace").splitlines()
        if "not in the search's saved state" in line
    ]
    assert unrecorded == [], unrecorded


def wait_for_http(
    url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 120.0
) -> None:
    """Wait until ``url`` answers, failing if ``proc`` (the server) exits or time runs out."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                raise AssertionError(f"{what} did not come up") from None
            time.sleep(0.5)


def fresh_python(code: str, timeout: float = 120.0) -> Any:
    """What ``code``, run in a fresh Python process, prints as JSON on its last line (it must
    exit 0): for what a process imports or does from its start."""
    import json

    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend under ``root``; it can be
    stopped and started again on the same port and store (a server that goes away)."""

    def __init__(self, root: Path, env: dict[str, str] | None = None, *extra: str) -> None:
        self.root, self.env, self.extra = root, env or {}, extra
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MlflowServer:
        mlflow_exe = str(Path(sys.executable).with_name("mlflow"))
        with (self.root / "server.log").open("a") as log:
            self.proc = subprocess.Popen(
                [
                    mlflow_exe,
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--backend-store-uri",
                    f"sqlite:///{self.root / 'server.db'}",
                    "--artifacts-destination",
                    str(self.root / "artifacts"),
                    "--workers",
                    "1",
                    *self.extra,
                ],
                # No GenAI job runners (three more processes): nothing here uses them.
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_http(f"{self.url}/health", self.proc, "mlflow server")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.proc = None

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class WatchedSearch:
    """A finished real search plus what Ray's Prometheus endpoints exported while it ran."""

    outcome: Any  # unet_search.finish.run.SearchResult
    home: Path
    uri: str
    targets: tuple[str, ...]  # host:port of every node's metrics endpoint
    scrapes: tuple[dict[str, list[tuple[dict[str, str], float]]], ...]  # name -> samples

    @property
    def exported(self) -> set[str]:
        return {name for scrape in self.scrapes for name in scrape}


def _scrape(targets: tuple[str, ...]) -> dict[str, list[tuple[dict[str, str], float]]]:
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for target in targets:
        text = requests.get(f"http://{target}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


@pytest.fixture(scope="session")
def watched_search(
    ray_local: None, tmp_path_factory: pytest.TempPathFactory, empty_store: Path
) -> WatchedSearch:
    """One real search (baseline + 3 sampled trials, 2 epochs, overlays every epoch) on the
    session Ray, its MLflow in a SQLite file, with every Ray node's metrics endpoint scraped
    once a second while it runs and until the search's gauges have been exported."""
    import ray
    import yaml

    from unet_search.data.dataset import load_dataset
    from unet_search.data.synthetic import make_synthetic
    from unet_search.finish.run import run_search
    from unet_search.space.load import load_space

    root = tmp_path_factory.mktemp("watched")
    home, data = root / "home", root / "data"
    store_in(home, empty_store)
    make_synthetic(data, n=16, size=48, seed=5)
    space = root / "watched.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "name": "watched",
                "model_name": "unet-watched",
                "fixed": {
                    "patch_size": 32,
                    "patches_per_epoch": 8,
                    "image_size": 32,
                    "epochs": 2,
                    "val_fraction": 0.25,
                    "dsb_every": 0,
                    "depth": 2,
                    "num_sample_images": 2,
                    "samples_every": 1,
                },
                "params": {
                    "base_filters": {"type": "choice", "values": [4, 8]},
                    "dice_weight": {"type": "uniform", "low": 0.0, "high": 1.0},
                    "lr": {"type": "loguniform", "low": 1.0e-3, "high": 1.0e-2},
                },
                "search": {
                    **{"num_samples": 4, "seed": 2, "scheduler": {"type": "fifo"}},
                    **LEAN,
                },
            }
        )
    )
    targets = tuple(
        f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}" for n in ray.nodes() if n["Alive"]
    )
    scrapes: list[dict[str, list[tuple[dict[str, str], float]]]] = []
    stop = threading.Event()

    def scrape_until_stopped() -> None:
        while not stop.is_set():
            scrapes.append(_scrape(targets))
            stop.wait(1.0)

    scraper = threading.Thread(target=scrape_until_stopped, daemon=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNET_SEARCH_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        spec = load_space(space)
        arrays = load_dataset(data, spec.base_config().data, home / "cache")
        scraper.start()
        try:
            outcome = run_search(spec, arrays, data, home)
            # Ray exports a metric up to ~10 s after it is set: wait for the last states.
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline and not _final_states_seen(scrapes, outcome):
                time.sleep(1.0)
        finally:
            stop.set()
            scraper.join()
    return WatchedSearch(outcome, home, f"sqlite:///{home / 'mlflow.db'}", targets, tuple(scrapes))


def _final_states_seen(scrapes: list[dict[str, Any]], outcome: Any) -> bool:
    """Whether any scrape so far holds every trial finished. Any, not the last: the search
    sets its gauges for the last time when its trials end, seconds before ``run_search``
    returns (test scoring, registration, report), and unrefreshed gauges expire after 4 s,
    so the last scrape may already lack them (the wait then ran its whole 40 s)."""
    return any(
        labels.get("search") == outcome.search_id
        and labels.get("state") == "finished"
        and value == len(outcome.trials)
        for scrape in list(scrapes)
        for labels, value in scrape.get("ray_unet_search_trials", [])
    )


# Patch-mode trials on 32-px patches, 8 a epoch; `image_size` is the resize-mode baseline's.
TINY = {
    "patch_size": 32,
    "patches_per_epoch": 8,
    "image_size": 32,
    "val_fraction": 0.25,
    "dsb_every": 0,
    "num_sample_images": 2,
}

# A search's settings where the test is not about what they cost: no ONNX export at
# registration, and latency (inference_ms) measured on a 64-px image, not 512 px.
LEAN = {"onnx": False, "latency_image": 64}
LEAN_SETS = ("--set", "search.onnx=false", "--set", "search.latency_image=64")


def asha_space(name: str, scheduler: str) -> dict:
    """The search space of the ASHA tests (finish/test_run.py; a killed one: test_cluster.py)."""
    # Seeded TPE draws lr 0.01, then 1e-7 (hopeless), then 0.01 again; one trial at a time,
    # rung at epoch 2 (reduction factor 2), metric val_loss.
    return {
        "name": name,
        "fixed": {
            **TINY,
            "patches_per_epoch": 16,  # 8 steps: lr 0.01 is clearly ahead at the rung
            "epochs": 4,
            "depth": 2,
            "base_filters": 8,
            "loss": "bce",
            "lr_schedule": "none",
            "batch_size": 2,
        },
        "params": {"lr": {"type": "choice", "values": [0.01, 1.0e-7]}},
        "search": {
            "num_samples": 3,
            "metric": "val_loss",
            "seed": 10,
            "baseline": "none",
            "max_concurrent_trials": 1,
            "scheduler": {"type": scheduler, "grace_period": 2, "reduction_factor": 2},
            "default_trial": False,  # the draws above are TPE's
            **LEAN,
        },
    }


@dataclass(frozen=True)
class TrainedModel:
    """A small binary model trained here on ``synth_dir`` and saved as a run saves it."""

    cfg: Any  # RunConfig
    path: Path  # model.safetensors + model_config.json
    arrays: Any  # DatasetArrays of synth_dir, split by cfg
    best: dict[str, float]  # the kept epoch's validation metrics


@pytest.fixture(scope="session")
def trained_model(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    import torch

    from unet_search.core.config import RunConfig
    from unet_search.data.dataset import load_dataset
    from unet_search.models.build import build_model, save_model_dir
    from unet_search.models.card import ModelCard
    from unet_search.train.engine import build_loaders, fit, new_training_state, seed_everything
    from unet_search.train.losses import build_loss
    from unet_search.train.sliding import preprocessing_of

    cfg = RunConfig.from_dict(
        {
            **{"depth": 2, "base_filters": 8, "patch_size": 32, "patches_per_epoch": 64},
            **{"epochs": 3, "lr": 3e-3, "val_fraction": 0.25, "dsb_every": 1},
        }
    )
    arrays = load_dataset(synth_dir, cfg.data)
    seed_everything(0)
    train, val = build_loaders(cfg, arrays, rank=0, world=1)
    cpu = torch.device("cpu")
    state = new_training_state(build_model(cfg.model, 1), cfg, len(train), cpu)
    fit(state, cfg, train, val, build_loss(cfg.loss), cpu)
    state.module.load_state_dict(state.best_state or state.module.state_dict())
    path = tmp_path_factory.mktemp("trained") / "model"
    save_model_dir(path, state.module, ModelCard(cfg.model, 1, preprocessing_of(cfg)))
    return TrainedModel(cfg, path, arrays, dict(state.best_metrics))


@dataclass(frozen=True)
class TargetModels:
    """Small UNets trained here on one synthetic style with each target, at equal budget,
    and held-out images of that style no run saw."""

    models: dict[str, Path]  # target -> model folder (as a run saves it)
    held_out: Path  # a DSB2018-layout folder: images and their instance masks


def train_targets(root: Path, style: str, leaves: dict[str, Any]) -> TargetModels:
    """Train a semantic and a boundary UNet (depth 3, 8 filters, 64-px patches) on 10
    images of ``style`` (128-160 px, objects ~12 px) with ``leaves`` (epochs, patches)."""
    import torch

    from unet_search.core.config import RunConfig
    from unet_search.data.dataset import load_dataset
    from unet_search.data.synthetic import make_synthetic
    from unet_search.models.build import build_model, save_model_dir
    from unet_search.models.card import ModelCard
    from unet_search.train.engine import build_loaders, fit, new_training_state, seed_everything
    from unet_search.train.losses import loss_of
    from unet_search.train.sliding import preprocessing_of

    torch.set_num_threads(2)
    kind = {"size": 128, "max_size": 160, "object_px": 12, "style": style}
    make_synthetic(root / "data", n=10, seed=7, **kind)
    make_synthetic(root / "held_out", n=3, seed=8, **kind)
    models = {}
    for target in ("semantic", "boundary"):
        cfg = RunConfig.from_dict(
            {
                **{"depth": 3, "base_filters": 8, "batch_size": 8, "lr": 3e-3},
                **{"patch_size": 64, "val_fraction": 0.25, "dsb_every": 0},
                **{"aug_strength": 0.3, "target": target, **leaves},
            }
        )
        arrays = load_dataset(root / "data", cfg.data)
        seed_everything(0)
        train, val = build_loaders(cfg, arrays, rank=0, world=1)
        cpu = torch.device("cpu")
        model = build_model(cfg.model, cfg.data.network_classes)
        state = new_training_state(model, cfg, len(train), cpu)
        fit(state, cfg, train, val, loss_of(cfg), cpu)
        state.module.load_state_dict(state.best_state or state.module.state_dict())
        models[target] = folder = root / f"model-{target}"
        classes, pre = cfg.data.network_classes, preprocessing_of(cfg)
        save_model_dir(folder, state.module, ModelCard(cfg.model, classes, pre))
    return TargetModels(models, root / "held_out")


@pytest.fixture(scope="session")
def epithelium_models(tmp_path_factory: pytest.TempPathFactory) -> TargetModels:
    """Both targets trained on cells tiling the plane behind membranes one pixel thin."""
    root = tmp_path_factory.mktemp("epithelium")
    return train_targets(root, "epithelium", {"epochs": 6, "patches_per_epoch": 64})


@pytest.fixture(scope="session")
def display() -> Iterator[str]:
    """An X display for the napari tests: napari draws with OpenGL, which Qt's ``offscreen``
    platform gives only through an X display. Xvfb (installed by ``make test``) is started
    here when none is set, by a shell that stops it once this process has ended: stopping it
    while this process's Qt is still connected makes Xlib exit the process with 1, after
    the tests have passed."""
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.fail("Xvfb is not installed: `make test` installs it (Debian's xvfb)")
    server = (
        f"{xvfb} -displayfd 1 -screen 0 1280x1024x24 -nolisten tcp 2>/dev/null & x=$!; "
        f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; kill $x; wait $x"
    )
    watch = subprocess.Popen(
        ["sh", "-c", server], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert watch.stdout is not None
    number = watch.stdout.readline().strip()  # Xvfb writes the display it took, when ready
    if not number:
        pytest.fail("Xvfb did not start")
    os.environ["DISPLAY"] = f":{number}"
    yield os.environ["DISPLAY"]
