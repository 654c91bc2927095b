"""analysis.report and analysis.plots: the report folder, its safety rules, the figures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread
from mlflow.tracking import MlflowClient

import analysis.report as report_mod
from analysis.ablation import factor_table, summarize
from analysis.pareto import pareto_front
from analysis.plots import (
    FRONT_MARKS_GID,
    plot_hyperparameter,
    plot_losses_by_run,
    plot_pareto,
    plot_training_curves,
)
from analysis.report import write_report
from analysis.runs import load_runs
from study.errors import UserInputError
from study.tracking import TAG_ERROR
from tests.mlflow_fixtures import example_trials, fill_study

REPO = Path(__file__).resolve().parents[1]
DIVERGED = "training diverged at epoch 3: train_loss 1.7e+13 exceeds the bound 1.36e+06"


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    trials = example_trials("ppi")
    ids = fill_study(uri, "alpha", trials)
    # The FAILED trial diverged (as study.trial records it); the KILLED one says nothing.
    runs = zip(trials, ids["trial_run_ids"], strict=True)
    (failed,) = [i for t, i in runs if t.get("status") == "FAILED"]
    MlflowClient(uri).set_tag(failed, TAG_ERROR, DIVERGED)
    fill_study(
        uri,
        "stuck",
        [{"method": "lsp", "status": "RUNNING"},
         {"method": "lsp", "seed": 1, "status": "FAILED", "metrics": {"test_score": 0.9}}],
    )  # fmt: skip
    return uri


@pytest.fixture(scope="module")
def built(uri, tmp_path_factory):
    """Write the report in a fresh interpreter, which also shows what ``analysis`` imports."""
    out = tmp_path_factory.mktemp("rep") / "alpha"
    code = (
        "import sys\n"
        "import analysis, analysis.runs, analysis.ablation, analysis.pareto, analysis.plots\n"
        "from analysis.report import write_report\n"
        f"write_report('alpha', {str(out)!r}, tracking_uri={uri!r})\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray'))\n"
        "print('LOADED', bad)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    return out, res.stdout


@pytest.fixture(scope="module")
def report(built):
    return built[0]


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_report_files(report):
    figures = ["pareto_ppi", "lsp_lambda_ppi", "kd_temperature_ppi", "training_curves_ppi"]
    tables = ["runs", "configurations", "methods", "kernels", "students", "lsp_lambda",
              "kd_temperature", "failed", "vs_student_alone", "test_set"]  # fmt: skip
    expected = (
        ["README.md", "pareto.csv"]
        + [f"figures/{f}.{ext}" for f in figures for ext in ("png", "svg")]
        + [f"tables/{t}.csv" for t in tables]
        + [f"tables/{t}.tex" for t in ("methods", "kernels", "students", "vs_student_alone")]
    )
    assert _files(report) == sorted(expected)
    assert [p.name for p in report.parent.iterdir()] == ["alpha"]  # no temp folder left


def test_pareto_csv_lists_exactly_the_front(report):
    front = pd.read_csv(report / "pareto.csv")
    # Chosen on validation: C (test .875 = A's, val .5) is off; on test it would stand.
    assert front["config_id"].tolist() == ["cfgD", "cfgA", "cfgB"]
    assert list(front.columns[:3]) == ["dataset", "config_id", "method"]
    assert front.set_index("config_id").loc["cfgA", "test_score_std"] == 0.0625


def test_readme_tables_and_links(report):
    text = (report / "README.md").read_text()
    assert text.startswith("# Study report: alpha")
    assert "87.50 ± 6.25 (n=3)" in text  # config A on the front, in percent
    assert "93.75 (n=1)" in text  # LSP's best configuration, single seed
    assert "paper (Yang et al. 2020)" in text and "96.10" in text
    assert "9 FINISHED" in text and "1 FAILED" in text
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert "figures/pareto_ppi.png" in links and "pareto.csv" in links
    for link in links:
        assert (report / link).is_file(), link


def test_failed_trials_are_counted_with_their_reasons_and_left_out(report):
    text = (report / "README.md").read_text()
    assert "- Failed trials: 2, left out of every table and front" in text
    assert "## Failed trials" in text and DIVERGED in text and "no reason recorded" in text
    failed = pd.read_csv(report / "tables" / "failed.csv")
    assert failed[["dataset", "method", "failed", "trials"]].values.tolist() == [
        ["ppi", "lsp", 2, 7]
    ]
    assert failed.loc[0, "reasons"] == f"{DIVERGED}; no reason recorded"
    # Config G (only failed, killed or running seeds) is in no table, whatever they logged.
    for table in ("configurations", "methods", "kernels", "lsp_lambda"):
        assert "cfgG" not in pd.read_csv(report / "tables" / f"{table}.csv").to_string(), table
    assert "cfgG" not in (report / "pareto.csv").read_text()
    runs = pd.read_csv(report / "tables" / "runs.csv")
    assert runs.loc[runs["status"] == "FAILED", "error"].tolist() == [DIVERGED]


def test_figures_are_real_images(report):
    for png in report.glob("figures/*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 10_000
        img = imread(png)
        assert img.shape[0] >= 300 and img.shape[1] >= 300
        assert float(np.std(img[..., :3])) > 0.05, png  # not a blank canvas
    for svg in report.glob("figures/*.svg"):
        assert "<svg" in svg.read_text()[:500]


def test_refuses_to_overwrite_and_replaces_when_asked(uri, tmp_path):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserInputError, match="not empty"):
        write_report("alpha", out, tracking_uri=uri)
    assert _files(out) == ["keep.txt"] and [p.name for p in tmp_path.iterdir()] == ["rep"]
    write_report("alpha", out, tracking_uri=uri, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "README.md").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]


def test_failure_part_way_leaves_nothing(uri, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    # Fails while drawing the last figure, after tables and other figures were written.
    monkeypatch.setattr(report_mod, "plot_training_curves", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report("alpha", tmp_path / "a" / "b" / "rep", tracking_uri=uri)
    assert list(tmp_path.iterdir()) == []  # neither the report nor the parents it made
    old = tmp_path / "old"
    old.mkdir()
    (old / "README.md").write_text("previous report")
    with pytest.raises(RuntimeError):
        write_report("alpha", old, tracking_uri=uri, overwrite=True)
    assert _files(old) == ["README.md"] and (old / "README.md").read_text() == "previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["old"]


def test_unknown_study_or_nothing_finished_writes_nothing(uri, tmp_path):
    with pytest.raises(UserInputError, match="no study named 'nope'.*known: alpha, stuck"):
        write_report("nope", tmp_path / "x" / "rep", tracking_uri=uri)
    with pytest.raises(UserInputError) as err:
        write_report("stuck", tmp_path / "rep", tracking_uri=uri)
    msg = str(err.value)
    assert "no finished trials" in msg and "1 RUNNING" in msg and "1 FAILED" in msg
    assert "\n" not in msg
    assert list(tmp_path.iterdir()) == []


def test_analysis_never_imports_torch_or_ray(built):
    out, stdout = built
    assert "LOADED []" in stdout  # after importing every module and writing a whole report
    assert (out / "README.md").is_file()


def test_plot_pareto_draws_the_front(uri):
    summary = summarize(load_runs("alpha", tracking_uri=uri), ["config_id"])
    front = pareto_front(summary)
    ax = Figure().add_subplot()
    plot_pareto(summary, front, ax, score="val_score")
    step = [ln for ln in ax.get_lines() if ln.get_drawstyle() == "steps-post"]
    assert len(step) == 1
    # The front's points, then on to the right of the slowest configuration (F at 4.5 ms).
    np.testing.assert_allclose(step[0].get_xdata()[:3], [2.0, 3.0, 4.0])
    np.testing.assert_allclose(step[0].get_ydata(), [75.0, 81.25, 87.5, 87.5])
    assert step[0].get_xdata()[3] > 4.5
    assert ax.get_xlabel() == "latency p50 (ms)" and ax.get_ylabel() == "validation micro-F1 (%)"
    (rings,) = [c for c in ax.collections if c.get_gid() == FRONT_MARKS_GID]
    np.testing.assert_allclose(rings.get_offsets(), [[2.0, 75.0], [3.0, 81.25], [4.0, 87.5]])
    labels = [t.get_text() for t in ax.get_legend().texts]
    assert {"LSP", "KD", "student alone", "FitNet", "AT", "Pareto front"} <= set(labels)


def _arch_summary(archs: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "config_id": list("abcdef"),
            "dataset": "cora",
            "method": ["none", "kd"] * 3,
            "student_arch": archs,
            "val_score_mean": [0.70, 0.75, 0.72, 0.74, 0.50, 0.55],
            "test_score_mean": [0.70, 0.75, 0.72, 0.74, 0.50, 0.55],
            "test_score_std": np.nan,
            "latency_ms_p50_mean": [3.0, 3.1, 1.0, 1.1, 0.5, 0.6],
            "latency_ms_p50_std": np.nan,
            "num_params_mean": [1000.0, 1000.0, 500.0, 500.0, 400.0, 400.0],
        }
    )


def test_plot_pareto_marks_student_architectures_apart():
    from matplotlib.collections import PathCollection

    summary = _arch_summary(["gat", "gat", "gcn", "gcn", "mlp", "mlp"])
    ax = Figure().add_subplot()
    plot_pareto(summary, pareto_front(summary), ax)
    legend = ax.get_legend()
    labels = [t.get_text() for t in legend.texts]
    # The legend names the marker section and each architecture under it.
    start = labels.index("student arch")
    assert labels[start + 1 : start + 4] == ["gat", "gcn", "mlp"]
    markers = [str(legend.legend_handles[i].get_marker()) for i in range(start + 1, start + 4)]
    assert len(set(markers)) == 3
    # Each point's marker follows its architecture: same arch, same path; other arch, other path.
    (points,) = [
        c
        for c in ax.collections
        if isinstance(c, PathCollection) and c.get_gid() != FRONT_MARKS_GID
    ]
    paths = [p.vertices.tobytes() for p in points.get_paths()]
    assert len(paths) == 6
    assert paths[0] == paths[1] and paths[2] == paths[3] and paths[4] == paths[5]
    assert len({paths[0], paths[2], paths[4]}) == 3

    # One architecture: no marker section (it would say nothing).
    ax = Figure().add_subplot()
    single = _arch_summary(["gat"] * 6)
    plot_pareto(single, pareto_front(single), ax)
    assert "student arch" not in [t.get_text() for t in ax.get_legend().texts]


def test_a_method_has_one_colour_in_every_figure():
    from matplotlib.colors import to_rgb

    from analysis.plots import method_colors

    def legend_colours(summary: pd.DataFrame) -> dict[str, tuple]:
        ax = Figure().add_subplot()
        plot_pareto(summary, pareto_front(summary), ax)
        legend = ax.get_legend()
        return {
            t.get_text(): to_rgb(h.get_facecolor()[0] if hasattr(h, "get_facecolor") else
                                 h.get_color())
            for t, h in zip(legend.texts, legend.legend_handles, strict=False)
            if t.get_text() in ("KD", "student alone", "LSP")
        }  # fmt: skip

    both = _arch_summary(["gat"] * 6)  # none and kd
    kd_only = both.loc[both["method"] == "kd"].assign(method=["kd", "lsp", "kd"])  # KD first
    first, second = legend_colours(both), legend_colours(kd_only)
    assert first["KD"] == second["KD"]  # KD's colour does not depend on which methods are shown
    assert first["KD"] != first["student alone"] and second["KD"] != second["LSP"]
    assert method_colors(["KD", "LSP"])["KD"] == method_colors(["LSP", "mine", "KD"])["KD"]
    assert "mine" in method_colors(["mine"])  # a plugin's method gets a colour too


def test_plot_hyperparameter_and_curves():
    table = pd.DataFrame(
        {
            "dataset": "modelnet40",
            "lsp.kernel": ["rbf", "rbf", "rbf", "poly", "poly"],
            "lsp.lambda": [1.0, 10.0, 100.0, 1.0, 100.0],
            "test_score_mean": [90.0, 91.0, 92.0, 89.0, 90.5],
            "test_score_std": [0.5, np.nan, 0.2, 0.1, 0.1],
        }
    )
    ax = Figure().add_subplot()
    plot_hyperparameter(table, "lsp.lambda", ax, hue="lsp.kernel")
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "test accuracy (%)"
    assert [t.get_text() for t in ax.get_legend().texts] == ["poly", "rbf"]
    lines = {c.get_label(): c.lines[0] for c in ax.containers}  # one errorbar per kernel
    np.testing.assert_allclose(lines["rbf"].get_ydata(), [90.0, 91.0, 92.0])
    with pytest.raises(UserInputError, match="unknown column 'kd.T'"):
        plot_hyperparameter(table, "kd.T", ax)

    history = pd.DataFrame(
        {"run_id": ["r1"] * 3 + ["r2"] * 3, "key": "train_loss", "step": [0, 1, 2] * 2,
         "value": [1.0, 0.5, 0.2, 0.9, 0.6, 0.3]}
    )  # fmt: skip
    ax = Figure().add_subplot()
    plot_training_curves(history, ax, key="train_loss", labels={"r1": "LSP", "r2": "KD"})
    curves = {
        ln.get_label(): np.asarray(ln.get_ydata()).tolist()
        for ln in ax.get_lines()
        if len(ln.get_ydata())  # seaborn's legend proxies carry no data
    }
    assert curves["LSP"] == [1.0, 0.5, 0.2] and curves["KD"] == [0.9, 0.6, 0.3]


def test_factor_table_feeds_the_lambda_plot(uri):
    t = factor_table(load_runs("alpha", tracking_uri=uri), ["lsp.kernel", "lsp.lambda"])
    ax = Figure().add_subplot()
    plot_hyperparameter(t, "lsp.lambda", ax, hue="lsp.kernel")
    assert ax.get_xscale() == "linear"  # 10 and 100 only: span under 100x


def test_report_front_and_best_choose_on_validation(tmp_path: Path) -> None:
    """Two configurations at one latency: ``val_best`` has the better mean validation score,
    ``test_best`` the better test score. The front and the methods table hold ``val_best``."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    def trial(cfg: str, seed: int, val: float, test: float) -> dict:
        return {
            "method": "kd",
            "dataset": "cora",
            "seed": seed,
            "config_id": cfg,
            "params": {"kd.temperature": 4.0 if cfg == "val_best" else 2.0},
            "metrics": {"val_score": val, "test_score": test, "latency_ms_p50": 3.0,
                        "latency_ms_p90": 4.0, "num_params": 100.0},
        }  # fmt: skip

    fill_study(
        uri,
        "disagree",
        [trial("val_best", 0, 0.82, 0.70), trial("val_best", 1, 0.80, 0.72),
         trial("test_best", 0, 0.79, 0.90), trial("test_best", 1, 0.81, 0.88)],
    )  # fmt: skip
    out = tmp_path / "rep"
    write_report("disagree", out, tracking_uri=uri)
    front = pd.read_csv(out / "pareto.csv")
    assert front["config_id"].tolist() == ["val_best"]
    assert front["test_score_mean"].iloc[0] == pytest.approx(0.71)  # shown beside it
    methods = pd.read_csv(out / "tables" / "methods.csv")
    ours = methods.loc[methods["method"] == "kd"]
    assert ours["config_id"].tolist() == ["val_best"]
    assert "chosen on validation" in (out / "README.md").read_text()


def test_hyperparameter_plot_joins_only_multi_seed_means():
    table = pd.DataFrame(
        {"dataset": "cora", "kd.temperature": [2.0, 4.0, 8.0], "n": [1, 3, 1],
         "test_score_mean": [71.0, 73.4, 71.0], "test_score_std": [np.nan, 0.5, np.nan]}
    )  # fmt: skip
    ax = Figure().add_subplot()
    plot_hyperparameter(table, "kd.temperature", ax)
    (container,) = ax.containers
    assert container.lines[0].get_linestyle() == "None"  # single-seed points: no trend line
    assert ax.get_xlabel() == "KD temperature T (kd.temperature)"
    assert {t.get_text() for t in ax.texts} == {"n=1", "n=3"}
    ax = Figure().add_subplot()
    plot_hyperparameter(table.assign(n=2), "kd.temperature", ax)
    assert ax.containers[0].lines[0].get_linestyle() == "-"


def test_losses_of_different_methods_get_their_own_axes():
    history = pd.DataFrame(
        {"run_id": ["r1"] * 2 + ["r2"] * 2, "key": "train_loss", "step": [0, 1] * 2,
         "value": [1.0, 0.5, 9.0, 6.0]}
    )  # fmt: skip
    fig = Figure()
    axes = fig.subplots(1, 3)
    used = plot_losses_by_run(history, list(axes), labels={"r1": "LSP", "r2": "KD"})
    assert [a.get_title() for a in used] == ["LSP", "KD"]
    assert [len(a.get_lines()) for a in used] == [1, 1] and not axes[2].axison


def test_header_counts_flagged_latency_figures_and_window_spread(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    metrics = {"val_score": 0.8, "test_score": 0.8, "latency_ms_p50": 3.0}
    trials = [
        {"method": "kd", "dataset": "cora", "seed": s, "config_id": "c",
         "metrics": {**metrics, "latency_ms_p50_window_spread": spread}}
        for s, spread in enumerate((0.10, 0.30, 0.20))
    ]  # fmt: skip
    ids = fill_study(uri, "flags", trials)["trial_run_ids"]
    client = MlflowClient(uri)
    for rid, (stable, quiet) in zip(
        ids, [("true", "true"), ("false", "true"), ("false", "false")], strict=True
    ):
        client.set_tag(rid, "latency_stable", stable)
        client.set_tag(rid, "latency_quiet", quiet)
    out = tmp_path / "rep"
    write_report("flags", out, tracking_uri=uri)
    text = (out / "README.md").read_text()
    assert (
        "- Latency figures of 3 trials: 2 not stable to the study's tolerance, 1 not timed "
        "quietly; the p50s of a figure's timing windows spread by 20% (median) to 30% (max)"
    ) in text


def test_serving_section_names_the_configurations_it_cannot_draw(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    base = {"val_score": 0.8, "test_score": 0.8, "latency_ms_p50": 2.0}
    trials = [
        {"method": "kd", "dataset": "cora", "config_id": "mlp", "student_arch": "mlp",
         "metrics": {**base, "serve_b1_ms_p50": 0.05}},
        {"method": "kd", "dataset": "cora", "config_id": "rgcn", "student_arch": "rgcn",
         "metrics": base},
    ]  # fmt: skip
    fill_study(uri, "serving", trials)
    out = tmp_path / "rep"
    write_report("serving", out, tracking_uri=uri)
    text = (out / "README.md").read_text()
    drawn = "1 of 1 configurations are on this front. 1 configurations have no serving figure"
    assert drawn in text
    assert "(student arch: rgcn; serving is timed for models with a layer-wise path only)" in text
