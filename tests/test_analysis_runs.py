"""analysis.runs against a real (sqlite) MLflow store filled with known runs."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis.runs import (
    display_uri,
    finished_trials,
    load_history,
    load_runs,
    load_teachers,
    type_param_column,
)
from study.errors import UserInputError
from tests.mlflow_fixtures import example_trials, fill_study


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store per module (the sqlite migration takes seconds): studies alpha, beta, stuck."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    ids = fill_study(uri, "alpha", example_trials("ppi"))
    beta = fill_study(
        uri,
        "beta",
        [
            {
                "method": "lsp",
                "dataset": "modelnet40",
                "seed": 3,
                "params": {"lsp.lambda": 5, "lsp.kernel": "l2", "student.width": 32},
                "metrics": {"test_score": 0.5, "latency_ms_p50": 1.5},
            }
        ],
    )
    fill_study(uri, "stuck", [{"method": "lsp", "status": "RUNNING"}])
    # The same trials as alpha, with params logged as str(value) as before encode_param.
    fill_study(uri, "legacy", example_trials("ppi"), encode=str)
    return {"uri": uri, "alpha": ids, "beta": beta}


def test_one_row_per_trial_with_identity_columns(store):
    df = load_runs("alpha", tracking_uri=store["uri"])
    assert len(df) == 12  # every trial, all statuses; no parent or teacher rows
    assert list(df.columns[:11]) == [
        "study", "run_id", "run_name", "status", "method", "dataset", "seed", "config_id",
        "teacher_run_id", "device", "student_arch",
    ]  # fmt: skip
    assert set(df["run_id"]) == set(store["alpha"]["trial_run_ids"])
    assert (df["study"] == "alpha").all()
    assert df["teacher_run_id"].eq(store["alpha"]["teacher_run_ids"][0]).all()
    assert df["seed"].dtype == "int64"
    a = df.loc[df["config_id"] == "cfgA"].sort_values("seed")
    assert a["seed"].tolist() == [0, 1, 2]
    assert sorted(df["status"].value_counts().items()) == [
        ("FAILED", 1), ("FINISHED", 9), ("KILLED", 1), ("RUNNING", 1),
    ]  # fmt: skip


def test_params_are_typed(store):
    df = load_runs("alpha", tracking_uri=store["uri"]).set_index("config_id")
    assert df["lsp.lambda"].dtype == "float64"
    assert df.loc["cfgB", "lsp.lambda"] == 10.0
    assert math.isnan(df.loc["cfgD", "lsp.lambda"])  # a method without lambda: NA
    assert df["student.width"].dtype == "int64"
    assert df.loc["cfgD", "student.width"] == 8
    # 0 next to 0.5: one float column.
    assert df["student.dropout"].dtype == "float64"
    assert df.loc["cfgD", "student.dropout"] == 0.0
    assert df.loc["cfgE", "student.dropout"] == 0.5
    assert df["student.residual"].dtype == "boolean"
    assert df.loc["cfgA", "student.residual"].all() and not df.loc["cfgB", "student.residual"]
    assert pd.isna(df.loc["cfgC", "student.residual"]).all()
    assert df["at.p"].dtype == "Int64" and df.loc["cfgF", "at.p"] == 1
    # "None" and a missing param both read as NA, the number as float.
    assert df["kd.alpha"].dtype == "float64"
    assert df.loc["cfgA", "kd.alpha"].isna().all() and (df.loc["cfgC", "kd.alpha"] == 0.5).all()
    assert df.loc["cfgB", "lsp.kernel"] == "poly"
    for m in ("val_score", "test_score", "latency_ms_p50", "latency_ms_p90", "num_params",
              "train_seconds"):  # fmt: skip
        assert df[m].dtype == "float64"
    assert df.loc["cfgB", "test_score"] == 0.9375


def test_legacy_str_params_read_like_encoded_ones(store):
    new = load_runs("alpha", tracking_uri=store["uri"]).set_index("run_name")
    old = load_runs("legacy", tracking_uri=store["uri"]).set_index("run_name")
    params = ["lsp.lambda", "lsp.kernel", "student.width", "student.dropout",
              "student.residual", "at.p", "kd.alpha", "kd.temperature"]  # fmt: skip
    for col in params:
        assert old[col].dtype == new[col].dtype, col
    pd.testing.assert_frame_equal(old[params], new[params])
    assert old.loc["lsp-3", "lsp.lambda"] == 10.0 and old.loc["lsp-0", "student.residual"]


def test_type_param_column_rules():
    assert type_param_column(["1", "2"]).dtype == "int64"
    assert type_param_column(["1", None]).dtype == "Int64"
    assert type_param_column(["1", "2.5"]).tolist() == [1.0, 2.5]
    assert type_param_column(["true", "False"]).tolist() == [True, False]
    assert type_param_column(["True", "None"]).dtype == "boolean"
    mixed = type_param_column(["10", "auto", None])
    assert mixed.tolist()[:2] == ["10", "auto"] and pd.isna(mixed.iloc[2])
    assert type_param_column(["None", None]).isna().all()
    assert type_param_column(["1e-3"]).tolist() == [0.001]
    # encode_param's text: a quoted string reads as the string, null as NA.
    assert type_param_column(['"16"', "auto", "null"]).tolist()[:2] == ["16", "auto"]
    assert type_param_column(["null", "false"]).dtype == "boolean"
    assert type_param_column(["100.0", "10.0"]).tolist() == [100.0, 10.0]
    # Lists stay text, so a column can still be grouped on.
    assert type_param_column(["[[-1, -1]]", "[[0, 1]]"]).tolist() == ["[[-1, -1]]", "[[0, 1]]"]


def test_finished_trials_counts_only_finished_with_test_score(store):
    done = finished_trials(load_runs("alpha", tracking_uri=store["uri"]))
    assert len(done) == 9
    assert "cfgG" not in set(done["config_id"])  # FAILED/KILLED with scores do not count


def test_several_studies_in_one_frame(store):
    df = load_runs(["alpha", "beta"], tracking_uri=store["uri"])
    assert df.groupby("study").size().to_dict() == {"alpha": 12, "beta": 1}
    beta = df.loc[df["study"] == "beta"].iloc[0]
    assert beta["dataset"] == "modelnet40" and beta["seed"] == 3
    # lambda is 5 in beta and 100.0 etc. in alpha: one float column.
    assert df["lsp.lambda"].dtype == "float64" and beta["lsp.lambda"] == 5.0


def test_history(store):
    df, hist = load_runs("alpha", tracking_uri=store["uri"], include_history=True)
    assert list(hist.columns) == ["run_id", "key", "step", "value"]
    b = df.loc[df["config_id"] == "cfgB", "run_id"].item()
    h = hist.loc[(hist["run_id"] == b) & (hist["key"] == "train_loss")]
    assert h["step"].tolist() == [0, 1, 2] and h["value"].tolist() == [1.0, 0.6, 0.4]
    e = df.loc[df["config_id"] == "cfgE", "run_id"].item()
    assert e not in set(hist["run_id"])  # logged no history
    direct = load_history([b], tracking_uri=store["uri"], keys=["epoch_val_score"])
    assert direct["value"].tolist() == [0.5, 0.7, 0.8]
    assert set(direct["key"]) == {"epoch_val_score"}


def test_teachers(store):
    t = load_teachers("alpha", tracking_uri=store["uri"])
    assert len(t) == 1
    row = t.iloc[0]
    assert row["run_id"] == store["alpha"]["teacher_run_ids"][0]
    assert row["test_score"] == pytest.approx(0.976) and row["num_params"] == 3_640_000
    assert row["dataset"] == "ppi" and row["status"] == "FINISHED"


def test_unknown_study_names_the_known_ones(store):
    with pytest.raises(UserInputError) as err:
        load_runs("nope", tracking_uri=store["uri"])
    msg = str(err.value)
    assert "'nope'" in msg and "known: alpha, beta, legacy, stuck" in msg and "\n" not in msg
    with pytest.raises(UserInputError, match="'nope'"):
        load_teachers("nope", tracking_uri=store["uri"])


def test_missing_sqlite_file_is_an_error_and_creates_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path}/absent.db"
    with pytest.raises(UserInputError, match="no MLflow store"):
        load_runs("alpha", tracking_uri=uri)
    assert not (tmp_path / "absent.db").exists()


def test_study_with_only_running_trials_has_no_finished(store):
    df = load_runs("stuck", tracking_uri=store["uri"])
    assert df["status"].tolist() == ["RUNNING"]
    assert finished_trials(df).empty


def test_display_uri_hides_credentials():
    assert display_uri("https://me:secret@host:5000/x") == "https://***@host:5000/x"
    assert display_uri("sqlite:////a/b.db") == "sqlite:////a/b.db"
