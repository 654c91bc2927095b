"""study.tracking: params as text and back, and artifact downloads into a shared cache."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from study.tracking import decode_param, download_artifact, encode_param


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (16, "16"),
        (0, "0"),
        (-3, "-3"),
        (1e-4, "0.0001"),
        (100.0, "100.0"),  # stays a float: a column of 100.0 and 10.0 is not an int column
        (0.5, "0.5"),
        (True, "true"),
        (False, "false"),
        (None, "null"),
        ("rbf", "rbf"),  # plain in the MLflow UI
        ("teacher_student", "teacher_student"),
        ([[-1, -1]], "[[-1, -1]]"),
        ([[0, 1], [-1, -1]], "[[0, 1], [-1, -1]]"),
        (
            {"arch": "gat", "heads": 8, "residual": False},
            '{"arch": "gat", "heads": 8, "residual": false}',
        ),  # fmt: skip
    ],
)
def test_round_trip(value: Any, text: str) -> None:
    assert encode_param(value) == text
    back = decode_param(encode_param(value))
    assert back == value and type(back) is type(value)


@pytest.mark.parametrize("value", ["16", "1e-4", "true", "null", "None", "True", "[1, 2]", '"q"'])
def test_strings_that_look_like_values_are_quoted_and_come_back_as_strings(value: str) -> None:
    text = encode_param(value)
    assert text != value  # plain text would read back as a number, bool, None or list
    assert decode_param(text) == value and isinstance(decode_param(text), str)


def test_nested_values_keep_their_types() -> None:
    value = {"layer_map": [[-1, -1]], "lambda": 100.0, "until": None, "flags": [True, 2, 2.5]}
    back = decode_param(encode_param(value))
    assert back == value
    assert type(back["lambda"]) is float and type(back["flags"][1]) is int
    assert back["flags"][0] is True and back["until"] is None


def test_tuples_become_lists() -> None:
    assert decode_param(encode_param((1, 2))) == [1, 2]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("True", True),
        ("False", False),
        ("None", None),
        ("16", 16),
        ("100.0", 100.0),
        ("0.0001", 1e-4),
        ("1e-05", 1e-5),
        ("[[-1, -1]]", [[-1, -1]]),
        ("[True, None]", [True, None]),
        ("{'a': 1, 'b': 'x'}", {"a": 1, "b": "x"}),
        ("(1, 2)", [1, 2]),
        ("rbf", "rbf"),
        ("", ""),
        ("[unbalanced", "[unbalanced"),
    ],
)
def test_legacy_str_logged_params(text: str, value: Any) -> None:
    """Runs logged with ``str(value)`` before encode_param read back as the values."""
    back = decode_param(text)
    assert back == value and type(back) is type(value)


def test_legacy_non_finite_floats() -> None:
    assert math.isnan(decode_param("nan")) and decode_param("inf") == math.inf
    assert math.isnan(decode_param(encode_param(math.nan)))
    assert decode_param(encode_param(-math.inf)) == -math.inf


def test_values_json_cannot_hold_are_refused() -> None:
    with pytest.raises(TypeError):
        encode_param({1, 2})


def test_params_survive_a_real_store(tmp_path: Path) -> None:
    values = {"lsp.lambda": 100.0, "student.width": 16, "lsp.kernel": "rbf", "x.none": None,
              "layer_map": [[-1, -1]], "residual": True, "label": "16"}  # fmt: skip
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp).info.run_id
    client.log_batch(run, params=[Param(k, encode_param(v)) for k, v in values.items()])
    stored = client.get_run(run).data.params
    assert stored["lsp.kernel"] == "rbf" and stored["residual"] == "true"
    assert {k: decode_param(v) for k, v in stored.items()} == values


def test_download_artifact_into_place(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp).info.run_id
    src = tmp_path / "teacher.pt"
    src.write_bytes(b"weights")
    client.log_artifact(run, str(src), artifact_path="teacher")
    cache = tmp_path / "cache" / "deep"
    dest = cache / "abc.pt"
    dest_old = cache / "old.pt"
    assert download_artifact(uri, run, "teacher/teacher.pt", dest) == dest
    assert dest.read_bytes() == b"weights"
    assert [p.name for p in cache.iterdir()] == ["abc.pt"]  # no temporary siblings left
    dest_old.write_bytes(b"stale")
    download_artifact(uri, run, "teacher/teacher.pt", dest_old)  # replaces a stale file
    assert dest_old.read_bytes() == b"weights"
    with pytest.raises(Exception):  # noqa: B017 - MLflow's own error; what matters is below
        download_artifact(uri, run, "teacher/missing.pt", cache / "missing.pt")
    assert sorted(p.name for p in cache.iterdir()) == ["abc.pt", "old.pt"]
