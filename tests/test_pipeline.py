"""`distill-study pipeline`: two rounds on a real Ray and a real MLflow store, the data changed
in between (another synthetic graph: a new fingerprint), so the second round trains a new
teacher, re-distils, registers a challenger and promotes it only if it wins."""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

from study import tracking as tr
from study.cli import main
from tests.studies import tiny_study

STUDY = "pipe"
MODEL = f"{STUDY}-student"
P = tr.VTAG_PROMOTE_PREFIX


def _write(path: Path, graph_seed: int) -> None:
    study = tiny_study(
        STUDY,
        dataset={
            "name": "synthetic_sbm",
            "options": {"num_nodes": 200, "num_features": 8, "seed": graph_seed},
        },
        methods=["none"],
        # One student configuration per round keeps the test short; test_serve covers choosing.
        search={"student.arch": {"choice": ["gcn"]}},
        searcher={"algorithm": "grid", "num_samples": 1, "max_concurrent": 1},
    )
    study["teacher"]["train"]["epochs"] = 3
    study["student"]["train"]["epochs"] = 3
    path.write_text(yaml.safe_dump(study, sort_keys=False))


def _runs(client: MlflowClient, experiment: str, role: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, experiment
    return client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{tr.TAG_ROLE}` = '{role}'",
        order_by=["attributes.start_time ASC"],
    )


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--max-latency-ms", "-2"], "--max-latency-ms: expected a positive number"),
        (["--max-latency-ms", "5", "--model-name", "a/b"], "--model-name: 'a/b'"),
    ],
)
def test_bad_input_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], expected: str
) -> None:
    path = tmp_path / "pipe.yaml"
    _write(path, graph_seed=0)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code = main(["pipeline", str(path), "--tracking-uri", uri, "--storage", str(tmp_path / "s"),
                 "--out", str(tmp_path / "exports"), *extra])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.yaml"]  # no store, no folder


def test_an_existing_round_export_is_refused(tmp_path: Path, capsys) -> None:
    path = tmp_path / "pipe.yaml"
    _write(path, graph_seed=0)
    taken = tmp_path / "exports" / f"{STUDY}-r1"
    taken.mkdir(parents=True)
    (taken / "keep.txt").write_text("mine")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["pipeline", str(path), "--max-latency-ms", "5", "--tracking-uri", uri]
    args += ["--storage", str(tmp_path / "studies")]
    assert main([*args, "--out", str(tmp_path / "exports")]) == 2
    assert "--out:" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists() and (taken / "keep.txt").read_text() == "mine"


@pytest.mark.ray
def test_two_rounds_retrain_redistil_and_promote_only_a_winner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv(tr.TRACKING_URI_ENV, uri)
    path = tmp_path / "pipe.yaml"
    args = ["pipeline", str(path), "--max-latency-ms", "1000", "--tracking-uri", uri]
    args += ["--storage", str(tmp_path / "studies"), "--out", str(tmp_path / "exports")]
    try:
        _write(path, graph_seed=0)
        assert main(args) == 0
        first = capsys.readouterr().out
        _write(path, graph_seed=1)  # the data changes: another graph, another fingerprint
        assert main(args) == 0
        second = capsys.readouterr().out
    finally:
        ray.shutdown()
    assert "pipeline round 1 of 'pipe'" in first and "pipeline round 2 of 'pipe'" in second
    assert "trained for this data" in first and "trained for this data" in second

    client = MlflowClient(uri)
    rounds = _runs(client, f"{STUDY}-pipeline", tr.ROLE_PIPELINE)
    assert [r.data.tags[tr.TAG_PIPELINE_ROUND] for r in rounds] == ["1", "2"]
    assert all(r.info.status == "FINISHED" for r in rounds)
    prints = [r.data.tags[tr.TAG_DATA_FINGERPRINT] for r in rounds]
    assert prints[0] != prints[1]

    # Lineage of each round: teacher run -> study run -> model version.
    teachers = []
    for n, run in enumerate(rounds, start=1):
        tags, metrics = run.data.tags, run.data.metrics
        (study_run,) = _runs(client, f"{STUDY}-r{n}", tr.ROLE_STUDY)
        (teacher,) = _runs(client, f"{STUDY}-r{n}", tr.ROLE_TEACHER)  # trained in this round
        teachers.append(teacher)
        assert tags[tr.TAG_TEACHER_RUN] == teacher.info.run_id
        assert tags[tr.VTAG_STUDY_RUN] == study_run.info.run_id
        assert study_run.data.tags[tr.TAG_TEACHER_RUN] == teacher.info.run_id
        assert study_run.data.tags[tr.TAG_DATA_FINGERPRINT] == prints[n - 1]
        assert metrics["teacher_val_score"] == teacher.data.metrics[tr.METRIC_VAL]  # the ceiling
        assert metrics["teacher_test_score"] == teacher.data.metrics[tr.METRIC_TEST]
        version = client.get_model_version(MODEL, tags["model_version"])
        assert str(version.version) == str(n)
        assert version.tags[tr.TAG_TEACHER_RUN] == teacher.info.run_id
        assert version.tags[tr.VTAG_STUDY_RUN] == study_run.info.run_id
        assert version.tags[tr.TAG_PIPELINE_ROUND] == str(n)
        assert version.tags[tr.TAG_DATA_FINGERPRINT] == prints[n - 1]
        assert version.tags["study"] == f"{STUDY}-r{n}"
        # Every trial logged its student as an MLflow model and an ONNX Runtime latency.
        for trial in _runs(client, f"{STUDY}-r{n}", tr.ROLE_TRIAL):
            names = {a.path for a in client.list_artifacts(trial.info.run_id, "student")}
            assert "student/MLmodel" in names and "student/weights.pt" in names
            assert trial.data.tags[tr.TAG_ONNX].startswith("measured")
            assert trial.data.metrics[tr.METRIC_LATENCY_ONNX_P50] > 0
    t_hash = [t.data.tags[tr.TAG_TEACHER_HASH] for t in teachers]
    assert t_hash[0] != t_hash[1]  # new data: a new teacher, not the first one reused

    # Round 1 had no champion; round 2's challenger is promoted exactly when it wins.
    v1, v2 = (client.get_model_version(MODEL, v).tags for v in ("1", "2"))
    assert v1[f"{P}decision"] == tr.PROMOTED and v1[f"{P}champion_version"] == "none"
    assert v2[f"{P}champion_version"] == "1"
    wins = float(v2[f"{P}challenger_val_score"]) > float(v2[f"{P}champion_val_score"])
    assert v2[f"{P}decision"] == (tr.PROMOTED if wins else tr.KEPT)
    champion = client.get_model_version_by_alias(MODEL, tr.ALIAS_CHAMPION)
    assert str(champion.version) == ("2" if wins else "1")
    assert rounds[1].data.tags["champion_version"] == str(champion.version)
    assert str(client.get_model_version_by_alias(MODEL, tr.ALIAS_CHALLENGER).version) == "2"

    # The registered version loads as an MLflow model and answers its own input example.
    example = tmp_path / "exports" / f"{STUDY}-r2" / "input_example.json"
    assert example.is_file()
    loaded = mlflow.pyfunc.load_model(f"models:/{MODEL}/2")
    request = loaded.input_example
    probs = loaded.predict(request)
    assert probs.shape == (len(request["nodes"]), 4)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
