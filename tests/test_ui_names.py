"""What a user sees in the MLflow UI: experiments of kind custom_model_development (runs, not
GenAI traces) and trial runs named by method, key hyperparameters, student and seed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import ray
from mlflow.tracking import MlflowClient

from study import tracking as tr
from study.config import parse_study_text, resolve_trial
from study.names import format_value, trial_run_name
from study.runner import EXPERIMENT_KIND, run_study, start_study_run
from tests.studies import tiny_student, tiny_study, write_study

KIND_KEY, KIND_VALUE = EXPERIMENT_KIND
assert (KIND_KEY, KIND_VALUE) == ("mlflow.experimentKind", "custom_model_development")

# method with its key hyperparameters, student architecture, width, seed
NAME = re.compile(r"^(none|kd-T\d+\.\d+|lsp-rbf-lam\d+(\.\d+)?)-gat-w4-s0$")


# ---------------------------------------------------------------- the name builder


def test_format_value() -> None:
    assert format_value(12.3456) == "12.3"
    assert format_value(4.0) == "4.0"
    assert format_value(4) == "4"
    assert format_value(123.4) == "123"
    assert format_value(1000.0) == "1000"
    assert format_value(0.0005) == "0.0005"
    assert format_value("rbf") == "rbf"
    assert format_value(None) == "none"
    assert format_value(True) == "on"
    assert format_value([64, 32]) == "64x32"


def test_names_of_the_built_in_methods() -> None:
    base = {"student.arch": "gat", "student.width": 16, "student.depth": 2, "student.heads": 2}
    lsp = {
        "method": "lsp",
        "lsp.lambda": 12.34,
        "lsp.kernel": "rbf",
        "lsp.direction": "student_teacher",
        "lsp.lsp_until_epoch": None,
        "lsp.layer_map": [[-1, -1]],
        "lsp.sigma": 1.0,
        **base,
        "seed": 0,
    }
    assert trial_run_name(lsp) == "lsp-rbf-lam12.3-gat-w16-s0"
    # A searched kernel parameter is named too; unsearched ones (sigma, direction) are not.
    assert trial_run_name(lsp, ["lsp.sigma"]) == "lsp-rbf-lam12.3-sig1.0-gat-w16-s0"
    kd = {"method": "kd", "kd.temperature": 4.0, "kd.alpha": 0.9, **base, "student.width": 8}
    assert trial_run_name({**kd, "seed": 1}) == "kd-T4.0-gat-w8-s1"
    assert trial_run_name({**kd, "seed": 1}, ["kd.alpha"]) == "kd-T4.0-a0.9-gat-w8-s1"
    none = {"method": "none", **base, "student.width": 4, "seed": 0}
    assert trial_run_name(none) == "none-gat-w4-s0"
    # Searched student dimensions other than arch and width follow the width.
    searched = ["student.depth", "student.lr"]
    named = trial_run_name({**none, "student.lr": 0.01}, searched)
    assert named == "none-gat-w4-d2-lr0.01-s0"


def test_names_of_a_factory_student_use_its_searched_options() -> None:
    params = {
        "method": "lsp",
        "lsp.lambda": 3.0,
        "lsp.kernel": "linear",
        "student.factory": "my_models:make_student",
        "student.hidden": ["conv1"],
        "student.options.hidden_channels": 8,
        "student.options.dropout": 0.5,
        "seed": 2,
    }
    named = trial_run_name(params, ["student.options.hidden_channels"])
    assert named == "lsp-linear-lam3.0-hc8-s2"


def test_names_from_resolved_trials_are_stable() -> None:
    spec = parse_study_text(
        __import__("yaml").safe_dump(
            tiny_study(
                "names",
                methods=["none", "kd", "lsp"],
                search={
                    "lsp.lambda": {"loguniform": [1.0, 100.0]},
                    "kd.temperature": {"uniform": [1.0, 8.0]},
                    "student.width": {"choice": [4, 16]},
                },
            )
        ),
        "names.yaml",
    )
    searched = [d.name for d in spec.search]
    plan = resolve_trial(
        spec, {"method": "lsp", "seed": 0, "lsp.lambda": 12.34, "student.width": 16}
    )
    assert trial_run_name(plan.params, searched) == "lsp-rbf-lam12.3-gat-w16-s0"
    plan = resolve_trial(
        spec, {"method": "kd", "seed": 0, "kd.temperature": 4.0, "student.width": 4}
    )
    assert trial_run_name(plan.params, searched) == "kd-T4.0-gat-w4-s0"
    again = resolve_trial(
        spec, {"method": "kd", "seed": 0, "kd.temperature": 4.0, "student.width": 4}
    )
    assert trial_run_name(again.params, searched) == trial_run_name(plan.params, searched)


# ---------------------------------------------------------------- the experiment tag


def test_an_existing_experiment_gets_the_kind_tag(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    old = client.create_experiment("older")  # made before this version: no kind tag
    assert KIND_KEY not in client.get_experiment(old).tags
    path = write_study(tmp_path, "older")
    spec = parse_study_text(path.read_text(), str(path))
    experiment_id, _ = start_study_run(client, spec, path.read_text(), 4)
    assert experiment_id == old
    assert client.get_experiment(old).tags[KIND_KEY] == KIND_VALUE


# ---------------------------------------------------------------- a real study


@pytest.mark.ray
def test_a_real_study_has_the_kind_tag_and_readable_run_names(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = write_study(
        tmp_path,
        "readable",
        methods=["none", "kd", "lsp"],
        search={
            "lsp.lambda": {"loguniform": [1.0, 100.0]},
            "kd.temperature": {"uniform": [1.0, 8.0]},
        },
        student=tiny_student(2),
        searcher={"algorithm": "random", "num_samples": 2, "max_concurrent": 2, "seed": 0},
    )
    try:
        outcome = run_study(path, tracking_uri=uri, storage=tmp_path / "studies")
    finally:
        ray.shutdown()
    assert outcome.complete

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("readable")
    assert exp.tags[KIND_KEY] == KIND_VALUE
    trials = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{tr.TAG_ROLE}` = '{tr.ROLE_TRIAL}'"
    )
    assert len(trials) == 2
    for run in trials:
        name = run.info.run_name
        assert NAME.match(name), name
        method = run.data.tags[tr.TAG_METHOD]
        assert name.startswith(f"{method}-") and name.endswith(f"-s{run.data.tags[tr.TAG_SEED]}")
        assert "run_trial" not in name
        assert run.data.tags["gds.tune_trial_name"].startswith("run_trial")
