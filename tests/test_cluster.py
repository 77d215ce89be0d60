"""The cluster story for real: cluster/local starts a 2-node Ray cluster and an MLflow server;
searches go through the Ray Jobs API; a killed search driver is resumed. Plus the cloud and
KubeRay configs, checked against Ray's own schema and structurally."""

from __future__ import annotations

import copy
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import asha_space

from unet_search.search import saved_trials

ROOT = Path(__file__).parents[1]
CLUSTER = ROOT / "cluster"
EXE = str(Path(sys.executable).with_name("unet-search"))
SHRINK = ["--set", "image_size=32", "--set", "val_fraction=0.25", "--set", "dsb_every=0"]


def test_launcher_config_passes_rays_own_schema() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` checks
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["max_wrkers"] = 2
    with pytest.raises(Exception, match="max_wrkers"):
        validate_config(prepare_config(broken))
    head = config["head_start_ray_commands"][-1]
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifests_are_complete(name: str) -> None:
    from unet_search.cli import build_parser

    doc = yaml.safe_load((CLUSTER / "kuberay" / name).read_text())
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] == {"raycluster.yaml": "RayCluster", "rayjob.yaml": "RayJob"}[name]
    assert doc["metadata"]["name"]
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"  # never a public LoadBalancer / NodePort
    containers = [head["template"]["spec"]["containers"][0]]
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        worker = group["template"]["spec"]["containers"][0]
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
        containers.append(worker)
    for container in containers:
        env = {e["name"]: e for e in container["env"]}
        assert container["image"] and env["RAY_AUTH_MODE"]["value"] == "token"
        assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]  # not inline
        assert env["MLFLOW_TRACKING_URI"]["value"].startswith("http")
    if doc["kind"] == "RayJob":
        argv = shlex.split(doc["spec"]["entrypoint"])
        assert argv[0] == "unet-search"
        args = build_parser().parse_args(argv[1:])  # a valid unet-search command line
        assert args.command == "search" and (ROOT / args.space).is_file()


def _env_of(state: Path) -> dict[str, str]:
    env = dict(os.environ)
    for line in (state / "env.sh").read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            env[key] = value.strip('"')
    return env


def _sids(state: Path) -> list[int]:
    return [int(p.read_text()) for p in state.glob("*.sid") if p.read_text().strip()]


def _alive(sids: list[int]) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if int(line.split()[1]) in sids]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    state = tmp_path_factory.mktemp("cluster")
    proc = subprocess.run(
        ["bash", str(CLUSTER / "local" / "start.sh"), str(state)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        env = _env_of(state)
        env["UNET_SEARCH_HOME"] = str(state / "home")
        env["CLUSTER_STATE"] = str(state)
        env.pop("RAY_ADDRESS_FOR_TESTS", None)
        yield env
    finally:
        subprocess.run(
            ["bash", str(CLUSTER / "local" / "stop.sh"), str(state)],
            timeout=120,
            check=False,
            capture_output=True,
        )


@pytest.fixture(scope="module")
def cluster_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from unet_search.synthetic import make_synthetic

    out = tmp_path_factory.mktemp("cluster_data") / "data"
    make_synthetic(out, n=16, size=64, seed=5)
    return out


def _cli(env: dict[str, str], *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def _runs(env: dict[str, str], search_id: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(
        ids, f"tags.`unet_search.search_id` = '{search_id}' and tags.`unet_search.trial_id` != ''"
    )


def _listening(port: int) -> list[str]:
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
    return [line.split()[3] for line in out.splitlines() if line.split()[3].endswith(f":{port}")]


@pytest.mark.slow
def test_submitted_search_runs_on_both_nodes_tracked_on_the_server(
    cluster: dict[str, str], cluster_data: Path, tmp_path: Path
) -> None:
    env = cluster
    dashboard, mlflow_uri = env["UNET_SEARCH_DASHBOARD"], env["MLFLOW_TRACKING_URI"]
    assert _listening(int(dashboard.rsplit(":", 1)[1])) == [dashboard.removeprefix("http://")]
    assert _listening(int(mlflow_uri.rsplit(":", 1)[1])) == [mlflow_uri.removeprefix("http://")]

    proc = _cli(
        env,
        "submit",
        "--address",
        dashboard,
        "--space",
        str(ROOT / "search_spaces" / "quick.yaml"),
        "--data",
        str(cluster_data),
        "--name",
        "sub-1",
        "--model-name",
        "unet-cluster",
        *SHRINK,
        "--set",
        "epochs=2",
        "--set",
        "search.num_samples=3",
        "--set",
        "search.scheduler.type=fifo",
        "--wait",
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "SUCCEEDED" in proc.stdout and "submitted job raysubmit_" in proc.stdout
    job_id = proc.stdout.split("submitted job ", 1)[1].split()[0]
    status = _cli(env, "jobs", "status", job_id, "--address", dashboard)
    assert status.stdout.strip() == "SUCCEEDED"

    runs = _runs(env, "sub-1")  # every run is on the tracking server
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["ray.node_id"] for r in runs}) == 2  # trials ran on both nodes
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    best = max(runs, key=lambda r: r.data.metrics["best_val_dice"])
    assert {a.path for a in client.list_artifacts(best.info.run_id)} >= {"best_model", "samples"}
    version = client.get_model_version_by_alias("unet-cluster", "champion")
    assert version.tags["unet_search.search_id"] == "sub-1"

    code = (
        "import json, numpy as np, mlflow\n"
        "m = mlflow.pyfunc.load_model('models:/unet-cluster@champion')\n"
        "print(json.dumps(list(m.predict(np.zeros((1, 45, 61, 3), np.uint8)).shape)))\n"
    )
    fresh = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri},
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert json.loads(fresh.stdout.strip().splitlines()[-1]) == [1, 45, 61]


def _kill_then_resume(
    env: dict[str, str],
    space: Path,
    data: Path,
    name: str,
    sets: list[str],
    ready: Callable[[], bool],
) -> subprocess.CompletedProcess[str]:
    """Start a search, SIGKILL its driver once ``ready()``, then resume it."""
    sets = [arg for item in [*SHRINK[1::2], *sets] for arg in ("--set", item)]
    driver = subprocess.Popen(
        [EXE, "search", "--space", str(space), "--data", str(data), "--name", name, *sets],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 400
    while not ready():
        assert time.time() < deadline and driver.poll() is None, "search ended before the kill"
        time.sleep(1)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    proc = _cli(env, "resume", name)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc


def _epochs(env: dict[str, str], run: Any) -> list[int]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    return sorted(int(m.step) for m in client.get_metric_history(run.info.run_id, "epoch"))


@pytest.mark.slow
def test_a_killed_search_driver_is_resumed_without_rerunning_or_duplicating(
    cluster: dict[str, str], cluster_data: Path
) -> None:
    env = cluster
    finished: list = []

    def two_finished() -> bool:
        finished[:] = [r for r in _runs(env, "kill-1") if r.info.status == "FINISHED"]
        return len(finished) >= 2

    sets = ["epochs=3", "search.num_samples=5", "search.scheduler.type=fifo"]
    quick = ROOT / "search_spaces" / "quick.yaml"
    proc = _kill_then_resume(env, quick, cluster_data, "kill-1", sets, two_finished)
    before = {r.info.run_id for r in finished}
    assert "search kill-1: 5 trials" in proc.stdout
    runs = _runs(env, "kill-1")
    assert len(runs) == 5  # exactly num_samples trials, one MLflow run each
    assert len({r.data.tags["unet_search.trial_id"] for r in runs}) == 5
    assert {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        steps = _epochs(env, run)
        if run.info.run_id in before:  # finished before the kill: nothing re-run
            assert steps == [1, 2, 3], run.info.run_name
        else:  # at most the epoch in flight at the kill (trained, not yet in Tune's state)
            assert sorted(set(steps)) == [1, 2, 3], run.info.run_name
            assert len(steps) - len(set(steps)) <= 1, run.info.run_name
    assert before <= {r.info.run_id for r in runs}  # finished trials kept their runs


@pytest.mark.slow
def test_a_search_killed_while_asha_pauses_a_trial_resumes_with_its_rungs(
    cluster: dict[str, str], cluster_data: Path, tmp_path: Path
) -> None:
    """The default scheduler pauses trials at its rungs, and Tune resumes paused trials as
    pending. After `resume` a trial that waited at a rung waits there again: the hopeless
    trial, paused at the kill, stays stopped early at its rung instead of training on."""
    env = cluster
    # test_search.py's ASHA search: one trial at a time, lr 0.01, then 1e-7 (hopeless), then
    # 0.01 again; a rung at epoch 2. The hopeless trial pauses at the rung and waits there
    # while the first trains on and the third trains to the rung.
    space = tmp_path / "asha.yaml"
    space.write_text(yaml.safe_dump(asha_space("asha-kill", "asha")))
    storage = Path(env["UNET_SEARCH_STORAGE"]) / "kill-2"  # cluster/local/start.sh sets it

    def hopeless_paused() -> bool:
        saved = saved_trials(storage)  # what `resume` reads
        return any(t["status"] == "PAUSED" and t["config"].get("lr") == 1.0e-7 for t in saved)

    proc = _kill_then_resume(env, space, cluster_data, "kill-2", [], hopeless_paused)
    assert "search kill-2: 3 trials" in proc.stdout
    runs = sorted(_runs(env, "kill-2"), key=lambda r: int(r.data.tags["unet_search.trial_number"]))
    assert len({r.data.tags["unet_search.trial_id"] for r in runs}) == len(runs) == 3
    first, hopeless, third = runs
    assert float(hopeless.data.params["lr"]) == 1.0e-7
    # Stopped early at its rung, where it waited: no epoch trained after the resume.
    assert hopeless.info.status == "KILLED", hopeless.data.tags
    assert hopeless.data.tags["unet_search.outcome"] == "stopped_early"
    assert _epochs(env, hopeless) == [1, 2]
    # The best of the rung trained on, from its checkpoint, in its one run.
    assert first.info.status == "FINISHED"
    assert sorted(set(_epochs(env, first))) == [1, 2, 3, 4]
    assert len(_epochs(env, first)) <= 5  # the epoch in flight at the kill, at most
    # The third equals the first at the rung: promoted or stopped there, nothing in between.
    steps = _epochs(env, third)
    expected = {"FINISHED": [1, 2, 3, 4], "KILLED": [1, 2]}[third.info.status]
    assert sorted(set(steps)) == expected and len(steps) - len(set(steps)) <= 1


@pytest.mark.slow
def test_stop_leaves_no_process_behind(cluster: dict[str, str]) -> None:
    state = Path(cluster["CLUSTER_STATE"])
    sids = _sids(state)
    assert len(sids) == 3 and _alive(sids)
    subprocess.run(
        ["bash", str(CLUSTER / "local" / "stop.sh"), str(state)],
        timeout=120,
        check=True,
        capture_output=True,
    )
    time.sleep(1)
    assert _alive(sids) == []
    for url in (cluster["UNET_SEARCH_DASHBOARD"], cluster["MLFLOW_TRACKING_URI"]):
        assert _listening(int(url.rsplit(":", 1)[1])) == []
