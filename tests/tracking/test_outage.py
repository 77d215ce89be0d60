"""The MLflow tracking server goes away mid-search: a real `mlflow server` is stopped while real
trials train on a real Ray, then started again on the same port and store. Every epoch's
metrics must arrive (counted); if the server stays away past the patience, the search stops
with one clear error and `resume` finishes it with nothing lost."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import LEAN, MlflowServer
from mlflow.tracking import MlflowClient

from unet_search import cli
from unet_search.core.names import UNSENT_FILE
from unet_search.core.tags import TAG_SEARCH_ID, TAG_TRIAL_ID
from unet_search.data.synthetic import make_synthetic
from unet_search.tracking.outage import PATIENCE_ENV
from unet_search.tracking.read import find_search

pytestmark = pytest.mark.slow
EPOCHS = 6
# The short outage's trials: room for the epochs it waits for after a stop that may come a
# few epochs late (the server sees a trial's logging in batches).
BLIP_EPOCHS = 10
METRICS = ("epoch", "train_loss", "val_loss", "val_dice", "val_iou", "images_per_s")


def _space(tmp_path: Path, name: str, epochs: int = EPOCHS) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "fixed": {
                    "patch_size": 64,
                    "patches_per_epoch": 16,
                    "image_size": 64,
                    "epochs": epochs,
                    "depth": 3,
                    "batch_size": 4,
                    "dsb_every": 0,
                    "samples_every": 2,
                    "val_fraction": 0.25,
                },
                "params": {"base_filters": {"type": "choice", "values": [8, 12]}},
                "search": {
                    "num_samples": 2,
                    "seed": 1,
                    "scheduler": {"type": "fifo"},
                    "champion_must_beat_otsu": False,  # a champion after the outage
                    **LEAN,
                },
            }
        )
    )
    return path


def _logged_points(db: Path) -> int:
    """Metric points the server has stored so far (read straight from its SQLite file)."""
    if not db.exists():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        try:
            return int(conn.execute("select count(*) from metrics").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


def _results(storage: Path) -> dict[str, int]:
    """Per trial, the epochs Tune has recorded so far (lines of its result.json): what the
    trials report whether or not MLflow is there."""
    return {
        path.parent.name: len(path.read_text().splitlines())
        for path in storage.glob("*/result.json")
    }


@dataclass
class Outage:
    """Stops the server once the first trial metrics are stored; starts it again after
    ``away_s`` (never, when None) and, with ``storage`` (the search's Tune folder), not
    before some trial has trained ``epochs_away`` more epochs: on a slow machine the outage
    lasts longer instead of seeing fewer epochs."""

    server: MlflowServer
    away_s: float | None
    storage: Path | None = None
    epochs_away: int = 0
    last_epoch: int = EPOCHS
    down_at: float = 0.0
    up_at: float = 0.0
    errors: list[BaseException] = field(default_factory=list)

    def _trained_while_away(self, at_stop: dict[str, int]) -> bool:
        """Some trial recorded ``epochs_away`` + 1 epochs since the stop (one in flight at the
        stop may have made its metrics before it), or every epoch but its last: a trial's
        last epoch waits for the server (its model must be logged), so a stop that came late
        can see no more."""
        assert self.storage is not None
        now = _results(self.storage)
        return any(
            n - at_stop.get(trial, 0) > self.epochs_away
            or (n >= self.last_epoch - 1 and n > at_stop.get(trial, 0))
            for trial, n in now.items()
        )

    def run(self, before: int) -> None:
        try:
            db = self.server.root / "server.db"
            deadline = time.time() + 300
            while _logged_points(db) < before + 2 * len(METRICS) and time.time() < deadline:
                time.sleep(0.2)
            self.server.stop()
            self.down_at = time.time()
            if self.away_s is not None:
                at_stop = _results(self.storage) if self.storage else {}
                time.sleep(self.away_s)
                deadline = time.time() + 120
                while self.storage and not self._trained_while_away(at_stop):
                    assert time.time() < deadline, "no trial trained while the server was away"
                    time.sleep(0.2)
                self.server.start()
                self.up_at = time.time()
        except BaseException as err:  # reported by the test
            self.errors.append(err)

    def begin(self) -> threading.Thread:
        before = _logged_points(self.server.root / "server.db")  # the module shares it
        thread = threading.Thread(target=self.run, args=(before,), daemon=True)
        thread.start()
        return thread


def _trial_runs(client: MlflowClient, search: str) -> list[tuple[str, str, dict[str, list]]]:
    experiment = client.get_experiment_by_name("outage")
    assert experiment is not None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{TAG_SEARCH_ID}` = '{search}' and tags.`{TAG_TRIAL_ID}` != ''",
    )
    return [
        (
            r.info.run_id,
            r.info.status,
            {key: client.get_metric_history(r.info.run_id, key) for key in METRICS},
        )
        for r in runs
    ]


def _assert_every_epoch_arrived(
    client: MlflowClient, search: str, epochs: int = EPOCHS
) -> list[dict[str, list]]:
    """Every trial FINISHED with each metric at every epoch (a re-run epoch may repeat its
    step); returns each trial's metric histories."""
    runs = _trial_runs(client, search)
    assert len(runs) == 2
    for _, status, histories in runs:
        assert status == "FINISHED"
        for key, points in histories.items():
            assert sorted({p.step for p in points}) == list(range(1, epochs + 1)), key
    return [histories for _, _, histories in runs]


def _epochs_within(runs: list[dict[str, list]], start: float, end: float) -> list[int]:
    """Per trial, how many epochs ended (val_dice's timestamp) between start and end (s)."""
    return [
        len({p.step for p in h["val_dice"] if start * 1000 < p.timestamp < end * 1000})
        for h in runs
    ]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One server for the module (each test stops and starts it; searches differ by name)."""
    with MlflowServer(tmp_path_factory.mktemp("server")) as running:
        yield running
    # A test that failed while the server was away leaves it stopped: __exit__ copes.


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    out = tmp_path / "data"
    make_synthetic(out, n=24, size=64, seed=5)
    return out


def test_a_short_outage_loses_no_metric_and_training_goes_on(
    ray_local: None,
    workdir: Path,
    tmp_path: Path,
    server: MlflowServer,
    data: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    storage = workdir / "ray_results" / "blip"
    outage = Outage(server, 3.0, storage, epochs_away=2, last_epoch=BLIP_EPOCHS)
    thread = outage.begin()
    code = cli.main(
        [
            "search",
            "--space",
            str(_space(tmp_path, "outage", BLIP_EPOCHS)),
            "--data",
            str(data),
            "--name",
            "blip",
            "--model-name",
            "blip-net",
        ]
    )
    thread.join(timeout=60)
    assert not outage.errors and outage.up_at > outage.down_at > 0
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    assert "unreachable" in out.out and "is back" in out.out  # the driver said so

    client = MlflowClient(server.url)
    runs = _assert_every_epoch_arrived(client, "blip", BLIP_EPOCHS)
    # Training went on while the server was away: several epochs of one trial ended then (a
    # blocking logger would stall a trial at its first), and their metrics arrived later.
    assert max(_epochs_within(runs, outage.down_at, outage.up_at)) >= 2
    parent = client.get_run(find_search(server.url, "blip"))
    assert parent.info.status == "FINISHED"
    champion = client.get_model_version_by_alias("blip-net", "champion")
    assert champion.run_id  # the search registered its best model after the outage


def test_a_server_that_stays_away_stops_the_search_and_resume_loses_nothing(
    ray_local: None,
    workdir: Path,
    tmp_path: Path,
    server: MlflowServer,
    data: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.setenv(PATIENCE_ENV, "6")
    outage = Outage(server, away_s=None)
    thread = outage.begin()
    space = _space(tmp_path, "outage")
    args = ["search", "--space", str(space), "--data", str(data), "--name", "gone"]
    code = cli.main([*args, "--model-name", "outage-net"])
    thread.join(timeout=60)
    assert not outage.errors and outage.down_at > 0
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert message.startswith(f"error: search gone stopped: MLflow tracking server {server.url}")
    assert "unet-search resume gone" in message

    # Ray kept the trials' checkpoints, and with them the logging the server never got.
    unsent = [
        json.loads(path.read_text())
        for path in (workdir / "ray_results" / "gone").rglob(UNSENT_FILE)
    ]
    assert any(item["kind"] == "metrics" for items in unsent for item in items)

    server.start()
    client = MlflowClient(server.url)
    parent = find_search(server.url, "gone")
    assert client.get_run(parent).info.status == "RUNNING"  # not made to look finished
    monkeypatch.delenv(PATIENCE_ENV)
    assert cli.main(["resume", "gone"]) == 0, capsys.readouterr().err[-3000:]
    _assert_every_epoch_arrived(client, "gone")
    assert client.get_run(parent).info.status == "FINISHED"
    assert client.get_model_version_by_alias("outage-net", "champion").run_id


def test_a_search_refuses_at_once_a_server_that_is_not_there(
    workdir: Path,
    tmp_path: Path,
    data: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    start = time.monotonic()
    code = cli.main(["search", "--space", str(_space(tmp_path, "outage")), "--data", str(data)])
    out, err = capsys.readouterr()
    assert code == 1 and time.monotonic() - start < 60  # MLflow alone retries for minutes
    assert out == ""  # before the data were read, planned (the plan's lines) or Ray started
    assert not (workdir / "cache").exists()  # the data were never decoded
    assert err.strip().splitlines() == [
        f"error: MLflow tracking server {url} (MLFLOW_TRACKING_URI) does not answer; start it "
        "or point MLFLOW_TRACKING_URI at a running one."
    ]
    assert not (workdir / "ray_results").exists()
