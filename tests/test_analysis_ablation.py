"""analysis.ablation: summaries over seeds, tables with the paper's rows, renderers."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest

from analysis import ablation
from analysis.paper import PAPER_UNCHECKED as PAPER_SOURCE  # fixtures log no test_n
from analysis.runs import load_runs, load_teachers
from study.errors import UserInputError
from tests.mlflow_fixtures import example_trials, fill_study


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    fill_study(uri, "alpha", example_trials("ppi"))
    fill_study(uri, "gamma", example_trials("modelnet40"))
    fill_study(uri, "delta", example_trials("cora"))
    return uri


@pytest.fixture(scope="module")
def alpha(store):
    return load_runs("alpha", tracking_uri=store)


def _expected_by_config(metric: str) -> dict[str, tuple[int, float, float]]:
    """(n, mean, sample std) per config from the raw trial dicts: an independent computation."""
    values: dict[str, list[float]] = {}
    for t in example_trials():
        if t.get("status", "FINISHED") == "FINISHED" and "test_score" in t["metrics"]:
            values.setdefault(t["config_id"], []).append(t["metrics"][metric])
    return {
        c: (len(v), statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else math.nan)
        for c, v in values.items()
    }


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


@pytest.mark.parametrize("metric", ["test_score", "val_score", "latency_ms_p50"])
def test_summarize_mean_std_n_over_seeds(alpha, metric):
    s = ablation.summarize(alpha, ["config_id"]).set_index("config_id")
    expected = _expected_by_config(metric)
    assert set(s.index) == set(expected) == {"cfgA", "cfgB", "cfgC", "cfgD", "cfgE", "cfgF"}
    for cfg, (n, mean, std) in expected.items():
        assert s.loc[cfg, "n"] == n
        assert _same(s.loc[cfg, f"{metric}_mean"], mean)
        assert _same(s.loc[cfg, f"{metric}_std"], std)


def test_summarize_by_hand(alpha):
    s = ablation.summarize(alpha, ["config_id"]).set_index("config_id")
    # A: test .8125/.875/.9375 -> mean .875, std sqrt((.0625^2 * 2) / 2) = .0625.
    assert s.loc["cfgA", "test_score_mean"] == 0.875
    assert s.loc["cfgA", "test_score_std"] == 0.0625
    assert s.loc["cfgA", "latency_ms_p50_std"] == 0.5
    assert s.loc["cfgC", "test_score_std"] == 0.0  # two equal seeds: 0, not NaN
    assert s.loc["cfgB", "n"] == 1 and math.isnan(s.loc["cfgB", "test_score_std"])
    # Constant-per-configuration columns come along; seeds and run ids do not.
    assert s.loc["cfgA", "method"] == "lsp" and s.loc["cfgA", "lsp.kernel"] == "rbf"
    assert s.loc["cfgA", "lsp.lambda"] == 100.0
    assert "seed" not in s.columns and "run_id" not in s.columns


def test_summarize_keeps_unfinished_only_when_asked(alpha):
    s = ablation.summarize(alpha, ["config_id"], finished_only=False).set_index("config_id")
    assert s.loc["cfgG", "n"] == 3
    assert s.loc["cfgG", "test_score_mean"] == 1.0  # NaN of the RUNNING run skipped


def test_summarize_groups_missing_values_together(alpha):
    s = ablation.summarize(alpha, ["lsp.kernel"])
    assert s["n"].sum() == 9  # every finished trial is in some group, NA included
    assert s.loc[s["lsp.kernel"].isna(), "n"].item() == 5


def test_summarize_unknown_column(alpha):
    with pytest.raises(UserInputError, match="unknown column 'nope'"):
        ablation.summarize(alpha, ["nope"])


def test_best_config_is_chosen_on_validation_not_test():
    runs = pd.DataFrame(
        {
            "run_id": ["1", "2", "3", "4", "5"],
            "status": "FINISHED",
            "dataset": "d",
            "method": "m",
            "seed": [0, 1, 0, 0, 0],
            "config_id": ["x", "x", "y", "z", "w"],
            "val_score": [0.9, 0.9, 0.8, 0.9, 0.9],
            "test_score": [0.7, 0.7, 0.99, 0.75, 0.75],
        }
    )
    best = ablation.best_configs(runs, ["dataset", "method"])
    # x, z, w tie on validation; z and w also on test: the smaller config_id wins.
    assert best["config_id"].tolist() == ["w"] and best["n_configs"].tolist() == [4]
    # Runs without a config_id are configurations of their own, not one pooled group.
    runs.loc[[0, 1], "config_id"] = None
    per_config = ablation.config_summary(runs)
    assert sorted(per_config["config_id"]) == ["1", "2", "w", "y", "z"]
    assert per_config["n"].tolist() == [1, 1, 1, 1, 1]


def test_method_table_rows_and_paper(store, alpha):
    teachers = load_teachers("alpha", tracking_uri=store)
    t = ablation.method_table(alpha, teachers)
    keys = list(zip(t["method"], t["source"], strict=True))
    ours, paper = "this study", PAPER_SOURCE
    assert keys == [
        ("teacher", ours), ("teacher", paper), ("none", ours), ("none", paper),
        ("kd", ours), ("kd", paper), ("fitnet", ours), ("fitnet", paper),
        ("at", ours), ("at", paper), ("lsp", ours), ("lsp", paper),
    ]  # fmt: skip
    row = t.set_index(["method", "source"])
    # LSP: B (val .875) beats A (val .8125); scores in percent.
    assert row.loc[("lsp", ours), "config_id"] == "cfgB"
    assert row.loc[("lsp", ours), "n_configs"] == 2
    assert row.loc[("lsp", ours), "test_score_mean"] == 93.75
    assert math.isnan(row.loc[("lsp", ours), "test_score_std"])
    assert row.loc[("kd", ours), "test_score_std"] == 0.0 and row.loc[("kd", ours), "n"] == 2
    assert row.loc[("teacher", ours), "test_score_mean"] == pytest.approx(97.6)
    assert row.loc[("lsp", paper), "test_score_mean"] == 96.1
    assert row.loc[("teacher", paper), "num_params_mean"] == 3.64e6
    assert math.isnan(row.loc[("kd", paper), "test_score_mean"])
    assert "inapplicable" in row.loc[("kd", paper), "note"]

    shown = ablation.format_table(t).set_index(["method", "source"])
    assert shown.loc[("LSP", ours), "test score (%)"] == "93.75 (n=1)"
    assert shown.loc[("KD", ours), "test score (%)"] == "87.50 ± 0.00 (n=2)"
    assert shown.loc[("LSP", paper), "test score (%)"] == "96.10"
    assert shown.loc[("KD", paper), "test score (%)"] == ""
    assert shown.loc[("student alone", paper), "params"] == "0.16M"
    assert "lsp.kernel=poly" in shown.loc[("LSP", ours), "best config"]


def test_paper_rows_only_for_matching_datasets(store):
    cora = ablation.method_table(load_runs("delta", tracking_uri=store))
    assert set(cora["source"]) == {"this study"}
    mn = load_runs("gamma", tracking_uri=store)
    methods = ablation.method_table(mn)
    lsp_paper = methods.loc[(methods["method"] == "lsp") & (methods["source"] == PAPER_SOURCE)]
    assert lsp_paper["test_score_mean"].tolist() == [91.9]
    assert lsp_paper["latency_ms_p50_mean"].tolist() == [3.31]
    k = ablation.kernel_table(mn)
    assert list(zip(k["lsp.kernel"], k["source"], strict=True)) == [
        ("l2", PAPER_SOURCE), ("linear", PAPER_SOURCE), ("poly", "this study"),
        ("poly", PAPER_SOURCE), ("rbf", "this study"), ("rbf", PAPER_SOURCE),
    ]  # fmt: skip
    assert k["test_score_mean"].tolist()[:2] == [91.4, 91.5]


def test_kernel_table(alpha):
    k = ablation.kernel_table(alpha, paper=False).set_index("lsp.kernel")
    assert list(k.index) == ["poly", "rbf"]  # rbf lambda=1 never finished
    assert k.loc["rbf", "config_id"] == "cfgA" and k.loc["rbf", "n_configs"] == 1
    assert k.loc["rbf", "test_score_mean"] == 87.5 and k.loc["rbf", "test_score_std"] == 6.25
    assert (
        ablation.format_table(k.reset_index()).set_index("lsp.kernel").loc["rbf", "test score (%)"]
        == "87.50 ± 6.25 (n=3)"
    )


def test_student_table(alpha):
    s = ablation.student_table(alpha)
    assert {"student.width", "student.dropout", "student.residual"} <= set(s.columns)
    none = s.loc[s["method"] == "none"]
    assert none["student.width"].tolist() == [8] and none["test_score_mean"].tolist() == [75.0]
    lsp = s.loc[s["method"] == "lsp"]
    assert sorted(lsp["config_id"]) == ["cfgA", "cfgB"]  # residual True vs False


def test_factor_table_best_and_all(alpha):
    f = ablation.factor_table(alpha, ["lsp.kernel", "lsp.lambda"])
    assert list(zip(f["lsp.kernel"], f["lsp.lambda"], f["config_id"], strict=True)) == [
        ("poly", 10.0, "cfgB"), ("rbf", 100.0, "cfgA"),
    ]  # fmt: skip
    assert set(f["method"]) == {"lsp"}
    pooled = ablation.factor_table(alpha, "student.width", select="all").set_index("method")
    scores = [0.8125, 0.875, 0.9375, 0.9375]  # A's three seeds and B
    assert pooled.loc["lsp", "n"] == 4 and pooled.loc["lsp", "n_configs"] == 2
    assert pooled.loc["lsp", "test_score_mean"] == pytest.approx(100 * statistics.fmean(scores))
    assert pooled.loc["lsp", "test_score_std"] == pytest.approx(100 * statistics.stdev(scores))
    t = ablation.factor_table(alpha, "kd.temperature")
    assert t["kd.temperature"].tolist() == [4.0] and t["n"].tolist() == [2]


def test_factor_table_errors(alpha):
    with pytest.raises(UserInputError, match="unknown factor 'lsp.lamda'.*lsp.lambda"):
        ablation.factor_table(alpha, "lsp.lamda")
    with pytest.raises(UserInputError, match="unknown selection 'top'"):
        ablation.factor_table(alpha, "lsp.lambda", select="top")


def test_format_mean_std():
    assert ablation.format_mean_std(95.7, math.nan, 1) == "95.70 (n=1)"
    assert ablation.format_mean_std(1.0, 0.5, 3) == "1.00 ± 0.50 (n=3)"
    assert ablation.format_mean_std(96.1, math.nan, pd.NA) == "96.10"
    assert ablation.format_mean_std(math.nan, math.nan, 2) == ""


def test_score_scale():
    assert ablation.score_scale([0.5, 1.0, math.nan]) == 100.0
    assert ablation.score_scale([95.0, 0.5]) == 1.0


def test_renderers(alpha, tmp_path):
    t = ablation.kernel_table(alpha, paper=False)
    md = ablation.to_markdown(t).splitlines()
    assert len(md) == 2 + len(t)
    header = md[0].strip("| ").split(" | ")
    assert header[:4] == ["source", "dataset", "method", "lsp.kernel"]
    assert md[1].count("---") == len(header)
    assert "87.50 ± 6.25 (n=3)" in md[3]
    assert ablation.to_markdown(pd.DataFrame({"a": ["x|y"]})).splitlines()[2] == "| x\\|y |"
    tex = ablation.to_latex(t)
    assert tex.startswith("\\begin{tabular}{" + "l" * len(header) + "}")
    assert "test score (\\%)" in tex and "87.50 $\\pm$ 6.25 (n=3)" in tex and "lsp.kernel" in tex
    assert "config\\_id" in tex and tex.rstrip().endswith("\\end{tabular}")
    back = pd.read_csv(ablation.to_csv(t, tmp_path / "k.csv"))
    assert back["test_score_mean"].tolist() == t["test_score_mean"].tolist()


def test_student_table_orders_a_hyperparameter_missing_for_some_architectures() -> None:
    """``student.heads`` exists for GAT students only: a nullable integer column with NA. Rows
    come in shuffled; they leave sorted by architecture, then heads numerically (4 before 10)."""
    from analysis.ablation import student_table

    rows = []
    for i, (arch, heads, score) in enumerate(
        [("mlp", None, 0.70), ("gat", 10, 0.80), ("gcn", None, 0.78), ("gat", 4, 0.79)]
    ):
        rows.append(
            {
                "study": "s",
                "run_id": f"r{i}",
                "run_name": f"r{i}",
                "status": "FINISHED",
                "method": "kd",
                "dataset": "cora",
                "seed": 0,
                "config_id": f"c{i}",
                "teacher_run_id": "t",
                "device": "cpu",
                "student_arch": arch,
                "student.arch": arch,
                "student.heads": heads,
                "student.width": 4,
                "val_score": score,
                "test_score": score,
                "latency_ms_p50": 1.0 + i,
                "latency_ms_p90": 2.0 + i,
                "num_params": 100.0 * (i + 1),
                "train_seconds": 1.0,
            }
        )
    df = pd.DataFrame(rows)
    df["student.heads"] = df["student.heads"].astype("Int64")
    table = student_table(df)
    assert list(table["student.arch"]) == ["gat", "gat", "gcn", "mlp"]
    assert table["student.heads"].tolist()[:2] == [4, 10]
    assert table["student.heads"].isna().tolist() == [False, False, True, True]


def test_failure_table_counts_failed_and_killed_trials_per_method(alpha):
    table = ablation.failure_table(alpha)
    # Config G: one FAILED and one KILLED seed (their reasons unrecorded), one RUNNING (not failed).
    counts = table[["dataset", "method", "failed", "trials"]].values.tolist()
    assert counts == [["ppi", "lsp", 2, 7]]
    assert table.loc[0, "reasons"] == "no reason recorded (x2)"
    assert ablation.failure_table(alpha.loc[alpha["status"] == "FINISHED"]).empty
    # The failed trials logged the best scores of the study, and no table or summary shows them.
    assert "cfgG" not in set(ablation.config_summary(alpha)["config_id"])
    assert "cfgG" not in set(ablation.method_table(alpha)["config_id"].dropna())


# --------------------------------------------------------------------------------------------
# Uncertainty: paired differences against the student alone, small test sets, paper labels
# --------------------------------------------------------------------------------------------
def _paired_runs() -> pd.DataFrame:
    """ModelNet40, 29 test shapes: none and LSP on seeds 0-3 (LSP +2, +4, +3, +5 points better),
    KD on seed 0 only, FitNet on seeds 7-8 only (no seed in common)."""
    rows = []
    none = [0.70, 0.71, 0.69, 0.72]
    lsp = [0.72, 0.75, 0.72, 0.77]
    for seed, (b, m) in enumerate(zip(none, lsp, strict=True)):
        rows.append(("none", "n0", seed, b))
        rows.append(("lsp", "l0", seed, m))
    rows += [("kd", "k0", 0, 0.70), ("fitnet", "f0", 7, 0.7), ("fitnet", "f0", 8, 0.7)]
    return pd.DataFrame(
        {
            "run_id": [f"r{i}" for i in range(len(rows))],
            "status": "FINISHED",
            "dataset": "modelnet40",
            "method": [r[0] for r in rows],
            "config_id": [r[1] for r in rows],
            "seed": [r[2] for r in rows],
            "test_score": [r[3] for r in rows],
            "val_score": [r[3] for r in rows],
            "student_arch": "dgcnn",
            "test_n": 29.0,
        }
    )


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for dof in (1, 2, 3, 10, 30, 31, 50, 200):
        assert ablation.t_quantile_975(dof) == pytest.approx(stats.t.ppf(0.975, dof), rel=1e-5)


def test_paired_vs_none_ci_by_hand():
    t = ablation.paired_vs_none(_paired_runs()).set_index("method")
    assert list(t.index) == ["kd", "fitnet", "lsp"]  # the paper's order, none left out
    diffs = np.array([2.0, 4.0, 3.0, 5.0])  # percentage points
    half = 3.182446305284263 * diffs.std(ddof=1) / 2.0  # t_{0.975}(3) * s / sqrt(4)
    lsp = t.loc["lsp"]
    assert lsp["n"] == 4 and lsp["baseline_config_id"] == "n0"
    assert lsp["diff"] == pytest.approx(3.5)
    assert lsp["ci95_low"] == pytest.approx(3.5 - half) and lsp["ci95_high"] == pytest.approx(
        3.5 + half
    )
    assert lsp["verdict"] == "better than student alone"
    assert t.loc["kd", "n"] == 1 and math.isnan(t.loc["kd", "ci95_low"])
    assert t.loc["kd", "verdict"].startswith("n<2")
    assert t.loc["fitnet", "n"] == 0 and "no seed in common" in t.loc["fitnet", "note"]
    shown = ablation.format_paired(ablation.paired_vs_none(_paired_runs()))
    cell = shown.set_index("method").loc["LSP"].iloc[1]
    assert cell == f"+3.50 [{3.5 - half:+.2f}, {3.5 + half:+.2f}] (n=4)"


def test_wilson_interval_and_small_test_set():
    # Wilson by hand for p = 0.5, n = 29: centre 0.5, half z*sqrt(p(1-p)/n + z^2/4n^2)/(1+z^2/n).
    z = 1.959963984540054
    half = z * math.sqrt(0.25 / 29 + z * z / (4 * 29 * 29)) / (1 + z * z / 29)
    low, high = ablation.wilson_interval(0.5, 29)
    assert (low, high) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))
    assert all(math.isnan(x) for x in ablation.wilson_interval(0.5, float("nan")))
    t = ablation.test_set_table(_paired_runs()).set_index("method")
    assert t.loc["lsp", "test_n"] == 29 and bool(t.loc["lsp", "small"])
    assert 14 < t.loc["lsp", "ci95_halfwidth"] < 17  # about ±16 points on 29 shapes
    no_n = ablation.test_set_table(_paired_runs().drop(columns="test_n"))
    assert no_n["test_n"].isna().all() and no_n["small"].isna().all()


def test_paper_rows_labelled_by_the_test_set():
    from analysis.paper import PAPER_OTHER_DATA
    from analysis.paper import PAPER_SOURCE as SAME

    runs = _paired_runs()
    paper = ablation.method_table(runs).query("source != 'this study'")
    assert set(paper["source"]) == {PAPER_OTHER_DATA}
    assert paper["note"].str.contains("2468 test examples; this study: 29").all()
    paper = ablation.method_table(runs.assign(test_n=2468.0)).query("source != 'this study'")
    assert set(paper["source"]) == {SAME}


def test_to_percent_scales_every_score_column():
    t = pd.DataFrame({"test_score_mean": [0.9], "test_auroc_mean": [0.95], "n": [1]})
    out = ablation.to_percent(t, 100.0)
    assert out["test_score_mean"].tolist() == [90.0] and out["test_auroc_mean"].tolist() == [95.0]
