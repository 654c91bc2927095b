"""Trials that are interrupted, killed or diverge, on a real Ray with a real MLflow store.

- SIGINT to a running study right after its first trial finished, then ``resume``: one run per
  trial, no trial trained twice, every epoch logged exactly once.
- ``kill -9`` of a trial's worker process after a checkpoint, retried by ``max_failures``: the
  same run goes on to FINISHED and no epoch is logged twice.
- A trial whose training diverges (LSP with lambda 1e30) ends FAILED with its reason while the
  others finish; the study counts it and the analysis leaves it out of tables and fronts.

No mocks: the driver is the ``distill-study`` command or ``run_study``, the worker a Ray actor.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import ray
import torch
from mlflow.entities import Metric, Run
from mlflow.tracking import MlflowClient

from analysis import ablation
from analysis.pareto import pareto_front
from analysis.report import write_report
from analysis.runs import load_runs
from study import tracking as tr
from study.cli import main
from study.config import load_study_spec
from study.runner import CONTEXT_FILE, StudyOutcome, run_study
from study.trial import RESULT_ERROR, SNAPSHOT_FILE, recorded_result
from tests.studies import tiny_student, write_study

pytestmark = pytest.mark.ray


@pytest.fixture
def local_ray():
    """A local Ray the study starts, shut down after the test (never `ray stop`)."""
    yield
    ray.shutdown()


def _store_ready(storage: Path, name: str) -> bool:
    """Whether the study has set up its MLflow store (reading a store while it is being created
    races with MLflow's schema migration)."""
    return (storage / name / CONTEXT_FILE).is_file()


def _trial_runs(client: MlflowClient, name: str) -> list:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return []
    return client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{tr.TAG_ROLE}` = '{tr.ROLE_TRIAL}'"
    )


def _assert_each_epoch_once(client: MlflowClient, run_id: str, epochs: int) -> None:
    for key in tr.EPOCH_METRICS:
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == list(range(epochs)), (key, len(steps))


def test_sigint_after_a_finished_trial_then_resume(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    storage = tmp_path / "studies"
    epochs = 80
    path = write_study(
        tmp_path,
        "sigint",
        student=tiny_student(epochs),
        searcher={"algorithm": "random", "num_samples": 3, "max_concurrent": 2, "seed": 0},
        fault_tolerance={"checkpoint_every": 10, "checkpoint_min_seconds": 0},
    )
    cli = [sys.executable, "-m", "study.cli"]
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(
        [*cli, "run", str(path), "--storage", str(storage), "--tracking-uri", uri],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=tmp_path,
    )
    client = MlflowClient(uri)
    finished_before: dict[str, int] = {}
    deadline = time.monotonic() + 400
    try:
        # Interrupt the moment a trial's run is FINISHED: Tune may not have taken its result yet.
        while not finished_before and time.monotonic() < deadline:
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            if _store_ready(storage, "sigint"):
                for run in _trial_runs(client, "sigint"):
                    if run.info.status == "FINISHED":
                        finished_before[run.data.tags[tr.TAG_TRIAL_ID]] = run.info.end_time
            if not finished_before:
                time.sleep(0.1)
        assert finished_before, "no trial finished"
        driver.send_signal(signal.SIGINT)
        driver.wait(timeout=180)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert len(_trial_runs(client, "sigint")) < 3 or any(
        r.info.status != "FINISHED" for r in _trial_runs(client, "sigint")
    ), "the study ended before the interrupt: nothing to resume"

    resumed = subprocess.run(
        [*cli, "resume", "sigint", "--storage", str(storage)],
        capture_output=True,
        text=True,
        timeout=500,
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    runs = _trial_runs(client, "sigint")
    assert len(runs) == 3 and len({r.data.tags[tr.TAG_TRIAL_ID] for r in runs}) == 3
    assert all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        tid = run.data.tags[tr.TAG_TRIAL_ID]
        if tid in finished_before:  # never trained (nor ended) again
            assert run.info.end_time == finished_before[tid]
        _assert_each_epoch_once(client, run.info.run_id, epochs)
        # The final metrics were logged once, at the step after the last epoch.
        history = client.get_metric_history(run.info.run_id, tr.METRIC_TEST)
        assert [m.step for m in history] == [epochs]
    # One student architecture: one latency figure, measured once across the interruption (the
    # resumed study's cache starts from the figure the first study logged).
    assert len({r.data.metrics[tr.METRIC_LATENCY_P50] for r in runs}) == 1
    assert [r.data.tags[tr.TAG_LATENCY_SOURCE] for r in runs].count("measured") == 1


def _descends_from_us(pid: int) -> bool:
    """Whether ``pid`` is a process this test started (a worker of the Ray it started)."""
    try:
        return any(p.pid == os.getpid() for p in psutil.Process(pid).parents())
    except psutil.NoSuchProcess:
        return False


def _latest_checkpoint_epoch(folder: Path) -> int | None:
    for state in sorted(folder.glob(f"*/checkpoint_*/{SNAPSHOT_FILE}"), reverse=True):
        try:
            return int(torch.load(state, map_location="cpu", weights_only=True)["epoch"])
        except (OSError, RuntimeError, EOFError, KeyError):
            continue  # Tune is replacing it
    return None


def test_killed_worker_is_retried_without_duplicate_steps(tmp_path: Path, local_ray: None) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    storage = tmp_path / "studies"
    # Per-epoch metrics go to MLflow at each checkpoint and in batches of 900 values (300 epochs
    # of 3 metrics): with a checkpoint every 400 epochs, epochs 300-399 and 700-799 are logged
    # after the checkpoint a retry restarts from, and the retry re-runs them.
    epochs = 1200
    path = write_study(
        tmp_path,
        "killed",
        student=tiny_student(epochs),
        methods=["none"],
        search={},
        searcher={"algorithm": "random", "num_samples": 1, "max_concurrent": 1, "seed": 0},
        fault_tolerance={"checkpoint_every": 400, "checkpoint_min_seconds": 0, "max_failures": 2},
    )
    client = MlflowClient(uri)
    killed: dict[str, object] = {}
    stop = threading.Event()

    def kill_after_a_checkpoint() -> None:
        """Kill the trial's worker once its run has logged epochs past its last checkpoint."""
        while not stop.is_set():
            if not _store_ready(storage, "killed"):
                time.sleep(0.1)
                continue
            runs = [r for r in _trial_runs(client, "killed") if r.info.status == "RUNNING"]
            pid = runs[0].data.tags.get(tr.TAG_WORKER_PID) if runs else None
            ckpt = _latest_checkpoint_epoch(storage / "killed")
            if pid and ckpt is not None:
                run_id = runs[0].info.run_id
                logged = client.get_metric_history(run_id, "train_loss")
                if max((m.step for m in logged), default=-1) > ckpt and _descends_from_us(int(pid)):
                    os.kill(int(pid), signal.SIGKILL)
                    killed.update(pid=pid, run_id=run_id, checkpoint=ckpt, logged=len(logged))
                    return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_after_a_checkpoint, daemon=True)
    watcher.start()
    try:
        outcome = run_study(path, tracking_uri=uri, storage=storage)
    finally:
        stop.set()
        watcher.join(timeout=30)
    assert killed, "the trial finished before its worker could be killed after a checkpoint"
    assert outcome.complete and outcome.errors == 0

    (run,) = _trial_runs(client, "killed")  # the retry went on with the same run
    assert run.info.run_id == killed["run_id"] and run.info.status == "FINISHED"
    assert run.data.tags[tr.TAG_WORKER_PID] != killed["pid"]  # a new worker finished it
    _assert_each_epoch_once(client, run.info.run_id, epochs)
    assert [m.step for m in client.get_metric_history(run.info.run_id, tr.METRIC_TEST)] == [epochs]


def test_diverging_trial_fails_with_a_reason_while_the_others_finish(
    tmp_path: Path, local_ray: None, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = write_study(
        tmp_path,
        "diverge",
        search={"lsp.lambda": {"choice": [1.0, 1.0e30]}},
        searcher={"algorithm": "grid", "max_concurrent": 2},
    )
    code = main(["run", str(path), "--storage", str(tmp_path / "studies"), "--tracking-uri", uri])
    # The study did what it was asked: a diverged configuration is a result, not a crash.
    assert code == 0, capsys.readouterr().out[-3000:]

    client = MlflowClient(uri)
    runs = _trial_runs(client, "diverge")
    assert len(runs) == 3
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert len(failed) == 1 and sum(r.info.status == "FINISHED" for r in runs) == 2
    (bad,) = failed
    reason = bad.data.tags[tr.TAG_ERROR]
    assert reason.startswith("training diverged at epoch 0: train_loss ") and "\n" not in reason
    assert bad.data.params["lsp.lambda"] == "1e+30"
    assert tr.METRIC_TEST not in bad.data.metrics  # nothing a table could read
    exp = client.get_experiment_by_name("diverge")
    (study_run,) = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{tr.TAG_ROLE}` = '{tr.ROLE_STUDY}'"
    )
    assert study_run.info.status == "FINISHED"
    assert study_run.data.tags[tr.TAG_FAILED_TRIALS] == "1"

    df = load_runs("diverge", tracking_uri=uri)
    bad_config = df.loc[df["run_id"] == bad.info.run_id, "config_id"].item()
    summary = ablation.config_summary(df)
    assert bad_config not in set(summary["config_id"]) and len(summary) == 2
    assert bad_config not in set(ablation.method_table(df, paper=False)["config_id"])
    assert bad_config not in set(pareto_front(summary, by="dataset")["config_id"])
    failures = ablation.failure_table(df)
    assert failures[["method", "failed", "trials"]].values.tolist() == [["lsp", 1, 2]]
    assert failures.loc[0, "reasons"] == reason

    report = write_report("diverge", tmp_path / "report", tracking_uri=uri)
    text = (report / "README.md").read_text()
    assert "- Failed trials: 1, left out of every table and front" in text and reason in text


def _outcome(rows: list[dict], errors: int = 0) -> StudyOutcome:
    return StudyOutcome("s", Path("."), "uri", "0", "p", "t", rows, errors)


def test_outcome_counts_failed_trials_and_chooses_the_parent_status() -> None:
    done, diverged, cut = {tr.METRIC_TEST: 0.5}, {RESULT_ERROR: "training diverged"}, {"epoch": 3}
    assert _outcome([done, diverged]).status == "FINISHED" and _outcome([done, diverged]).complete
    assert _outcome([diverged, diverged]).status == "FAILED"  # nothing to show: exit code 1
    assert _outcome([done, cut]).status == "KILLED"  # interrupted: resume continues it
    assert _outcome([done, done], errors=1).status == "FAILED"


def test_a_trial_whose_run_ended_reports_what_it_recorded(tmp_path: Path) -> None:
    """The replay of :func:`study.trial.recorded_result`, on a real store without Ray."""
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("replay", artifact_location=(tmp_path / "a").as_uri())
    spec = load_study_spec(write_study(tmp_path, "replay"))

    def run(status: str, tags: dict[str, str], metrics: dict[str, float], step: int) -> Run:
        run_id = client.create_run(exp, tags={tr.TAG_CONFIG_ID: "cfg", **tags}).info.run_id
        history = [Metric(k, 1.0, 0, e) for e in range(step) for k in tr.EPOCH_METRICS]
        finals = [Metric(k, v, 0, step) for k, v in metrics.items()]
        client.log_batch(run_id, metrics=history + finals)
        if status != "RUNNING":
            client.set_terminated(run_id, status)
        return client.get_run(run_id)

    finals = {tr.METRIC_VAL: 0.75, tr.METRIC_TEST: 0.5, tr.METRIC_LATENCY_P50: 2.0}
    finished = run("FINISHED", {}, {**finals, tr.METRIC_PARAMS: 88.0}, 4)
    assert recorded_result(client, finished, spec) == {
        "epoch": 4,
        **finals,
        tr.METRIC_PARAMS: 88.0,
        "config_id": "cfg",
        "mlflow_run_id": finished.info.run_id,
    }
    diverged = run("FAILED", {tr.TAG_ERROR: "training diverged at epoch 2: x"}, {}, 2)
    result = recorded_result(client, diverged, spec)
    assert result is not None and result[RESULT_ERROR] == "training diverged at epoch 2: x"
    assert result["epoch"] == 2 and math.isnan(result[tr.METRIC_VAL])
    # Interrupted (RUNNING) or crashed without a reason (FAILED): the trial trains on.
    assert recorded_result(client, run("RUNNING", {}, {}, 3), spec) is None
    assert recorded_result(client, run("FAILED", {}, {}, 3), spec) is None
