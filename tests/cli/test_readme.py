"""README.md's tour, run as a user runs it: every command of its two blocks (your data; use the
best model), read from the README,
in a fresh folder laid out like the checkout, with only the environment the README sets up,
on a real local Ray and the SQLite MLflow store the commands make themselves. Searches are
shrunk by appended ``--set`` overrides, the dataset by repeating ``--n`` / ``--size``.

(`make demo` and `make test`, the README's first block, are what CI itself runs.)"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import free_port, wait_for_http
from PIL import Image
from readme import (
    README,
    Command,
    Shell,
    block,
    checkout_like,
    python_block,
    resolved,
    walk,
)

SEARCH_SHRINK = (
    *("--set", "patch_size=32", "--set", "patches_per_epoch=8", "--set", "image_size=32"),
    *("--set", "val_fraction=0.25", "--set", "dsb_every=0"),
    # a shrunk search: no compute budget, and a champion whatever Otsu scores
    *("--set", "search.compute=null", "--set", "search.champion_must_beat_otsu=false"),
    *("--set", "search.latency_image=64"),  # the export is the tour's: kept
    *("--set", "epochs=1", "--set", "search.num_samples=2"),
    *("--set", "search.scheduler.type=fifo", "--set", "search.scheduler.grace_period=1"),
)
DATA_SHRINK = ("--n", "24", "--size", "64", "--max-size", "96")
NEW_IMAGES = "new_images/"  # the README's placeholder for the user's own images


@dataclass
class Tour:
    """What each command of the tour printed, and what the tests need to look further. The
    commands that only read what the search left (best, report, the UI, predict, serve) run
    at the same time, in ``pool``, each with the environment the lines before it set up."""

    folder: Path
    shell: Shell
    ran: dict[str, list[Any]] = field(default_factory=dict)  # command prefix -> results
    truth: dict[str, np.ndarray] = field(default_factory=dict)  # new image stem -> mask
    pool: ThreadPoolExecutor | None = None

    def first(self, prefix: str) -> Any:
        return self.ran[prefix][0]


def _http_json(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def _new_images(folder: Path) -> dict[str, np.ndarray]:
    """Images the search never saw, as a user's folder of plain image files, and their truth."""
    from unet_search.data.synthetic import make_synthetic

    source = folder.parent / "new_dsb"
    make_synthetic(source, n=4, size=64, seed=99)
    folder.mkdir()
    truth = {}
    for item in sorted(source.iterdir()):
        image = item / "images" / f"{item.name}.png"
        (folder / image.name).write_bytes(image.read_bytes())
        masks = [np.asarray(Image.open(p)) > 0 for p in (item / "masks").iterdir()]
        truth[item.name] = np.any(masks, axis=0)
    return truth


def _ui(tour: Tour, command: Command) -> dict[str, Any]:
    """`mlflow ui` as the README starts it: the search's parent run is there, FINISHED. One
    server process, not its default four (each imports MLflow's server: 16 s to the first
    answer instead of 9.5 on 2 cores)."""
    port = free_port()
    extra = ("--port", str(port), "--workers", "1")
    server = tour.shell.start(command, *extra, log=tour.folder / "ui.log")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/health", server.proc, command.text)
        experiments = _http_json(f"{base}/api/2.0/mlflow/experiments/search", {"max_results": 9})
        found = _http_json(
            f"{base}/api/2.0/mlflow/runs/search",
            {
                "experiment_ids": [e["experiment_id"] for e in experiments["experiments"]],
                "filter": "tags.`unet_search.kind` = 'search'",
            },
        )
        return {r["info"]["run_name"]: r["info"]["status"] for r in found.get("runs", [])}
    finally:
        server.stop()


def _serve(tour: Tour, command: Command) -> list[np.ndarray]:
    """`mlflow models serve` as the README starts it, asked for the new images' masks."""
    port = free_port()
    server = tour.shell.start(command, "-p", str(port), log=tour.folder / "serve.log")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/ping", server.proc, command.text)
        masks = []
        for path in _images(tour):  # one request each: the images' sizes differ
            batch = np.asarray(Image.open(path).convert("RGB"))[None]
            answer = _http_json(f"{base}/invocations", {"inputs": batch.tolist()})
            masks.append(np.asarray(answer["predictions"])[0])
        return masks
    finally:
        server.stop()


def _images(tour: Tour) -> list[Path]:
    return sorted((tour.folder / NEW_IMAGES).glob("*.png"))


def _run(extra: tuple[str, ...] = ()) -> Callable[[Tour, Command], Any]:
    def run(tour: Tour, command: Command) -> Any:
        proc = tour.shell.run(command, *extra)
        assert proc.returncode == 0, f"{command.where}: {command.text}\n{proc.stderr[-3000:]}"
        return proc

    return run


def _at_once(handler: Callable[[Tour, Command], Any]) -> Callable[[Tour, Command], Future[Any]]:
    """``handler`` started now in the tour's pool, with the shell as it is now; its result
    is read once the walk has ended."""

    def start(tour: Tour, command: Command) -> Future[Any]:
        assert tour.pool is not None
        return tour.pool.submit(handler, replace(tour, shell=tour.shell.snapshot()), command)

    return start


HANDLERS: dict[str, Callable[[Tour, Command], Any]] = {
    "source ": lambda tour, command: tour.shell.keep(command),
    "export ": lambda tour, command: tour.shell.keep(command),
    "unet-search make-data": _run(DATA_SHRINK),
    "unet-search check-data": _run(),
    "unet-search plan": _run(),
    "unet-search search": _run(SEARCH_SHRINK),
    "unet-search best": _at_once(_run()),
    "unet-search report": _at_once(_run()),
    "unet-search predict": _at_once(_run()),
    "unet-search export": _at_once(_run()),
    "mlflow ui": _at_once(_ui),
    "mlflow models serve": _at_once(_serve),
}


@pytest.fixture(scope="module")
def tour(tmp_path_factory: pytest.TempPathFactory) -> Tour:
    """Every command of the tour, in the README's order; a command no handler knows fails."""
    folder = checkout_like(tmp_path_factory.mktemp("tour") / "checkout")
    with ThreadPoolExecutor(max_workers=3) as pool:
        result = Tour(folder, Shell(folder), pool=pool)
        result.truth = _new_images(folder / NEW_IMAGES)
        tour_blocks = [
            *block(README, "unet-search make-data"),
            *block(README, "unet-search predict"),
        ]
        walk(tour_blocks, HANDLERS, result, result.ran)
        for results in result.ran.values():  # every command has ended, or failed here
            results[:] = [resolved(r) for r in results]
    return result


@pytest.mark.slow
def test_the_tour_searches_and_closes_with_where_everything_is(tour: Tour) -> None:
    assert "images       24" in tour.first("unet-search check-data").stdout
    (search,) = tour.ran["unet-search search"]
    out, name = search.stdout, "quick-1"
    # quick.yaml's `auto` settings are what `plan` printed for the same data and budget
    plan = tour.first("unet-search plan").stdout
    for leaf in ("scale", "normalization", "batch_size"):
        line = re.search(rf"^{leaf} .+$", plan, re.M)[0]
        assert line in out.splitlines(), leaf
    assert f"search {name}: 2 trials 2 finished" in out, out[-3000:]
    report = Path(re.search(r"^report +(\S+)", out, re.M)[1])
    log = Path(re.search(r"^search log +(\S+)", out, re.M)[1])
    assert report == tour.folder / "unet-search-runs" / "reports" / name / "index.html"
    assert report.is_file() and log.is_file() and log.name == f"{name}.log"
    assert f"search {name}: Ray's own log is {log}" in out
    # The closing line for a SQLite store is the command that serves it.
    store = tour.folder / "unet-search-runs" / "mlflow.db"
    ui = re.search(r"^MLflow UI +(.+)$", out, re.M)[1]
    run_id = re.search(r"also in MLflow: \S+ of run (\w+)\)", out)[1]
    assert ui == (
        f"mlflow ui --backend-store-uri sqlite:///{store}  then open "
        f"http://127.0.0.1:5000/#/experiments/1/runs/{run_id}"
    )
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    assert client.get_run(run_id).info.run_name == name
    assert {a.path for a in client.list_artifacts(run_id, "logs")} == {f"logs/{name}.log"}
    assert "report/index.html" in {a.path for a in client.list_artifacts(run_id, "report")}
    logged = Path(client.download_artifacts(run_id, f"logs/{name}.log", str(tour.folder / "dl")))
    assert logged.read_text() == log.read_text()  # the progress lines, Ray's and Tune's
    assert re.search(
        r"unet_search.search.live: \[\d\d:\d\d\] trials: .*2 finished", log.read_text()
    )
    assert "model unet-quick v1 is the new champion" in out
    # 24 images: 2 held out by default, scored once at the end beside Otsu on the same images
    held_out = re.search(r"^held-out test  test_dice (\S+)  test_iou .* on 2 images: ", out, re.M)
    parent = client.get_run(run_id).data.metrics
    assert held_out and float(held_out[1]) == pytest.approx(parent["test_dice"], abs=1e-4)
    assert "otsu_test_dice" in parent


@pytest.mark.slow
def test_the_tour_best_report_and_ui_show_the_search(tour: Tour) -> None:
    best = tour.first("unet-search best").stdout
    assert best.count("FINISHED") == 2 and "t000 baseline seed_keras" in best, best
    # what is registered: versions, aliases, scores and the gate's reason
    assert "registered   unet-quick (load with models:/unet-quick@ALIAS)" in best, best
    line = r"^  v1 +@champion +quick-1 val_dice \d\.\d{4} test_dice \d\.\d{4}\n +no champion yet$"
    assert re.search(line, best, re.M), best
    report = tour.first("unet-search report").stdout
    assert f"{tour.folder}/unet-search-runs/reports/quick-1/index.html" in report
    assert tour.first("mlflow ui") == {"quick-1": "FINISHED"}


@pytest.mark.slow
def test_the_champion_segments_new_images_the_same_everywhere(tour: Tour) -> None:
    """`unet-search predict`, `mlflow models serve` and both calls of the Python block give
    the same masks of the new images, at their own sizes."""
    tour.first("unet-search predict")
    masks = {
        p.stem: np.asarray(Image.open(p)) > 0 for p in sorted((tour.folder / "masks").iterdir())
    }
    assert set(masks) == set(tour.truth)
    # At each image's own size. (A champion of one epoch on 24 images segments little: its
    # quality through `predict` is measured where training is long enough, not here.)
    assert all(masks[k].shape == tour.truth[k].shape for k in masks)
    # The second predict: instance labels (16-bit) inside the masks, one CSV row per object.
    (_, objects_run, onnx_run) = tour.ran["unet-search predict"]
    assert "instance label image(s)" in objects_run.stdout
    rows = list(csv.DictReader((tour.folder / "objects.csv").open()))
    for name, mask in masks.items():
        labels = np.asarray(Image.open(tour.folder / "objects" / f"{name}.png")).astype(int)
        assert labels.shape == mask.shape and not (labels[~mask] > 0).any()
        ids = sorted(set(np.unique(labels)) - {0})
        assert [int(r["id"]) for r in rows if r["image"] == name] == ids
    # The ONNX export registered with the champion: the file `export` writes, and
    # onnxruntime's masks of the new images, the masks PyTorch gave.
    assert "masks-onnx" in onnx_run.stdout
    for name, mask in masks.items():
        onnx_mask = np.asarray(Image.open(tour.folder / "masks-onnx" / f"{name}.png")) > 0
        assert (onnx_mask == mask).mean() >= 0.999, name
    import onnx

    # The BioImage.IO package `export` wrote, from the one registered with the champion: its
    # license as asked, its test image the registered package's (a validation image)
    from bioimageio.spec import load_model_description

    package = load_model_description(tour.folder / "champion.zip", perform_io_checks=False)
    assert str(package.license) == "CC-BY-4.0"
    assert package.config.model_dump()["unet_search"]["model_name"] == "unet-quick"
    import zipfile

    import mlflow
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tour.folder / 'unet-search-runs' / 'mlflow.db'}"
    where = MlflowClient(store).get_model_version_download_uri("unet-quick", "1")
    model = mlflow.artifacts.download_artifacts(
        artifact_uri=where, dst_path=str(tour.folder / "registered"), tracking_uri=store
    )
    registered = np.load(Path(model) / "bioimageio" / "test_input.npy")
    with zipfile.ZipFile(tour.folder / "champion.zip") as zipped:
        written = np.load(io.BytesIO(zipped.read("test_input.npy")))
    assert np.array_equal(written, registered)  # the registered package's validation image
    exported = onnx.load(str(tour.folder / "champion.onnx"))
    assert [i.name for i in exported.graph.input] == ["image"]
    sidecar = json.loads((tour.folder / "champion.preprocessing.json").read_text())
    assert sidecar["onnx"]["size"] is None and sidecar["input_mode"] == "patch"
    served = tour.first("mlflow models serve")
    expected = [masks[k] for k in sorted(masks)]
    assert len(served) == len(expected)
    assert all(np.array_equal(s > 0, e) for s, e in zip(served, expected, strict=True))

    # The README's Python block, statement by statement: `masks` after each assignment.
    code = python_block(README, "unet_search.load_model")
    script = f"""
import ast, json
import numpy as np
from PIL import Image
images = {[str(p) for p in _images(tour)]!r}
batch = np.stack([np.asarray(Image.open(images[0]).convert("RGB"))])  # (N,H,W,3): one size
found = []
for node in ast.parse({code!r}).body:
    exec(compile(ast.Module([node], []), "README.md", "exec"))
    if isinstance(node, ast.Assign) and "masks" in [getattr(t, "id", "") for t in node.targets]:
        found.append([np.asarray(m).astype(int).tolist() for m in masks])
print(json.dumps(found))
"""
    env = dict(tour.shell.env, MLFLOW_TRACKING_URI=tour.shell.value("$MLFLOW_TRACKING_URI"))
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tour.folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded, pyfunc = json.loads(proc.stdout.splitlines()[-1])
    assert len(loaded) == len(expected) and len(pyfunc) == 1
    assert all(np.array_equal(np.asarray(m) > 0, e) for m, e in zip(loaded, expected, strict=True))
    assert np.array_equal(np.asarray(pyfunc[0]) > 0, expected[0])
