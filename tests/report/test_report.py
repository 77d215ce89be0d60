"""The search report (rendered in headless Chromium), the per-epoch prediction images, and
the MLflow UI filters the README shows, on one real search."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import WatchedSearch
from mlflow.tracking import MlflowClient
from PIL import Image

from unet_search.cli.app import main
from unet_search.core.tags import TAG_BASELINE
from unet_search.report.data import load_report_data
from unet_search.report.figures import param_importances

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the network flags Chromium keeps trying to reach Google's hosts (closed network).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
FIGURES = 5  # best so far, parallel coordinates, importance, cost, best trial overlays


def _chromium(tmp_path: Path, *args: str) -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: `make test` installs it (Debian package chromium)")
    profile = tmp_path / "chromium-profile"
    done = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_report_renders_in_headless_chromium(
    watched_search: WatchedSearch, tmp_path: Path
) -> None:
    out = watched_search.outcome
    page = out.report
    assert page == watched_search.home / "reports" / out.search_id / "index.html"
    # The page is self-contained: moved elsewhere it still shows every figure.
    alone = tmp_path / "moved.html"
    shutil.copy(page, alone)
    dom = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", alone.as_uri())
    assert f"<title>unet-search report: {out.search_id}</title>" in dom
    assert f"<h1>unet-search report: {out.search_id}</h1>" in dom
    assert re.search(r'id="num-trials">4<', dom)
    for title in ("Best so far", "Parameters against the metric", "Parameter importance"):
        assert f"<h2>{title}</h2>" in dom
    assert f'data-images="{FIGURES}"' in dom and 'data-broken-images="0"' in dom
    assert f"{FIGURES} figures, 0 failed to load" in dom
    assert out.best is not None and out.best.name in dom  # the best trial is named
    rows = re.findall(r"<tr><td>\d+</td><td>(t\d{3}[^<]*)</td>", dom)
    assert sorted(rows) == sorted(t.name for t in out.trials)

    shot = tmp_path / "report.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,2400", alone.as_uri())
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (2400, 1400)
    assert pixels.std() > 20  # figures and text, not a blank or error page
    assert (pixels < 128).mean() > 0.01


def test_report_is_logged_to_the_search_run(watched_search: WatchedSearch) -> None:
    client = MlflowClient(watched_search.uri)
    out = watched_search.outcome
    logged = {a.path for a in client.list_artifacts(out.parent_run_id, "report")}
    pngs = {"best_so_far.png", "parallel_coordinates.png", "importance.png", "cost.png"}
    assert logged >= {"report/index.html"} | {f"report/{p}" for p in pngs | {"best_trial.png"}}
    tags = client.get_run(out.parent_run_id).data.tags
    assert out.registration is not None
    assert tags["unet_search.registered_version"] == out.registration.version
    assert tags["unet_search.champion_decision"] == out.registration.reason


def test_importances_rebuilt_from_mlflow_equal_optunas_on_the_live_study(
    watched_search: WatchedSearch,
) -> None:
    out = watched_search.outcome
    live = optuna.create_study(direction="maximize")
    live.add_trials([t for t in out.study.trials if not t.user_attrs.get(TAG_BASELINE)])
    assert len(live.trials) == 3
    expected = optuna.importance.get_param_importances(
        live, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
    )
    got = param_importances(load_report_data(watched_search.uri, out.search_id))
    assert isinstance(got, dict)
    assert got == pytest.approx(expected)
    assert set(got) == {"base_filters", "dice_weight", "lr"}
    assert sum(got.values()) == pytest.approx(1.0)


def test_report_data_holds_each_trial_and_its_history(watched_search: WatchedSearch) -> None:
    out = watched_search.outcome
    data = load_report_data(watched_search.uri, out.search_id)
    assert [t.number for t in data.record.trials] == [0, 1, 2, 3]
    assert [t.baseline for t in data.record.trials] == [True, False, False, False]
    by_name = {t.name: t for t in data.record.trials}
    for summary in out.trials:
        record = by_name[summary.name]
        assert data.value(record) == pytest.approx(summary.value)
        assert [step for _, step, _ in record.history] == [1, 2]
        assert record.outcome == "finished"
        assert int(record.params["num_parameters"]) > 1000
        assert record.metrics["inference_ms_per_image"] > 0


def test_prediction_images_every_epoch_on_the_same_samples(
    watched_search: WatchedSearch,
) -> None:
    client = MlflowClient(watched_search.uri)
    tiles = []
    for trial in watched_search.outcome.trials:
        files = [a.path for a in client.list_artifacts(trial.run_id, "images")]
        pngs = sorted(p for p in files if p.endswith(".png"))
        steps = sorted(int(re.search(r"\+step\+(\d+)\+", p).group(1)) for p in pngs)
        assert steps == [1, 2], trial.name  # samples_every=1, 2 epochs
        assert all("val_predictions" in p for p in pngs)
        local = client.download_artifacts(trial.run_id, pngs[0])
        picture = np.asarray(Image.open(local).convert("RGB"))
        assert picture.shape[0] > 2 * 160  # two samples, enlarged
        width = (picture.shape[1] - 8) // 3
        tiles.append(picture[:, :width])  # the input images column
        final = client.download_artifacts(trial.run_id, "samples/predictions.png")
        assert Image.open(final).size == Image.open(local).size
    # Every trial shows the same validation samples, so the UI compares like with like.
    assert all(np.array_equal(tiles[0], t) for t in tiles[1:])


def test_mlflow_ui_filters_from_the_readme_find_the_trials(
    watched_search: WatchedSearch,
) -> None:
    client = MlflowClient(watched_search.uri)
    out = watched_search.outcome
    sid = out.search_id

    def count(query: str) -> int:
        return len(client.search_runs([out.experiment_id], query, max_results=1000))

    assert count(f"tags.unet_search.search_id = '{sid}'") == 5  # 4 trials and the search
    assert (
        count(f"tags.unet_search.search_id = '{sid}' and tags.unet_search.outcome = 'finished'")
        == 4
    )
    assert count("tags.unet_search.kind = 'search'") == 1
    assert count("tags.unet_search.baseline = 'seed_keras'") == 1
    eights = sum(t.params.get("base_filters") == 8 for t in out.trials)
    assert count("params.base_filters = '8'") == eights
    median = float(np.median([t.value for t in out.trials]))
    better = sum(t.value > median for t in out.trials)
    query = f"tags.unet_search.search_id = '{sid}' and tags.unet_search.outcome = 'finished'"
    assert count(f"{query} and metrics.best_val_dice > {median!r}") == better
    assert count(f"params.encoder = 'none' and metrics.best_val_dice > {median!r}") == better
    best = client.search_runs(
        [out.experiment_id],
        f"tags.unet_search.search_id = '{sid}' and tags.unet_search.outcome = 'finished'",
        order_by=["metrics.best_val_dice DESC"],
        max_results=1,
    )[0]
    assert best.info.run_name == out.best.name


@pytest.fixture()
def in_watched_home(watched_search: WatchedSearch, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's work dir is the watched search's."""
    monkeypatch.setenv("UNET_SEARCH_HOME", str(watched_search.home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_report_command_for_an_unknown_search_writes_nothing(
    watched_search: WatchedSearch, in_watched_home: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "no-such-search"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"error: no search named 'no-such-search' in {watched_search.uri}."
    assert not (watched_search.home / "reports" / "no-such-search").exists()


def test_report_command_draws_it_again(
    watched_search: WatchedSearch, in_watched_home: None, capsys: pytest.CaptureFixture[str]
) -> None:
    sid = watched_search.outcome.search_id
    page = watched_search.home / "reports" / sid / "index.html"
    before = page.read_text()
    assert main(["report", sid]) == 0
    assert capsys.readouterr().out.strip() == f"report       {page}"
    after = page.read_text()
    # Same search, same page (only the generation time in the footer differs).
    strip = re.compile(r"Generated [^.]*\.")
    assert strip.sub("", after) == strip.sub("", before)
    assert page.stat().st_size > 50_000  # the figures are embedded
