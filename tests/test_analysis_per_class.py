"""analysis.per_class: the per-class change against the student alone, paired by seed, classes
ordered head to tail; read back from a real MLflow store and drawn into the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from analysis.per_class import (
    balanced_training,
    class_change,
    format_change,
    head_tail_summary,
    plot_class_change,
)
from analysis.report import write_report
from analysis.runs import load_class_tables, load_runs
from tests.mlflow_fixtures import fill_study

CLASSES = ["rare", "common", "middle"]
TRAIN = [5, 50, 20]  # head to tail: common (1), middle (2), rare (0)


def _table(recalls: list[float]) -> dict[str, list[Any]]:
    rows = []
    for split in ("val", "test"):
        for c, name in enumerate(CLASSES):
            rows.append([split, c, name, TRAIN[c], 10, 0.5, recalls[c], 0.5])
    cols = ["split", "class", "class_name", "train_count", "support", "precision", "recall", "f1"]
    return {col: [r[i] for r in rows] for i, col in enumerate(cols)}


# Test recall per class (rare, common, middle) per seed.
NONE = {0: [0.50, 0.80, 0.70], 1: [0.60, 0.80, 0.70], 2: [0.40, 0.90, 0.60]}
KD = {0: [0.40, 0.90, 0.70], 1: [0.40, 0.90, 0.80], 2: [0.40, 0.90, 0.60]}


def _trials() -> list[dict[str, Any]]:
    trials = []
    for method, recalls in (("none", NONE), ("kd", KD)):
        for seed, r in recalls.items():
            trials.append({
                "method": method, "dataset": "cora", "seed": seed,
                "metrics": {"test_score": 0.8, "val_score": 0.8, "latency_ms_p50": 1.0,
                            "num_params": 100.0, "test_auroc": 0.9},
                "class_table": _table(r),
            })  # fmt: skip
    # LSP ran seed 5 only: no seed in common with the student alone.
    trials.append({**trials[-1], "method": "lsp", "seed": 5, "class_table": _table([1, 1, 1])})
    return trials


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('pc')}/mlflow.db"
    fill_study(uri, "pc", _trials())
    clouds = [
        {"method": "none", "dataset": "modelnet40", "seed": seed,
         "metrics": {"test_score": acc, "val_score": acc, "test_mean_class_accuracy": macc,
                     "test_auroc": 0.95, "latency_ms_p50": 1.0, "num_params": 100.0}}
        for seed, acc, macc in ((0, 0.875, 0.75), (1, 0.9375, 0.8125))
    ]  # fmt: skip
    fill_study(uri, "clouds", clouds)
    return uri


def test_change_is_paired_by_seed_and_ordered_head_to_tail(store: str) -> None:
    runs = load_runs("pc", tracking_uri=store)
    tables = load_class_tables(list(runs["run_id"]), tracking_uri=store)
    assert len(tables) == 7 * 6  # seven runs, two splits of three classes
    change = class_change(runs, tables)
    kd = change.loc[change["method"] == "kd"].set_index("class_name")
    assert list(kd.sort_values("rank").index) == ["common", "middle", "rare"]
    rare = [KD[s][0] * 100 - NONE[s][0] * 100 for s in range(3)]  # -10, -20, 0
    assert kd.loc["rare", "diff"] == pytest.approx(sum(rare) / 3)
    assert kd.loc["rare", "diff_std"] == pytest.approx(pd.Series(rare).std())
    assert kd.loc["rare", "n"] == 3 and bool(kd.loc["rare", "paired"])
    # 95% t-interval, 2 degrees of freedom: t = 4.302653
    half = 4.302653 * pd.Series(rare).std() / 3**0.5
    assert kd.loc["rare", "ci95_high"] - kd.loc["rare", "diff"] == pytest.approx(half, rel=1e-5)
    assert kd.loc["common", "diff"] == pytest.approx((10 + 10 + 0) / 3)
    assert kd.loc["rare", "baseline"] == pytest.approx(50.0)

    lsp = change.loc[change["method"] == "lsp"].set_index("class_name")
    assert not lsp["paired"].any() and (lsp["n"] == 0).all()
    assert lsp.loc["rare", "diff"] == pytest.approx(100 - 50.0)  # difference of means
    assert lsp["ci95_low"].isna().all()

    summary = head_tail_summary(change).set_index("method")
    assert summary.loc["kd", "head"] == pytest.approx(kd.loc["common", "diff"])
    assert summary.loc["kd", "tail"] == pytest.approx(kd.loc["rare", "diff"])
    assert summary.loc["kd", "worst_class"] == "rare"
    assert balanced_training(change) is None
    assert balanced_training(change.assign(train_count=20)) == 20  # Cora: no head, no tail
    shown = format_change(change)
    assert list(shown["class"]) == ["common", "middle", "rare"]
    assert shown.loc[2, "KD (pp)"].startswith("-10.0 [") and shown.loc[2, "KD (pp)"].endswith(
        "(n=3)"
    )


def test_figure_and_report_section(store: str, tmp_path: Path) -> None:
    runs = load_runs("pc", tracking_uri=store)
    change = class_change(runs, load_class_tables(list(runs["run_id"]), tracking_uri=store))
    fig = Figure()
    ax = fig.add_subplot()
    plot_class_change(change, ax)
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == [
        "common",
        "middle",
        "rare",
    ]
    assert len(ax.get_legend().get_texts()) == 2

    out = write_report("pc", tmp_path / "rep", tracking_uri=store)
    readme = (out / "README.md").read_text()
    assert "## Per class: does distillation hurt the tail?" in readme
    assert "figures/per_class_cora.png" in readme
    table = pd.read_csv(out / "tables" / "per_class_cora.csv")
    assert set(table["method"]) == {"kd", "lsp"}
    image = imread(out / "figures" / "per_class_cora.png")
    assert image.shape[0] > 400 and image.shape[1] > 600
    # AUROC beside the scores in the methods table.
    assert "test AUROC (%)" in readme and "90.00" in readme
    assert "**Caution:**" not in readme  # one student throughout: the changes are distillation's


def test_report_cautions_when_the_students_differ(tmp_path: Path) -> None:
    """KD's best student is a GAT, the student alone an MLP: the per-class change mixes the two."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    trials = [
        {**t, "student_arch": "mlp" if t["method"] == "none" else "gat",
         "params": {"student.width": 4 if t["method"] == "none" else 16}}
        for t in _trials() if t["method"] in ("none", "kd")
    ]  # fmt: skip
    fill_study(uri, "pcdiff", trials)
    readme = (write_report("pcdiff", tmp_path / "rep", tracking_uri=uri) / "README.md").read_text()
    section = readme.split("## Per class", 1)[1]
    assert "**Caution:** KD: the best configuration's student is not the student-alone" in section


def test_point_cloud_tables_show_mean_class_accuracy_beside_accuracy(store: str) -> None:
    from analysis.ablation import format_table, method_table

    shown = format_table(method_table(load_runs("clouds", tracking_uri=store), paper=False))
    (row,) = shown.loc[shown["method"] == "student alone"].to_dict("records")
    assert row["test score (%)"] == "90.62 ± 4.42 (n=2)"
    assert row["test mAcc (%)"] == "78.12 ± 4.42"
    assert row["test AUROC (%)"] == "95.00 ± 0.00"
