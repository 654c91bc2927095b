"""The quickstart as a new user runs it from the README, and the MLflow layout it leaves."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study import tracking as tr

REPO = Path(__file__).resolve().parents[1]


def console_script() -> str:
    """The installed ``distill-study`` beside this interpreter (a shim may depend on $HOME)."""
    beside = Path(sys.executable).parent / "distill-study"
    return str(beside) if beside.exists() else shutil.which("distill-study") or "distill-study"


pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1500)]


def test_quickstart_from_the_readme(tmp_path: Path, gds_data_root: Path) -> None:
    readme = (REPO / "README.md").read_text()
    assert "distill-study run search_spaces/quickstart.yaml" in readme
    env = {k: v for k, v in os.environ.items() if k != tr.TRACKING_URI_ENV}
    env.update(GDS_DATA_ROOT=str(gds_data_root), HOME=str(tmp_path / "home"))
    done = subprocess.run(
        [console_script(), "run", str(REPO / "search_spaces" / "quickstart.yaml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1400,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "mlflow ui --backend-store-uri" in done.stdout and "Best configurations" in done.stdout
    assert "distill-study report quickstart" in done.stdout
    assert "distill-study select quickstart" in done.stdout and "--max-latency-ms" in done.stdout
    assert (tmp_path / "home" / "ray_results" / "quickstart").is_dir()  # Tune's default storage

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")  # the default store, in the cwd
    exp = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([exp.experiment_id])
    roles = [r.data.tags.get(tr.TAG_ROLE) for r in runs]
    assert roles.count(tr.ROLE_STUDY) == 1 and roles.count(tr.ROLE_TEACHER) == 1
    (study,) = [r for r in runs if r.data.tags[tr.TAG_ROLE] == tr.ROLE_STUDY]
    assert study.info.run_name == "quickstart" and study.info.status == "FINISHED"
    trials = [r for r in runs if r.data.tags[tr.TAG_ROLE] == tr.ROLE_TRIAL]
    assert len(trials) >= 4
    assert len({r.data.tags[tr.TAG_METHOD] for r in trials}) >= 2
    # A trade-off to show: students of several sizes or architectures, at several latencies.
    assert len({r.data.metrics["num_params"] for r in trials}) >= 3
    assert len({r.data.tags[tr.TAG_STUDENT_ARCH] for r in trials}) >= 2
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    for run in trials:
        name, method = run.info.run_name, run.data.tags[tr.TAG_METHOD]
        assert name.startswith(f"{method}-") and name.endswith("-s0"), name
    required_tags = (
        tr.TAG_PARENT,
        tr.TAG_METHOD,
        tr.TAG_DATASET,
        tr.TAG_SEED,
        tr.TAG_CONFIG_ID,
        tr.TAG_TEACHER_RUN,
        tr.TAG_DEVICE,
    )
    for run in trials:
        assert run.info.status == "FINISHED"
        assert all(run.data.tags.get(t) for t in required_tags)
        assert run.data.tags[tr.TAG_PARENT] == study.info.run_id
        assert run.data.tags[tr.TAG_DATASET] == "cora"
        assert set(tr.FINAL_METRICS) <= set(run.data.metrics)
        assert run.data.params["method"] == run.data.tags[tr.TAG_METHOD]
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 100
