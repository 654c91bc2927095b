"""examples/own_graph as a user runs it: train the teacher with the example's own script, then
validate, run, report and select the study, offline, on a copy of the folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import ray
from mlflow.tracking import MlflowClient

from study import tracking as tr
from study.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_graph"

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_the_own_graph_example_runs_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "own_graph"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("*.pt", "__pycache__"))
    trained = subprocess.run(
        [sys.executable, str(folder / "train_teacher.py")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert trained.returncode == 0, trained.stderr
    assert (folder / "teacher.pt").is_file()

    study = str(folder / "study.yaml")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["validate", study]) == 0
    assert "ok (keys, data (2 classes, metric auroc) and models)" in capsys.readouterr().out
    try:
        code = main(["run", study, "--tracking-uri", uri, "--storage", str(tmp_path / "runs")])
    finally:
        ray.shutdown()
    assert code == 0, capsys.readouterr().err

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("own-graph")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    trials = [r for r in runs if r.data.tags[tr.TAG_ROLE] == tr.ROLE_TRIAL]
    assert len(trials) == 32 and all(r.info.status == "FINISHED" for r in trials)
    methods = {r.data.params["method"] for r in trials}
    assert methods <= {"none", "kd", "fitnet", "lsp"} and len(methods) >= 3
    widths = {r.data.params["student.options.hidden_channels"] for r in trials}
    assert widths <= {"4", "8", "16"} and len(widths) > 1
    (teacher,) = [r for r in runs if r.data.tags[tr.TAG_ROLE] == tr.ROLE_TEACHER]
    # The user's checkpoint is the teacher (no training in the study); AUROC is the headline.
    assert tr.METRIC_TRAIN_SECONDS not in teacher.data.metrics
    assert teacher.data.metrics[tr.METRIC_TEST] > 0.85

    report = tmp_path / "report"
    assert main(["report", "own-graph", "--tracking-uri", uri, "--out", str(report)]) == 0
    assert (report / "README.md").is_file()

    # select exports the user's student like a built-in one: weights, factory, TorchScript.
    out = tmp_path / "selected"
    argv = ["select", "own-graph", "--max-latency-ms", "1000", "--tracking-uri", uri]
    assert main([*argv, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["spec"]["factory"] == "fraud_models:student"
    assert config["torchscript"]["available"] is True
    assert (out / "weights.pt").is_file() and (out / "model.torchscript.pt").is_file()
