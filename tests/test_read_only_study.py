"""A finished study is read-only: ``resume`` says so and writes nothing; calibration never
rewrites a figure once logged.

- A real Ray study (1 sample, 2 epochs), run to the end; every run's metrics (whole history),
  params, tags and status are read from MLflow; ``distill-study resume`` of it prints one line,
  exits 2, starts no Ray, and the store reads back identical.
- :func:`study.calibration.calibrate_latency` skips runs tagged ``gds.latency=calibrated`` and
  never rewrites ``latency_ms_p50_in_trial`` (no Ray: the measuring task is replaced).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import ray
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from study import calibration
from study import tracking as tr
from study.cli import main
from study.config import load_study_spec
from tests.mlflow_fixtures import fill_study
from tests.studies import write_study


def snapshot(uri: str) -> dict[str, Any]:
    """Everything ``resume`` could write: per run of every experiment, its status, end time,
    tags, params and every metric's full history."""
    client = MlflowClient(uri)
    out: dict[str, Any] = {}
    for exp in client.search_experiments(view_type=ViewType.ALL):
        out[f"experiment {exp.name}"] = (exp.lifecycle_stage, sorted(exp.tags.items()))
        runs = client.search_runs(
            [exp.experiment_id], run_view_type=ViewType.ALL, max_results=50000
        )
        for run in runs:
            rid = run.info.run_id
            history = {
                key: sorted(
                    (m.step, m.timestamp, m.value) for m in client.get_metric_history(rid, key)
                )
                for key in run.data.metrics
            }
            out[rid] = {
                "status": run.info.status,
                "end_time": run.info.end_time,
                "lifecycle": run.info.lifecycle_stage,
                "tags": dict(run.data.tags),
                "params": dict(run.data.params),
                "metrics": dict(run.data.metrics),
                "history": history,
            }
    return out


@pytest.mark.ray
def test_resume_of_a_finished_study_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    storage = tmp_path / "studies"
    student = {
        "arch": "gat",
        "width": 4,
        "depth": 2,
        "heads": 1,
        "dropout": 0.0,
        "train": {"epochs": 2, "lr": 0.01},
    }
    path = write_study(
        tmp_path,
        "readonly",
        student=student,
        methods=["lsp"],
        searcher={"algorithm": "random", "num_samples": 1, "max_concurrent": 1, "seed": 0},
    )
    try:
        assert main(["run", str(path), "--tracking-uri", uri, "--storage", str(storage)]) == 0
    finally:
        ray.shutdown()
    before = snapshot(uri)
    trials = [
        r
        for r in before.values()
        if isinstance(r, dict) and r["tags"].get(tr.TAG_ROLE) == tr.ROLE_TRIAL
    ]
    assert len(trials) == 1 and trials[0]["status"] == "FINISHED"
    assert trials[0]["tags"].get(calibration.TAG_LATENCY) == calibration.CALIBRATED
    capsys.readouterr()

    code = main(["resume", "readonly", "--storage", str(storage)])

    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert (
        "has finished" in lines[0] and "read-only" in lines[0] and "nothing was changed" in lines[0]
    )
    assert not ray.is_initialized()  # nothing was started, so nothing could be calibrated
    assert snapshot(uri) == before


def _fake_ray(calls: list[Any]) -> Any:
    """Stands in for ``ray`` in study.calibration: the measuring task runs here, recorded."""

    class Remote:
        def __init__(self, fn: Any) -> None:
            self.fn = fn

        def options(self, **_: Any) -> Remote:
            return self

        def remote(self, spec: Any, keys: list[str], teacher_spec: Any, data_root: Any) -> Any:
            calls.append((keys, teacher_spec))
            figs = {
                k: {"latency_ms_p50": 9.0, "latency_ms_p90": 10.0, "device": "cpu", "threads": 1}
                for k in keys
            }
            if teacher_spec is not None:
                figs["teacher"] = {
                    "latency_ms_p50": 20.0,
                    "latency_ms_p90": 21.0,
                    "device": "cpu",
                    "threads": 1,
                }
            return figs

    class FakeRay:
        @staticmethod
        def remote(fn: Any) -> Remote:
            return Remote(fn)

        @staticmethod
        def get(x: Any) -> Any:
            return x

    return FakeRay()


def test_calibration_skips_calibrated_runs_and_keeps_in_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    metrics = {"test_score": 0.8, "val_score": 0.7, "latency_ms_p50": 5.0, "latency_ms_p90": 6.0}
    ids = fill_study(
        uri,
        "calib",
        [
            {"method": "none", "seed": 0, "metrics": dict(metrics)},
            {"method": "none", "seed": 1, "metrics": {**metrics, "latency_ms_p50_in_trial": 4.0}},
        ],
    )
    client = MlflowClient(uri)
    done, partial = ids["trial_run_ids"]
    teacher = ids["teacher_run_ids"][0]
    # The first trial and the teacher were calibrated before (e.g. by an earlier study).
    for rid in (done, teacher):
        client.set_tag(rid, calibration.TAG_LATENCY, calibration.CALIBRATED)
    spec = load_study_spec(write_study(tmp_path, "calib"))
    calls: list[Any] = []
    monkeypatch.setattr(calibration, "ray", _fake_ray(calls))
    monkeypatch.setattr(calibration, "student_key", lambda spec, config: "arch")
    rows = [
        {"mlflow_run_id": done, "test_score": 0.8, "latency_ms_p50": 1.0, "config": {}},
        {"mlflow_run_id": partial, "test_score": 0.8, "latency_ms_p50": 1.0, "config": {}},
    ]
    before = snapshot(uri)

    assert calibration.calibrate_latency(spec, rows, client, teacher, None) == 1

    after = snapshot(uri)
    assert calls == [(["arch"], None)]  # only the uncalibrated trial's architecture; no teacher
    assert after[done] == before[done] and after[teacher] == before[teacher]
    new = after[partial]
    assert new["tags"][calibration.TAG_LATENCY] == calibration.CALIBRATED
    assert new["metrics"]["latency_ms_p50"] == 9.0
    assert [v for _, _, v in new["history"]["latency_ms_p50"]] == [5.0, 9.0]  # beside the old
    assert (
        new["history"]["latency_ms_p50_in_trial"]
        == before[partial]["history"]["latency_ms_p50_in_trial"]
    )  # set once, never rewritten
    assert rows[0]["latency_ms_p50"] == 5.0 and rows[1]["latency_ms_p50"] == 9.0

    # Run again: everything is calibrated now, nothing is measured or written.
    calls.clear()
    assert calibration.calibrate_latency(spec, rows, client, teacher, None) == 0
    assert calls == [] and snapshot(uri) == after
