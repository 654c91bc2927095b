"""A finished study is read-only: ``resume`` says so and writes nothing.

- A real Ray study (1 sample, 2 epochs), run to the end; every run's metrics (whole history),
  params, tags and status are read from MLflow; ``distill-study resume`` of it prints one line,
  exits 2, starts no Ray, and the store reads back identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import ray
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from study import tracking as tr
from study.cli import main
from tests.studies import tiny_student, write_study


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
    student = tiny_student(2)
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
    assert trials[0]["tags"][tr.TAG_LATENCY_SOURCE] == "measured"
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
    assert not ray.is_initialized()  # nothing was started
    assert snapshot(uri) == before
