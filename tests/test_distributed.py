"""A study across a real multi-node Ray cluster logging to a real `mlflow server`; kill and resume.

Both tests use real parts only: ``ray.cluster_utils.Cluster`` runs three Ray nodes on this
machine, the tracking server is MLflow's own on 127.0.0.1, and the killed driver is a real
``distill-study run`` process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster

from study import tracking as tr
from study.runner import run_study
from tests.studies import tiny_student, write_study

pytestmark = pytest.mark.ray


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 with a sqlite backend and proxied artifacts."""
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp_path}/server.db",
        "--artifacts-destination",
        str(tmp_path / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not start (exit code {proc.poll()})")
        time.sleep(0.5)
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


@pytest.fixture
def three_node_cluster() -> Iterator[Cluster]:
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_study_spreads_over_nodes_and_logs_to_a_tracking_server(
    tmp_path: Path, mlflow_server: str, three_node_cluster: Cluster
) -> None:
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 3
    path = write_study(
        tmp_path,
        "spread",
        searcher={"algorithm": "random", "num_samples": 6, "max_concurrent": 3, "seed": 0},
    )
    outcome = run_study(
        path,
        tracking_uri=mlflow_server,
        storage=tmp_path / "studies",
        address=three_node_cluster.address,
    )
    assert outcome.complete

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("spread")
    trials = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{tr.TAG_ROLE}` = 'trial'"
    )
    assert len(trials) == 6 and all(r.info.status == "FINISHED" for r in trials)
    used = {r.data.tags[tr.TAG_NODE] for r in trials}
    assert used <= nodes and len(used) >= 2, used
    # Every trial fetched the one teacher from the server's artifact store.
    (teacher,) = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{tr.TAG_ROLE}` = 'teacher'"
    )
    assert {r.data.tags[tr.TAG_TEACHER_RUN] for r in trials} == {teacher.info.run_id}
    assert (tmp_path / "artifacts").is_dir() and any((tmp_path / "artifacts").rglob("teacher.pt"))


def _trial_runs(client: MlflowClient, experiment_id: str) -> list:
    return client.search_runs([experiment_id], filter_string=f"tags.`{tr.TAG_ROLE}` = 'trial'")


def test_killed_driver_resumes_without_duplicate_or_running_runs(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    storage = tmp_path / "studies"
    student = tiny_student(60)
    path = write_study(
        tmp_path,
        "crash",
        student=student,
        searcher={"algorithm": "random", "num_samples": 3, "max_concurrent": 1, "seed": 0},
        fault_tolerance={"checkpoint_every": 5, "checkpoint_min_seconds": 0},
    )
    cmd = [
        sys.executable,
        "-m",
        "study.cli",
        "run",
        str(path),
        "--storage",
        str(storage),
        "--tracking-uri",
        uri,
    ]
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path
    )

    # Wait until one trial has finished and the next is past its first checkpoint, then kill.
    client = MlflowClient(uri)
    deadline = time.monotonic() + 400
    finished_before: dict[str, int] = {}
    while time.monotonic() < deadline:
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        exp = client.get_experiment_by_name("crash") if (tmp_path / "mlflow.db").exists() else None
        runs = _trial_runs(client, exp.experiment_id) if exp else []
        done = [r for r in runs if r.info.status == "FINISHED"]
        running = [r for r in runs if r.info.status == "RUNNING"]
        if done and running:
            steps = client.get_metric_history(running[0].info.run_id, "epoch_val_score")
            if len(steps) >= 12:
                finished_before = {r.data.tags[tr.TAG_TRIAL_ID]: r.info.end_time for r in done}
                break
        time.sleep(0.5)
    assert finished_before, "the study never reached a finished and a checkpointed trial"
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    # The driver owned the local Ray: take its orphaned processes down too, as a crash would.
    try:
        os.killpg(driver.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    time.sleep(2)

    resumed = subprocess.run(
        [sys.executable, "-m", "study.cli", "resume", "crash", "--storage", str(storage)],
        capture_output=True,
        text=True,
        timeout=500,
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    exp = client.get_experiment_by_name("crash")
    runs = _trial_runs(client, exp.experiment_id)
    trial_ids = [r.data.tags[tr.TAG_TRIAL_ID] for r in runs]
    assert len(runs) == 3 and len(set(trial_ids)) == 3  # one run per trial, no duplicates
    assert all(r.info.status == "FINISHED" for r in runs)
    (study_run,) = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{tr.TAG_ROLE}` = 'study'"
    )
    assert study_run.info.status == "FINISHED"
    for run in runs:
        tid = run.data.tags[tr.TAG_TRIAL_ID]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch_val_score")]
        if tid in finished_before:
            assert run.info.end_time == finished_before[tid]  # finished trials were not run again
        # Epoch 0 was trained once: interrupted trials went on from a checkpoint, not from scratch.
        assert steps.count(0) == 1 and max(steps) == 59
