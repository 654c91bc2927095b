"""Studies on a real Ray with a real MLflow store: layout, teacher reuse, validation, listing."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
from mlflow.tracking import MlflowClient

from study import allocator
from study import tracking as tr
from study.cli import main
from study.config import load_study_spec
from study.runner import list_studies, run_study
from tests.studies import write_study

pytestmark = pytest.mark.ray


@pytest.fixture
def local_ray():
    """A local Ray for one test, shut down after it (never `ray stop`: it kills every Ray)."""
    yield
    ray.shutdown()


def runs_of(client: MlflowClient, experiment_id: str, role: str) -> list:
    return client.search_runs([experiment_id], filter_string=f"tags.`{tr.TAG_ROLE}` = '{role}'")


def test_study_leaves_the_mlflow_layout(
    tmp_path: Path, local_ray: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(allocator.SWITCH_ENV, "1")  # checked at the end: workers get it
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    storage = tmp_path / "studies"
    path = write_study(
        tmp_path,
        "layout",
        seeds=[0, 1],
        searcher={"algorithm": "random", "num_samples": 2, "max_concurrent": 2, "seed": 0},
    )
    outcome = run_study(path, tracking_uri=uri, storage=storage)
    assert outcome.complete and len(outcome.trials) == 4

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("layout")
    assert exp is not None
    (study_run,) = runs_of(client, exp.experiment_id, tr.ROLE_STUDY)
    assert study_run.info.run_name == "layout" and study_run.info.status == "FINISHED"
    assert study_run.data.params["num_trials"] == "4"
    (teacher,) = runs_of(client, exp.experiment_id, tr.ROLE_TEACHER)
    assert teacher.info.status == "FINISHED"
    artifacts = [a.path for a in client.list_artifacts(teacher.info.run_id, "teacher")]
    assert artifacts == [tr.TEACHER_CHECKPOINT_ARTIFACT]
    assert study_run.data.tags[tr.TAG_TEACHER_RUN] == teacher.info.run_id

    trials = runs_of(client, exp.experiment_id, tr.ROLE_TRIAL)
    assert len(trials) == 4
    spec = load_study_spec(path)
    for run in trials:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        assert run.info.status == "FINISHED"
        assert tags[tr.TAG_PARENT] == study_run.info.run_id
        assert tags[tr.TAG_TEACHER_RUN] == teacher.info.run_id
        assert tags[tr.TAG_DATASET] == "synthetic_sbm"
        assert tags[tr.TAG_METHOD] == params["method"] in ("none", "lsp")
        assert tags[tr.TAG_SEED] == params["seed"] in ("0", "1")
        assert tags[tr.TAG_DEVICE] == "cpu"
        assert len(tags[tr.TAG_CONFIG_ID]) == 12
        # Conditional hyperparameters: lambda only on LSP trials.
        assert ("lsp.lambda" in params) == (params["method"] == "lsp")
        for key in tr.FINAL_METRICS:
            assert key in metrics, key
        # Per-class summaries on both splits, AUROC on both, and the per-class table.
        for split in ("val", "test"):
            for key in ("macro_f1", "worst_class_recall", "auroc"):
                assert 0.0 <= metrics[f"{split}_{key}"] <= 1.0, (split, key)
        assert tr.CLASS_TABLE_ARTIFACT in {a.path for a in client.list_artifacts(run.info.run_id)}
        assert 0.0 <= metrics[tr.METRIC_TEST] <= 1.0
        assert metrics[tr.METRIC_LATENCY_P50] <= metrics[tr.METRIC_LATENCY_P90]
        history = client.get_metric_history(run.info.run_id, "epoch_val_score")
        assert sorted(m.step for m in history) == list(range(spec.student.train.epochs))

    # Every trial keeps its trained student, in study.export's layout.
    for run in trials:
        files = {a.path for a in client.list_artifacts(run.info.run_id, tr.STUDENT_ARTIFACT_DIR)}
        assert {"student/weights.pt", "student/config.json"} <= files

    # One student architecture: one latency figure, measured by one trial in a quiet window
    # and read from the study's cache by the other three; its p50's CI logged beside it.
    assert len({r.data.tags[tr.TAG_LATENCY_SIGNATURE] for r in trials}) == 1
    assert len({r.data.metrics[tr.METRIC_LATENCY_P50] for r in trials}) == 1
    # ONNX Runtime's figure comes in the same bundle: measured once too.
    assert {r.data.tags[tr.TAG_ONNX] for r in trials} == {"measured"}
    assert len({r.data.metrics[tr.METRIC_LATENCY_ONNX_P50] for r in trials}) == 1
    sources = sorted(r.data.tags[tr.TAG_LATENCY_SOURCE] for r in trials)
    assert sources == ["cached", "cached", "cached", "measured"]
    for run in trials:
        m = run.data.metrics
        assert (
            m[tr.METRIC_LATENCY_CI_LOW] <= m[tr.METRIC_LATENCY_P50] <= m[tr.METRIC_LATENCY_CI_HIGH]
        )
        assert run.data.tags["latency_stable"] in ("true", "false")
        assert run.data.tags["latency_quiet"] == "true"

    # Seeds repeat a configuration: each config_id appears once per seed, with both seeds.
    by_config: dict[str, set[str]] = {}
    for run in trials:
        by_config.setdefault(run.data.tags[tr.TAG_CONFIG_ID], set()).add(run.data.tags[tr.TAG_SEED])
    assert len(by_config) == 2 and all(seeds == {"0", "1"} for seeds in by_config.values())

    # A second study with the same teacher spec reuses the teacher instead of training it again.
    again = run_study(
        write_study(tmp_path, "layout2", searcher={"algorithm": "random", "num_samples": 1}),
        tracking_uri=uri,
        storage=storage,
    )
    assert again.teacher_run_id == teacher.info.run_id
    exp2 = client.get_experiment_by_name("layout2")
    assert runs_of(client, exp2.experiment_id, tr.ROLE_TEACHER) == []

    listed = {s["study"]: s for s in list_studies(storage)}
    assert listed["layout"]["finished"] == 4 and listed["layout"]["planned"] == 4
    assert listed["layout2"]["finished"] == 1 and listed["layout2"]["status"] == "FINISHED"

    # Asked for, the study's workers started with glibc told to keep freed memory.
    assert ray.get(_allocator_env.remote()) == allocator.RETAIN_ENV


@ray.remote
def _allocator_env() -> dict[str, str | None]:
    # The environment the worker process was started with: what glibc read.
    with open("/proc/self/environ", "rb") as f:
        entries = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
    return {k: entries.get(k.encode(), b"").decode() or None for k in allocator.RETAIN_ENV}


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"methods": ["none", "lsq"]}, "unknown method 'lsq'"),
        ({"dataset": {"name": "cora"}}, "GDS_DATA_ROOT"),
        ({"objectives": [{"metric": "test_score", "mode": "max"}]}, "test_score"),
    ],
)
def test_bad_input_starts_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    override: dict,
    needle: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GDS_DATA_ROOT", str(tmp_path / "no-data"))
    monkeypatch.delenv(tr.TRACKING_URI_ENV, raising=False)
    path = write_study(tmp_path, "bad", **override)
    assert main(["run", str(path), "--storage", str(tmp_path / "studies")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "studies").exists()
    assert not ray.is_initialized()


def test_existing_study_is_not_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    storage = tmp_path / "studies"
    (storage / "taken").mkdir(parents=True)
    (storage / "taken" / "keep.txt").write_text("mine")
    path = write_study(tmp_path, "taken")
    assert (
        main(
            [
                "run",
                str(path),
                "--storage",
                str(storage),
                "--tracking-uri",
                f"sqlite:///{tmp_path}/m.db",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "already exists" in err and "resume" in err
    assert (storage / "taken" / "keep.txt").read_text() == "mine"
    assert not ray.is_initialized()


def test_resume_of_unknown_study_names_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from study.runner import CONTEXT_FILE

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / CONTEXT_FILE).write_text("{}")  # what marks a study's folder
    assert main(["resume", "nope", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no resumable study named 'nope'" in err and "(found: other)" in err


def test_validate_counts_trials(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_study(tmp_path, "v", seeds=[0, 1, 2])
    assert main(["validate", str(path)]) == 0
    assert "12 trials" in capsys.readouterr().out
