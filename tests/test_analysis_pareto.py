"""analysis.pareto: exactly the non-dominated configurations, ties and single seeds included."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.ablation import summarize
from analysis.pareto import pareto_front, pareto_mask
from analysis.runs import load_runs
from study.errors import UserInputError
from tests.mlflow_fixtures import example_trials, fill_study


def _brute_force(values: np.ndarray, senses: list[str]) -> np.ndarray:
    """Non-dominated rows by the definition, one pair at a time."""

    def better_or_equal(a: float, b: float, sense: str) -> bool:
        return a >= b if sense == "max" else a <= b

    def strictly_better(a: float, b: float, sense: str) -> bool:
        return a > b if sense == "max" else a < b

    n = len(values)
    keep = []
    for i in range(n):
        dominated = False
        for j in range(n):
            if i == j:
                continue
            pairs = list(zip(values[j], values[i], senses, strict=True))
            if all(better_or_equal(a, b, s) for a, b, s in pairs) and any(
                strictly_better(a, b, s) for a, b, s in pairs
            ):
                dominated = True
        keep.append(not dominated)
    return np.array(keep)


@pytest.mark.parametrize("senses", [["max", "min"], ["min", "min"], ["max", "min", "min"]])
@pytest.mark.parametrize("seed", range(5))
def test_mask_matches_the_definition(senses, seed):
    rng = np.random.default_rng(seed)
    # Few distinct values: plenty of exact ties and duplicate rows.
    values = rng.integers(0, 4, size=(25, len(senses))).astype(float)
    mask = pareto_mask(values, senses)
    np.testing.assert_array_equal(mask, _brute_force(values, senses))
    assert mask.any()


def test_identical_configurations_are_both_on_the_front():
    s = pd.DataFrame(
        {
            "config_id": ["a", "b", "c", "d"],
            "val_score_mean": [0.9, 0.9, 0.8, 0.9],
            "latency_ms_p50_mean": [2.0, 2.0, 1.0, 3.0],
        }
    )
    front = pareto_front(s)
    assert front["config_id"].tolist() == ["c", "a", "b"]  # d: same score, slower
    # Two identical rows that a third dominates are both off.
    s2 = pd.concat([s, pd.DataFrame({"config_id": ["e"], "val_score_mean": [0.95],
                                     "latency_ms_p50_mean": [1.5]})])  # fmt: skip
    assert pareto_front(s2)["config_id"].tolist() == ["c", "e"]


def test_missing_objective_is_left_out_and_groups_are_separate():
    s = pd.DataFrame(
        {
            "dataset": ["x", "x", "y"],
            "config_id": ["a", "b", "c"],
            "val_score_mean": [0.9, math.nan, 0.5],
            "latency_ms_p50_mean": [1.0, 0.1, 5.0],
        }
    )
    assert pareto_front(s)["config_id"].tolist() == ["a"]
    assert pareto_front(s, by="dataset")["config_id"].tolist() == ["a", "c"]
    assert pareto_front(s.iloc[:0]).empty


def test_bad_objectives():
    s = pd.DataFrame({"config_id": ["a"], "val_score_mean": [1.0], "test_score_mean": [1.0]})
    with pytest.raises(UserInputError, match="latency_ms_p50_mean"):
        pareto_front(s)
    with pytest.raises(UserInputError, match="'up'.*max, min"):
        pareto_front(s, {"test_score_mean": "up"})


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    fill_study(uri, "alpha", example_trials("ppi"))
    return summarize(load_runs("alpha", tracking_uri=uri), ["config_id"])


def test_front_of_a_real_study(summary):
    front = pareto_front(summary)
    # On validation (the default): D (.75, 2.0) < A (.8125, 3.0) < B (.875, 4.0); C (val .5)
    # and E (val .8) are dominated by A, F by B; G is unfinished. On test, C (.875 at 3.0 ms)
    # would tie A and stand on the front: the test score chooses nothing.
    assert front["config_id"].tolist() == ["cfgD", "cfgA", "cfgB"]
    assert front["latency_ms_p50_mean"].tolist() == [2.0, 3.0, 4.0]
    on_test = pareto_front(summary, {"test_score_mean": "max", "latency_ms_p50_mean": "min"})
    assert on_test["config_id"].tolist() == ["cfgD", "cfgA", "cfgC", "cfgB"]
    row = front.set_index("config_id")
    assert row.loc["cfgA", "test_score_std"] == 0.0625  # the seeds' spread travels along
    assert row.loc["cfgB", "n"] == 1 and math.isnan(row.loc["cfgB", "test_score_std"])
    assert row.loc["cfgA", "method"] == "lsp" and row.loc["cfgA", "lsp.kernel"] == "rbf"
    assert list(front.columns) == list(summary.columns)


def test_front_with_parameter_count(summary):
    front = pareto_front(
        summary,
        {"test_score_mean": "max", "latency_ms_p50_mean": "min", "num_params_mean": "min"},
    )
    # F (.9375, 4.5 ms, 800 params) is no longer dominated by B (1000 params).
    assert set(front["config_id"]) == {"cfgA", "cfgB", "cfgC", "cfgD", "cfgF"}
