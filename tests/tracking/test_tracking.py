"""MLflow tracking under load and behind authentication: real processes writing at once to a
SQLite store and to a real `mlflow server`, and a server started with `--app-name basic-auth`."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MlflowServer
from mlflow.tracking import MlflowClient

from unet_search.tracking.client import (
    create_run,
    ensure_experiment,
    resolve_tracking_uri,
    ui_hint,
)

pytestmark = pytest.mark.slow
WRITERS, STEPS, METRICS = 4, 12, 5
# One "trial": a run with params, then STEPS epochs of METRICS metrics, as the recipe logs.
WRITER = """
import sys
from unet_search.tracking.client import create_run, log_metrics
uri, experiment = sys.argv[1], sys.argv[2]
i, steps, n = (int(a) for a in sys.argv[3:6])
run = create_run(uri, experiment, f"writer {i}", {"writer": i}, {"k": "v"})
for step in range(1, steps + 1):
    log_metrics(uri, run, {f"m{j}": step * 10 + j for j in range(n)}, step=step)
print(run)
"""


@pytest.fixture()
def plain_server(tmp_path: Path) -> Iterator[str]:
    with MlflowServer(tmp_path) as server:
        yield server.url


def _write_at_once(
    uri: str, experiment: str, env: dict[str, str] | None = None, steps: int = STEPS
) -> list[str]:
    """WRITERS processes logging at the same time; returns their run ids."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, uri, experiment, str(i), str(steps), str(METRICS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        for i in range(WRITERS)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err[-2000:]
        assert "database is locked" not in err
    return [out.strip().splitlines()[-1] for out, _ in outs]


def _assert_every_metric_arrived(
    client: MlflowClient, run_ids: list[str], steps: int = STEPS
) -> None:
    assert len(set(run_ids)) == WRITERS
    for run_id in run_ids:
        for j in range(METRICS):
            history = client.get_metric_history(run_id, f"m{j}")
            assert sorted((m.step, m.value) for m in history) == [
                (step, step * 10 + j) for step in range(1, steps + 1)
            ]


def test_concurrent_writers_lose_nothing_on_sqlite(tmp_path: Path) -> None:
    uri = resolve_tracking_uri(tmp_path / "home")
    experiment = ensure_experiment(uri, "load", tmp_path / "home")
    _assert_every_metric_arrived(MlflowClient(uri), _write_at_once(uri, experiment))


def test_concurrent_writers_lose_nothing_on_a_server(plain_server: str, tmp_path: Path) -> None:
    experiment = ensure_experiment(plain_server, "load", tmp_path)
    run_ids = _write_at_once(plain_server, experiment)
    _assert_every_metric_arrived(MlflowClient(plain_server), run_ids)


def _status(url: str, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/search?max_results=5")
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def test_basic_auth_server_lets_in_only_credentials_from_the_environment(tmp_path: Path) -> None:
    password = secrets.token_hex(16)
    config = tmp_path / "basic_auth.ini"
    config.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{tmp_path / 'auth.db'}\nadmin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    # The admin password reaches the server through its environment, never its command line.
    server_env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),  # CSRF, required by the app
    }
    with MlflowServer(tmp_path, server_env, "--app-name", "basic-auth") as server:
        url = server.url
        assert _status(url) == 401  # anonymous
        assert _status(url, ("admin", "wrong")) == 401
        assert _status(url, ("admin", password)) == 200
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert "mlflow server" in ps or "mlflow.server" in ps or "uvicorn" in ps
        assert password not in ps

        client_env = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}
        with pytest.MonkeyPatch.context() as mp:
            for key, value in client_env.items():
                mp.setenv(key, value)
            experiment = ensure_experiment(url, "secured", tmp_path)
            # Each request checks a salted password hash: a few epochs are enough here.
            run_ids = _write_at_once(url, experiment, client_env, steps=3)
            client = MlflowClient(url)
            _assert_every_metric_arrived(client, run_ids, steps=3)
            for run_id in run_ids:
                run = client.get_run(run_id)
                logged = [*run.data.params.values(), *run.data.tags.values()]
                assert all(password not in str(v) for v in logged)
        # Without the credentials, a writer is refused with a clear error.
        with pytest.MonkeyPatch.context() as mp:
            mp.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
            mp.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
            with pytest.raises(Exception, match=r"401|Unauthorized|credentials"):
                create_run(url, experiment, "anonymous", {}, {})
    assert password not in (tmp_path / "server.log").read_text()


def test_the_ui_hint_is_a_servers_address_or_the_command_that_serves_a_local_store() -> None:
    assert ui_hint("http://127.0.0.1:5055", "3", "abc") == (
        "http://127.0.0.1:5055/#/experiments/3/runs/abc"
    )
    assert ui_hint("https://mlflow.example.org/", "3") == (
        "https://mlflow.example.org/#/experiments/3"
    )
    assert ui_hint("sqlite:////w/mlflow.db", "1", "r") == (
        "mlflow ui --backend-store-uri sqlite:////w/mlflow.db  then open "
        "http://127.0.0.1:5000/#/experiments/1/runs/r"
    )
