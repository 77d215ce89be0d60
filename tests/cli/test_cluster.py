"""The cluster story for real: cluster/local starts a 2-node Ray cluster and an MLflow server;
searches go through the Ray Jobs API; a killed search driver is resumed. Plus the cloud and
KubeRay configs, checked against Ray's own schema and structurally."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import readme
import yaml
from conftest import LEAN_SETS, asha_space

from unet_search.distributed.faults import FAULT_ENV
from unet_search.search.final import FINAL_SUFFIX
from unet_search.search.private import saved_trials

ROOT = Path(__file__).parents[2]
CLUSTER = ROOT / "cluster"
EXE = str(Path(sys.executable).with_name("unet-search"))
SHRINK = [
    *("--set", "patch_size=32", "--set", "patches_per_epoch=8", "--set", "image_size=32"),
    *("--set", "val_fraction=0.25", "--set", "dsb_every=0"),
    # a shrunk search: no compute budget, and a champion whatever Otsu scores
    *("--set", "search.compute=null", "--set", "search.champion_must_beat_otsu=false"),
    *LEAN_SETS,
]
STATE_PLACEHOLDER = "/tmp/us-cluster"  # cluster/README.md's state folder


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
    from unet_search.cli.app import build_parser

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


@dataclass
class Cluster:
    """The module's running cluster: started by cluster/README.md's own command."""

    state: Path
    env: dict[str, str]  # env.sh's settings plus a work dir, for the tests that run the CLI
    started_by: str  # the README command that started it


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    state = tmp_path_factory.mktemp("cluster")
    start = readme.find(readme.CLUSTER_README, "cluster/local/start.sh")
    shell = readme.Shell(readme.ROOT, {STATE_PLACEHOLDER: str(state)})
    shell.keep(readme.find(readme.CLUSTER_README, "source .venv/bin/activate"))
    proc = shell.run(start, timeout=300)
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        env = _env_of(state)
        env["UNET_SEARCH_HOME"] = str(state / "home")
        env.pop("RAY_ADDRESS_FOR_TESTS", None)
        yield Cluster(state, env, start.text)
    finally:
        shell.run(readme.find(readme.CLUSTER_README, "cluster/local/stop.sh"), timeout=120)


@pytest.fixture(scope="module")
def cluster(local_cluster: Cluster) -> dict[str, str]:
    return local_cluster.env


@pytest.fixture(scope="module")
def cluster_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from unet_search.data.synthetic import make_synthetic

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


# cluster/README.md's sequence, every command as written --------------------------------------


@dataclass
class Walk:
    """What each command of cluster/README.md's block printed. The searches the block
    submits run at the same time, as jobs on one cluster do (a command's result is then a
    future, waited for when read): the cluster queues what its CPUs cannot run at once."""

    cluster: Cluster
    shell: readme.Shell
    pool: ThreadPoolExecutor
    ran: dict[str, list[Any]] = field(default_factory=dict)

    def first(self, prefix: str) -> Any:
        return readme.resolved(self.ran[prefix][0])


def _ok(proc: subprocess.CompletedProcess[str], command: readme.Command) -> str:
    output = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, f"{command.where}: {command.text}\n{output}"
    return proc.stdout


def _submitted(text: str) -> str:
    return text.split("submitted job ", 1)[1].split()[0]


def _jobs(walk: Walk, command: readme.Command) -> dict[str, Any]:
    """`unet-search jobs status|logs|stop JOB_ID`: status and logs of the submitted search;
    stop of the same submit command started again and stopped while it runs."""
    head, actions, tail = re.fullmatch(r"(.* )(\S+\|\S+)( JOB_ID.*)", command.text).groups()
    assert set(actions.split("|")) == {"status", "logs", "stop"}, command.text

    def jobs(action: str, job_id: str) -> str:
        text = head + action + tail.replace("JOB_ID", job_id)
        return _ok(walk.shell.run(readme.Command(text, command.where)), command)

    out: dict[str, Any] = {}
    submit = readme.find(readme.CLUSTER_README, "unet-search submit")
    background = walk.shell.start(
        submit, *SHRINK, *FULL, log=walk.cluster.state / "submit-stopped.log"
    )
    try:
        deadline = time.time() + 120
        while "submitted job " not in background.output():
            assert time.time() < deadline and background.proc.poll() is None, background.output()
            time.sleep(0.2)
        stopped = _submitted(background.output())
        out["stop"] = jobs("stop", stopped)
        out["stopped_exit"] = background.proc.wait(timeout=120)
        out["stopped_output"] = background.output()
        out["stopped_status"] = jobs("status", stopped)
    finally:
        background.stop()
    job_id = _submitted(walk.first("unet-search submit"))  # once the submit has ended
    return {**out, "status": jobs("status", job_id), "logs": jobs("logs", job_id)}


def _run(*extra: str) -> Callable[[Walk, readme.Command], str]:
    def run(walk: Walk, command: readme.Command) -> str:
        return _ok(walk.shell.run(command, *extra), command)

    return run


def _at_once(
    handler: Callable[[Walk, readme.Command], Any],
) -> Callable[[Walk, readme.Command], Future[Any]]:
    """``handler`` started now, in the walk's pool; its result read later."""
    return lambda walk, command: walk.pool.submit(handler, walk, command)


def _started_by_the_fixture(walk: Walk, command: readme.Command) -> None:
    assert command.text == walk.cluster.started_by  # the module's cluster, reused


# The submitted search: one trial of 2 epochs, a DDP run of 2 workers of 1 CPU, so on both
# nodes (1 CPU each) whatever the timing (single-worker trials may all reuse one node's
# process when they run one after another); `ray job submit`'s: one trial of 1 epoch.
FIFO = (
    *("--set", "search.scheduler.type=fifo", "--set", "search.scheduler.grace_period=1"),
    *LEAN_SETS,
)
FULL = (
    *("--set", "epochs=2", "--set", "search.num_samples=1", "--set", "search.baseline=none"),
    *("--set", "num_workers=2", *FIFO),
)
SMALL = (
    "--set",
    "epochs=1",
    "--set",
    "search.num_samples=1",
    "--set",
    "search.baseline=none",
    *FIFO,
)
HANDLERS: dict[str, Callable[[Walk, readme.Command], Any]] = {
    "source ": lambda walk, command: walk.shell.keep(command),
    "cluster/local/start.sh": _started_by_the_fixture,
    "unet-search submit": _at_once(_run(*SHRINK, *FULL)),
    "unet-search jobs": _at_once(_jobs),
    "ray job submit": _at_once(_run(*SHRINK, *SMALL)),
    "cluster/local/stop.sh": lambda walk, command: None,  # the last test of this module
}


@pytest.fixture(scope="module")
def walk(
    local_cluster: Cluster, cluster_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Walk:
    """Every command of the block, in order, in a fresh folder like the checkout, with only
    the environment the block sets up; a command no handler knows fails."""
    folder = readme.checkout_like(tmp_path_factory.mktemp("cluster_user") / "checkout")
    (folder / "data").mkdir()
    (folder / "data" / "synth").symlink_to(cluster_data, target_is_directory=True)
    shell = readme.Shell(folder, {STATE_PLACEHOLDER: str(local_cluster.state)})
    with ThreadPoolExecutor(max_workers=4) as pool:
        result = Walk(local_cluster, shell, pool)
        block = readme.block(readme.CLUSTER_README, "cluster/local/start.sh")
        readme.walk(block, HANDLERS, result, result.ran)
        for results in result.ran.values():  # every command has ended, or failed here
            results[:] = [readme.resolved(r) for r in results]
    return result


def _closing(out: str, walk: Walk) -> tuple[str, Any]:
    """The search id and parent run a job's output names; checks its closing lines: the work
    dir under the storage, the report and log there and in MLflow, the server's UI address."""
    from mlflow.tracking import MlflowClient

    storage = Path(walk.shell.value("$UNET_SEARCH_STORAGE"))
    uri = walk.shell.value("$MLFLOW_TRACKING_URI")
    assert f"work dir     {storage / 'unet-search-runs'} " in out
    name = re.search(r"^search (\S+): \d+ trials", out, re.M)[1]
    client = MlflowClient(uri)
    run = client.get_run(re.search(r"also in MLflow: \S+ of run (\w+)\)", out)[1])
    assert run.info.run_name == name and run.info.status == "FINISHED"
    report = Path(re.search(r"^report +(\S+)", out, re.M)[1])
    log = Path(re.search(r"^search log +(\S+)", out, re.M)[1])
    assert report == storage / "unet-search-runs" / "reports" / name / "index.html"
    assert log == storage / "unet-search-runs" / "logs" / f"{name}.log"
    assert report.is_file() and log.is_file()
    run_id = run.info.run_id
    assert "report/index.html" in {a.path for a in client.list_artifacts(run_id, "report")}
    assert {a.path for a in client.list_artifacts(run_id, "logs")} == {f"logs/{name}.log"}
    ui = re.search(r"^MLflow UI +(\S+)$", out, re.M)[1]
    assert ui == f"{uri}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
    return name, run


@pytest.mark.slow
def test_the_readme_submit_runs_on_both_nodes_tracked_on_the_server(
    walk: Walk, tmp_path: Path
) -> None:
    dashboard = walk.shell.value("$UNET_SEARCH_DASHBOARD")
    mlflow_uri = walk.shell.value("$MLFLOW_TRACKING_URI")
    assert _listening(int(dashboard.rsplit(":", 1)[1])) == [dashboard.removeprefix("http://")]
    assert _listening(int(mlflow_uri.rsplit(":", 1)[1])) == [mlflow_uri.removeprefix("http://")]

    out = walk.first("unet-search submit")
    job_id = _submitted(out)
    assert job_id.startswith("raysubmit_") and f"job {job_id} SUCCEEDED" in out
    # The job ran the submitter's code: the shipped copy of the whole package (under Ray's
    # runtime_env folder, not the cluster's installed one), at the submitter's code version.
    from unet_search.core.env import code_version

    shipped = re.search(r"^code +unet_search (\S+) from (\S+)$", out, re.M)
    assert shipped, out[-3000:]
    assert shipped[1] == code_version()
    where = Path(shipped[2])
    assert "runtime_resources" in where.parts and where.name == "unet_search", where
    assert where != ROOT / "unet_search"
    name, parent = _closing(out, walk)
    jobs = walk.first("unet-search jobs")
    assert jobs["status"].strip() == "SUCCEEDED"
    assert f"search {name}: 1 trials" in jobs["logs"]

    (run,) = _runs({"MLFLOW_TRACKING_URI": mlflow_uri}, name)  # the run is on the server
    assert run.info.status == "FINISHED"
    assert run.data.tags["ray.world_size"] == "2"  # DDP across the two nodes: a rank on each
    assert len(set(run.data.tags["ray.node_ids"].split(","))) == 2, run.data.tags
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"best_model", "samples"}
    version = client.get_model_version(
        "unet-quick", parent.data.tags["unet_search.registered_version"]
    )
    assert version.tags["unet_search.search_id"] == name

    code = (
        "import json, numpy as np, mlflow\n"
        "m = mlflow.pyfunc.load_model('models:/unet-quick@champion')\n"
        "print(json.dumps(list(m.predict(np.zeros((1, 45, 61, 3), np.uint8)).shape)))\n"
    )
    fresh = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**walk.shell.env, "MLFLOW_TRACKING_URI": mlflow_uri},
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert json.loads(fresh.stdout.strip().splitlines()[-1]) == [1, 45, 61]


@pytest.mark.slow
def test_the_readme_ray_job_submit_succeeds_and_registers_on_the_server(walk: Walk) -> None:
    out = walk.first("ray job submit")
    assert re.search(r"Job 'raysubmit_\w+' succeeded", out), out[-3000:]
    name, run = _closing(out, walk)
    assert f"search {name}: 1 trials" in out
    from mlflow.tracking import MlflowClient

    client = MlflowClient(walk.shell.value("$MLFLOW_TRACKING_URI"))
    version = run.data.tags["unet_search.registered_version"]
    assert client.get_model_version("unet-quick", version).tags["unet_search.search_id"] == name


@pytest.mark.slow
def test_the_readme_jobs_stop_stops_a_running_search(walk: Walk) -> None:
    jobs = walk.first("unet-search jobs")
    assert jobs["stop"].strip() == "stopped"
    assert jobs["stopped_exit"] == 1 and " STOPPED" in jobs["stopped_output"]
    assert jobs["stopped_status"].strip() == "STOPPED"


def _kill_then_resume(
    env: dict[str, str],
    space: Path,
    data: Path,
    name: str,
    sets: list[str],
    ready: Callable[[], bool],
) -> tuple[subprocess.CompletedProcess[str], dict[str, int]]:
    """Start a search, SIGKILL its driver once ``ready()``, then resume it. Returns the
    resume's output and, per trial id, the epoch Tune's saved state held at the kill: what
    ``resume`` continues from (a trial may have trained further, unsaved, before the kill)."""
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
    storage = Path(env["UNET_SEARCH_STORAGE"])
    saved = {
        t["trial_id"]: int(t["last_result"].get("training_iteration", 0))
        for experiment in (name, name + FINAL_SUFFIX)
        if (storage / experiment).exists()
        for t in saved_trials(storage / experiment)
    }
    resume = readme.find(readme.CLUSTER_README, "unet-search resume").argv  # ... NAME
    proc = _cli(env, *[name if arg == "NAME" else arg for arg in resume[1:]])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc, saved


def _resumed_where_saved(steps: list[int], epochs: int, saved_epoch: int) -> None:
    """Every epoch logged; those up to the saved one once (nothing the saved state held was
    trained again); later ones at most twice (trained before the kill, unsaved, then again)."""
    assert sorted(set(steps)) == list(range(1, epochs + 1)), steps
    assert all(steps.count(e) == 1 for e in range(1, saved_epoch + 1)), (steps, saved_epoch)
    assert all(steps.count(e) <= 2 for e in range(saved_epoch + 1, epochs + 1)), steps


def _epochs(env: dict[str, str], run: Any) -> list[int]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    return sorted(int(m.step) for m in client.get_metric_history(run.info.run_id, "epoch"))


def _kill_in_the_final_fit(
    env: dict[str, str], data: Path, tmp: Path
) -> tuple[subprocess.CompletedProcess[str], dict[str, int]]:
    """quick.yaml's search killed while its final fit trains (held after its epoch 1 by
    fault injection), then resumed."""
    gate = tmp / "released"  # never made while the search runs: the hold lasts
    env = {**env, FAULT_ENV: f"epoch=1,hold={gate},when=epochs:2"}
    final_state = Path(env["UNET_SEARCH_STORAGE"]) / f"kill-1{FINAL_SUFFIX}"

    def final_fit_held() -> bool:
        saved = saved_trials(final_state) if final_state.exists() else []
        return any(int(t["last_result"].get("training_iteration", 0)) >= 1 for t in saved)

    # quick.yaml's baseline, planned default and one sampled trial, 1 epoch each, then a
    # final fit of 2: a compute of 4 epochs, half of it exploring (the baseline not counted).
    sets = [
        "epochs=1",
        "search.num_samples=3",
        "search.scheduler.type=fifo",
        "search.scheduler.grace_period=1",
        "search.compute={epochs: 4}",
        "search.final_fit=0.5",
    ]
    quick = ROOT / "search_spaces" / "quick.yaml"
    try:
        return _kill_then_resume(env, quick, data, "kill-1", sets, final_fit_held)
    finally:
        gate.touch()  # a held process the kill left behind ends


def _kill_while_asha_pauses(
    env: dict[str, str], data: Path, tmp: Path
) -> tuple[subprocess.CompletedProcess[str], dict[str, int]]:
    """finish/test_run.py's ASHA search (one trial at a time, lr 0.01, then 1e-7 (hopeless), then
    0.01 again; a rung at epoch 2) killed while the hopeless trial waits at the rung (the
    first trains on, the third trains to the rung), then resumed."""
    space = tmp / "asha.yaml"
    space.write_text(yaml.safe_dump(asha_space("asha-kill", "asha")))
    storage = Path(env["UNET_SEARCH_STORAGE"]) / "kill-2"  # cluster/local/start.sh sets it

    def hopeless_paused() -> bool:
        saved = saved_trials(storage)  # what `resume` reads
        return any(t["status"] == "PAUSED" and t["config"].get("lr") == 1.0e-7 for t in saved)

    # The space's 16 patches an epoch, not the shrink's 8: lr 0.01 must lead at the rung.
    sets = ["patches_per_epoch=16"]
    return _kill_then_resume(env, space, data, "kill-2", sets, hopeless_paused)


@pytest.fixture(scope="module")
def kills(
    cluster: dict[str, str], cluster_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[tuple[subprocess.CompletedProcess[str], dict[str, int]]]]]:
    """The two killed searches, started at the same time on the cluster (one trial of each
    at a time, a CPU each), each read by its test."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {
            name: pool.submit(flow, cluster, cluster_data, tmp_path_factory.mktemp(name))
            for name, flow in (
                ("final_fit", _kill_in_the_final_fit),
                ("asha", _kill_while_asha_pauses),
            )
        }


@pytest.mark.slow
def test_a_search_killed_in_its_final_fit_is_resumed_without_rerunning_or_duplicating(
    cluster: dict[str, str], kills: dict[str, Future[Any]]
) -> None:
    """The driver is killed while the final fit trains (held after its epoch 1 by fault
    injection): `resume` keeps every exploring trial as it finished, continues the final fit
    from its checkpoint in its one run, and registers that run's model."""
    env = cluster
    proc, saved = kills["final_fit"].result()
    assert "search kill-1: 3 trials" in proc.stdout
    # The plan is handed on: resume reads the parent run's plan.json, it does not plan again.
    assert "search kill-1: the plan it started with (plan.json of its run)" in proc.stdout
    runs = _runs(env, "kill-1")
    finals = [r for r in runs if r.data.tags.get("unet_search.final_fit") == "true"]
    assert len(runs) == 4 and len(finals) == 1  # num_samples trials and the final fit
    assert len({r.data.tags["unet_search.trial_id"] for r in runs}) == 4
    assert {r.info.status for r in runs} == {"FINISHED"}
    (final,) = finals
    for run in runs:  # the exploring trials had finished: nothing of them ran again
        if run is not final:
            assert _epochs(env, run) == [1], run.info.run_name
    final_id = final.data.tags["unet_search.trial_id"]
    assert saved[final_id] == 1  # held after epoch 1, then resumed from that checkpoint
    assert _epochs(env, final) == [1, 2]  # epoch 1 not trained again
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    registered = [
        v
        for v in client.search_model_versions("name = 'unet-quick'")
        if v.tags.get("unet_search.search_id") == "kill-1"
    ]
    assert len(registered) == 1, (proc.stdout[-3000:], [v.tags for v in registered])
    (version,) = registered
    assert version.tags["unet_search.run_id"] == final.info.run_id
    # Registered on the final fit's kept weights: the best of its epochs and of the weights
    # it started from (its source's: the planned default, or a challenger that beat it by
    # more than the margin, as the parent run says), never worse than those.
    value = float(version.tags["unet_search.metric_value"])
    assert value == pytest.approx(final.data.metrics["best_val_dice"], abs=1e-6)
    epochs = client.get_metric_history(final.info.run_id, "val_dice")
    assert value >= max(m.value for m in epochs) - 1e-6
    (source,) = [r for r in runs if f"final {r.info.run_name}" == final.info.run_name]
    assert value >= source.data.metrics["best_val_dice"] - 1e-6
    parent = client.get_run(final.data.tags["mlflow.parentRunId"]).data.tags
    assert parent["unet_search.final_fit_source"].startswith(source.info.run_name), parent
    assert f"its source   {parent['unet_search.final_fit_source']}" in proc.stdout


@pytest.mark.slow
def test_a_search_killed_while_asha_pauses_a_trial_resumes_with_its_rungs(
    cluster: dict[str, str], kills: dict[str, Future[Any]]
) -> None:
    """The default scheduler pauses trials at its rungs, and Tune resumes paused trials as
    pending. After `resume` a trial that waited at a rung waits there again: the hopeless
    trial, paused at the kill, stays stopped early at its rung instead of training on."""
    env = cluster
    proc, saved = kills["asha"].result()
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
    assert first.info.status == "FINISHED", first.data.tags
    _resumed_where_saved(_epochs(env, first), 4, saved[first.data.tags["unet_search.trial_id"]])
    # The third equals the first at the rung: promoted or stopped there, nothing in between.
    steps = _epochs(env, third)
    epochs = {"FINISHED": 4, "KILLED": 2}[third.info.status]
    _resumed_where_saved(steps, epochs, saved.get(third.data.tags["unet_search.trial_id"], 0))


@pytest.mark.slow
def test_stop_leaves_no_process_behind(local_cluster: Cluster) -> None:
    state, env = local_cluster.state, local_cluster.env
    sids = _sids(state)
    assert len(sids) == 3 and _alive(sids)
    stop = readme.find(readme.CLUSTER_README, "cluster/local/stop.sh")
    proc = readme.Shell(readme.ROOT, {STATE_PLACEHOLDER: str(state)}).run(stop, timeout=120)
    assert proc.returncode == 0 and f"local cluster in {state} stopped" in proc.stdout
    time.sleep(1)
    assert _alive(sids) == []
    for url in (env["UNET_SEARCH_DASHBOARD"], env["MLFLOW_TRACKING_URI"]):
        assert _listening(int(url.rsplit(":", 1)[1])) == []
