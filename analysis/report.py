"""A study's report folder: README.md with tables and figures, CSV/LaTeX tables, PNG/SVG figures.

Layout of ``out_dir`` (stable; the command line ``distill-study report STUDY --out DIR`` calls
:func:`write_report`)::

    README.md                  tables (markdown) and embedded figures
    pareto.csv                 exactly the non-dominated configurations, with config_id
    tables/runs.csv            every trial run (all statuses), typed
    tables/failed.csv          failed trials per method, with their reasons (when any failed)
    tables/configurations.csv  every configuration: mean and std over seeds
    tables/methods.csv|.tex    best configuration per method, the paper's rows beside
    tables/kernels.csv|.tex    LSP by kernel          (when the study has LSP kernels)
    tables/students.csv|.tex   by student size
    tables/lsp_lambda.csv      LSP lambda by kernel   (when searched)
    tables/kd_temperature.csv  KD temperature         (when searched)
    tables/vs_student_alone.csv|.tex  each method minus the student alone, paired by seed (95% CI)
    tables/test_set.csv        test examples and each method's binomial (Wilson) 95% CI
    tables/per_class_head_tail.csv, tables/per_class_<dataset>.csv  per-class change in test
                               recall against the student alone (when trials logged tables)
    figures/pareto_<dataset>.png|.svg, figures/lsp_lambda_<dataset>.png|.svg,
    figures/kd_temperature_<dataset>.png|.svg, figures/training_curves_<dataset>.png|.svg,
    figures/per_class_<dataset>.png|.svg

The report is built in a hidden temporary folder beside ``out_dir`` and renamed into place at the
end, so a failure leaves nothing behind and an existing report is only replaced when asked.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from tqdm import tqdm

from analysis import ablation
from analysis.ablation import METHOD_LABELS
from analysis.pareto import DEFAULT_OBJECTIVES, pareto_front
from analysis.per_class import (
    balanced_training,
    class_change,
    format_change,
    head_tail_summary,
    plot_class_change,
)
from analysis.plots import (
    plot_hyperparameter,
    plot_losses_by_run,
    plot_pareto,
    plot_training_curves,
)
from analysis.runs import (
    display_uri,
    failed_trials,
    finished_trials,
    load_class_tables,
    load_history,
    load_runs,
    load_teachers,
)
from study.errors import UserInputError
from study.fileio import move_into_place, staging_folder
from study.tracking import (
    METRIC_LATENCY_P50,
    METRIC_LATENCY_WINDOW_SPREAD,
    METRIC_SERVE_B1_P50,
    METRIC_SERVE_B256_P50,
    METRIC_TEST,
    METRIC_VAL,
    resolve_tracking_uri,
)

__all__ = ["write_report"]

_FRONT_COLUMNS = ("dataset", "config_id", "method")


def _slug(name: object) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(name)).strip("-") or "unnamed"


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserInputError(f"report folder {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserInputError(
            f"report folder {out} exists and is not empty (choose another --out, or overwrite)"
        )


def _status_line(runs: pd.DataFrame) -> str:
    counts = runs["status"].value_counts()
    return ", ".join(f"{int(n)} {s}" for s, n in counts.items()) or "no trial runs"


@dataclass
class _Report:
    """What goes into the folder, computed before anything is written."""

    lines: list[str] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    latex: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Callable[[Figure], None]] = field(default_factory=dict)
    pareto: pd.DataFrame | None = None

    def section(self, title: str, *text: str) -> None:
        self.lines += ["", f"## {title}", *(["", *text] if text else [])]

    def table(
        self,
        name: str,
        table: pd.DataFrame,
        *,
        latex: bool = False,
        shown: pd.DataFrame | None = None,
    ) -> None:
        self.tables[name] = table
        if latex:
            self.latex[name] = table if shown is None else shown
        self.lines += [
            "",
            ablation.to_markdown(table if shown is None else shown).rstrip("\n"),
            "",
            f"CSV: [tables/{name}.csv](tables/{name}.csv)",
        ]

    def figure(self, name: str, draw: Callable[[Figure], None], caption: str) -> None:
        self.figures[name] = draw
        self.lines += [
            "",
            f"![{caption}](figures/{name}.png)",
            "",
            f"SVG: [figures/{name}.svg](figures/{name}.svg)",
        ]


def _best_runs(done: pd.DataFrame, methods: pd.DataFrame) -> dict[str, str]:
    """run_id -> label: the best seed (on validation; ties: the smaller seed, then run id) of
    each method's best configuration. The test score never picks."""
    ours = methods.loc[
        (methods["source"] == ablation.OUR_SOURCE) & (methods["method"] != "teacher")
    ]
    picked: dict[str, str] = {}
    for cfg, method in zip(ours["config_id"], ours["method"], strict=True):
        runs = done.loc[(done["config_id"] == cfg) | (done["run_id"] == cfg)]
        if runs.empty:
            continue
        runs = runs.assign(_seed=pd.to_numeric(runs["seed"], errors="coerce")).sort_values(
            [METRIC_VAL, "_seed", "run_id"],
            ascending=[False, True, True],
            na_position="last",
            kind="stable",
        )
        best = runs.iloc[0]
        picked[best["run_id"]] = f"{METHOD_LABELS.get(method, method)} (seed {best['seed']})"
    return picked


def _plan(study: str, uri: str, runs: pd.DataFrame, teachers: pd.DataFrame, bar: tqdm) -> _Report:
    """Compute every table and figure of the report (nothing is written yet)."""
    done = finished_trials(runs)
    rep = _Report()
    summary = ablation.config_summary(done)
    datasets = [d for d in summary["dataset"].dropna().unique()] if "dataset" in summary else []
    _add_header(rep, study, uri, runs, done, summary, datasets)
    _add_failures(rep, runs)
    bar.update()
    _add_pareto_fronts(rep, summary, datasets)
    _add_serving_fronts(rep, summary, datasets)
    bar.update()
    _add_ablation_tables(rep, done, teachers)
    _add_vs_student(rep, done)
    _add_per_class(rep, done, uri)
    _add_test_set_size(rep, done)
    bar.update()
    _add_hyperparameter_sweeps(rep, done)
    bar.update()
    _add_training_curves(rep, done, datasets, uri)
    rep.tables["configurations"] = summary
    rep.tables["runs"] = runs
    bar.update()
    return rep


def _add_header(
    rep: _Report,
    study: str,
    uri: str,
    runs: pd.DataFrame,
    done: pd.DataFrame,
    summary: pd.DataFrame,
    datasets: list[object],
) -> None:
    """The title, where the runs come from, what they count, and how to read the tables."""
    devices = ", ".join(sorted(str(d) for d in done["device"].dropna().unique())) or "unknown"
    n_seeds = summary["n"]
    rep.lines += [
        f"# Study report: {study}",
        "",
        f"- Tracking store: `{display_uri(uri)}`",
        f"- Generated: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Trial runs: {_status_line(runs)}; {len(done)} finished with a test score count.",
        *_failed_line(runs),
        f"- Configurations: {len(summary)}; seeds per configuration: "
        f"{int(n_seeds.min())} to {int(n_seeds.max())}.",
        f"- Datasets: {', '.join(map(str, datasets))}. Latency measured on: {devices} "
        "(latencies are comparable only on one device).",
        *_latency_line(done),
        "",
        "Values are mean ± sample std over seeds (n = seeds); with n=1 no std is shown. Each "
        "table row is the best configuration of its group, chosen on the mean validation score "
        "and reported on test. Every score in every table and figure is in percent (CSV "
        "included). Paper rows: Yang et al., CVPR 2020 (no std published; latency on a GTX "
        "1080Ti); they are labelled 'other data' when this study's test set differs from the "
        "paper's and 'data not checked' when the trials logged no `test_n`.",
    ]


def _latency_line(done: pd.DataFrame) -> list[str]:
    """The header's line on how well the trials' latency figures are known (README "Latency"):
    how many did not reach their tolerance or were timed while other work ran, and how far the
    timing windows of one figure spread."""
    if METRIC_LATENCY_P50 not in done or done[METRIC_LATENCY_P50].isna().all():
        return []
    timed = done.loc[done[METRIC_LATENCY_P50].notna()]
    flagged = {
        "not stable to the study's tolerance": "latency_stable",
        "not timed quietly": "latency_quiet",
    }
    counts = [f"{(timed[c] == 'false').sum()} {what}" for what, c in flagged.items() if c in timed]
    line = f"- Latency figures of {len(timed)} trials: {', '.join(counts) or 'no flags logged'}"
    if METRIC_LATENCY_WINDOW_SPREAD in timed and timed[METRIC_LATENCY_WINDOW_SPREAD].notna().any():
        spread = timed[METRIC_LATENCY_WINDOW_SPREAD].dropna()
        line += (
            f"; the p50s of a figure's timing windows spread by {spread.median():.0%} "
            f"(median) to {spread.max():.0%} (max) of it"
        )
    return [line + "."]


def _failed_line(runs: pd.DataFrame) -> list[str]:
    """The header's line on failed trials, when any failed."""
    failed = failed_trials(runs)
    if failed.empty:
        return []
    return [
        f"- Failed trials: {len(failed)}, left out of every table and front "
        "(per method, with their reasons, under Failed trials)."
    ]


def _add_failures(rep: _Report, runs: pd.DataFrame) -> None:
    """Failed trials (e.g. training that diverged) per method, with their recorded reasons."""
    table = ablation.failure_table(runs)
    if table.empty:
        return
    rep.section(
        "Failed trials",
        "Trials whose run ended FAILED or KILLED (e.g. training that diverged: a non-finite "
        "loss or one past the bound of `study.train.check_divergence`). They are in no table, "
        "front or curve below; `reasons` is their `gds.error` tag.",
    )
    rep.table("failed", table)


def _add_pareto_fronts(rep: _Report, summary: pd.DataFrame, datasets: list[object]) -> None:
    """One accuracy-against-latency section per dataset: figure and the front's table."""
    front = pareto_front(summary, DEFAULT_OBJECTIVES, by="dataset")
    lead = [c for c in _FRONT_COLUMNS if c in front.columns]
    rep.pareto = front[lead + [c for c in front.columns if c not in lead]]
    for ds in datasets:
        s_ds = summary.loc[summary["dataset"] == ds]
        f_ds = front.loc[front["dataset"] == ds]
        shown = ablation.arrange_table(
            ablation.to_percent(f_ds, ablation.score_scale(s_ds[f"{METRIC_TEST}_mean"])),
            ["dataset", "method"],
        )
        rep.section(
            f"Accuracy against latency: {ds}",
            f"{len(f_ds)} of {len(s_ds)} configurations are on the Pareto front (none is at "
            "least as good in validation score and latency p50 and better in one). The front is "
            "chosen on validation, so the plot shows the mean validation score; the table gives "
            "the test score beside it, which no choice has seen; "
            f"[pareto.csv](pareto.csv) lists them.{_marker_note(s_ds)}",
        )
        rep.figure(
            f"pareto_{_slug(ds)}", functools.partial(_draw_pareto, s_ds, f_ds), f"Pareto front {ds}"
        )
        rep.lines += ["", ablation.to_markdown(shown).rstrip("\n")]


def _add_serving_fronts(rep: _Report, summary: pd.DataFrame, datasets: list[object]) -> None:
    """Node tasks: accuracy against serving latency (one target node, its k-hop fetch
    included), with the 256-node figure in the table. Where the whole-graph figure hides it,
    this shows GLNN's point: an MLP student fetches no neighbours."""
    lat = f"{METRIC_SERVE_B1_P50}_mean"
    if lat not in summary.columns or summary[lat].isna().all():
        return
    for ds in datasets:
        in_ds = summary["dataset"] == ds
        s_ds = summary.loc[in_ds & summary[lat].notna()]
        if s_ds.empty:
            continue
        unmeasured = summary.loc[in_ds & summary[lat].isna()]
        archs = unmeasured.get("student_arch", pd.Series(dtype=object)).dropna().unique()
        left_out = (
            f" {len(unmeasured)} configurations have no serving figure and are not drawn "
            f"(student arch: {', '.join(sorted(map(str, archs))) or 'unknown'}; serving is "
            "timed for models with a layer-wise path only)."
            if len(unmeasured)
            else ""
        )
        front = pareto_front(s_ds, {f"{METRIC_VAL}_mean": "max", lat: "min"})
        metrics = [METRIC_TEST, METRIC_VAL, METRIC_LATENCY_P50]
        metrics += [METRIC_SERVE_B1_P50, METRIC_SERVE_B256_P50]
        cols = ["method", "student_arch", "config_id", "n"]
        cols += [f"{m}_{stat}" for m in metrics for stat in ("mean", "std")]
        shown = ablation.arrange_table(
            ablation.to_percent(
                s_ds[[c for c in cols if c in s_ds.columns]],
                ablation.score_scale(s_ds[f"{METRIC_TEST}_mean"]),
            ),
            ["student_arch", "method"],
        )
        rep.section(
            f"Accuracy against serving latency: {ds}",
            "The time to answer target nodes as a served model would: fetch the k-hop "
            "neighbourhood the model reads (none for an MLP), run it, return the predictions; "
            f"p50 over the study's repeats for one node ({METRIC_SERVE_B1_P50}) and for 256 "
            f"({METRIC_SERVE_B256_P50}), beside the whole-graph {METRIC_LATENCY_P50}. "
            f"{len(front)} of {len(s_ds)} configurations are on this front.{left_out}",
        )
        rep.figure(
            f"serving_{_slug(ds)}",
            functools.partial(_draw_serving, s_ds, front),
            f"Serving latency front {ds}",
        )
        rep.lines += ["", ablation.to_markdown(shown).rstrip("\n")]


def _draw_serving(summary: pd.DataFrame, front: pd.DataFrame, fig: Figure) -> None:
    plot_pareto(summary, front, fig.add_subplot(), score=METRIC_VAL, latency=METRIC_SERVE_B1_P50)


def _marker_note(summary: pd.DataFrame) -> str:
    """The legend sentence for marker shapes, when more than one student architecture shows."""
    archs = summary["student_arch"].dropna().unique() if "student_arch" in summary.columns else []
    if len(archs) <= 1:
        return ""
    return f" Colour: method; marker: student architecture ({', '.join(sorted(map(str, archs)))})."


def _draw_pareto(summary: pd.DataFrame, front: pd.DataFrame, fig: Figure) -> None:
    # The front is chosen on validation: drawn in that space its step line is monotone.
    plot_pareto(summary, front, fig.add_subplot(), score=METRIC_VAL)


def _add_vs_student(rep: _Report, done: pd.DataFrame) -> None:
    """Each method's best configuration against the student alone, paired by seed."""
    table = ablation.paired_vs_none(done)
    if table.empty:
        return
    rep.section(
        "Against the student alone",
        "Does a method help here? Each method's best configuration (chosen on validation) "
        "against the best student-alone (`none`) configuration of the same dataset and student "
        "where there is one: the mean over seeds of the paired test-score difference, in "
        "percentage points, with its 95% t-interval (n = seeds both ran). A CI that contains 0 "
        "is no evidence either way; with n=1 there is no interval.",
    )
    rep.table("vs_student_alone", table, latex=True, shown=ablation.format_paired(table))


def _add_per_class(rep: _Report, done: pd.DataFrame, uri: str) -> None:
    """Per class, each method's change in test recall against the student alone (the runs of
    the configurations :func:`analysis.ablation.paired_vs_none` compares), head to tail."""
    pairs = ablation.paired_vs_none(done)
    if pairs.empty:
        return
    configs = set(pairs["config_id"].dropna()) | set(pairs["baseline_config_id"].dropna())
    ids = done.loc[done["config_id"].isin(configs) | done["run_id"].isin(configs), "run_id"]
    tables = load_class_tables(list(ids), tracking_uri=uri)
    change = class_change(done, tables)
    if change.empty:
        return
    rep.section(
        "Per class: does distillation hurt the tail?",
        "Each method's best configuration against the student alone (the pairs of the table "
        "above), class by class: the change in test recall in percentage points, seed by seed, "
        "then the mean with its 95% t-interval (n = seeds both ran; 'unpaired': no seed in "
        "common, a difference of means without interval). Classes run from the most to the "
        "least frequent in training; head, middle and tail are thirds of them. Per-class "
        "recall on a small test set moves in large steps (one example of a 20-example class "
        "is 5 points), so read the intervals, not the points.",
    )
    differs = pairs.loc[pairs["note"].astype(str).str.contains("differs"), "method"]
    if not differs.empty:
        names = ", ".join(sorted({METHOD_LABELS.get(m, m) for m in differs}))
        rep.lines += [
            "",
            f"**Caution:** {names}: the best configuration's student is not the student-alone "
            "baseline's (another architecture or size; see the note above), so these changes "
            "mix distillation with the difference between the students. Search the student "
            "alone on the same students to separate them.",
        ]
    summary = head_tail_summary(change)
    shown = summary.assign(method=summary["method"].map(lambda m: METHOD_LABELS.get(m, m)))
    for col in ("head", "middle", "tail", "worst"):
        shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{v:+.1f}")
    shown = shown.rename(
        columns={
            "head": "head (pp)",
            "middle": "middle (pp)",
            "tail": "tail (pp)",
            "worst_class": "worst class",
            "worst": "its change (pp)",
        }
    )
    rep.table("per_class_head_tail", summary, shown=shown)
    for ds in change["dataset"].dropna().unique():
        part = change.loc[change["dataset"] == ds]
        same = balanced_training(part)
        if same is not None:
            rep.lines += [
                "",
                f"{ds}: every class has {same} training examples, so the order is the class id "
                "and head, middle and tail say nothing about frequency here.",
            ]
        rep.figure(
            f"per_class_{_slug(ds)}",
            functools.partial(_draw_class_change, part),
            f"Per-class change in test recall against the student alone, {ds}",
        )
        rep.table(f"per_class_{_slug(ds)}", part, shown=format_change(part))


def _draw_class_change(change: pd.DataFrame, fig: Figure) -> None:
    classes = int(change["rank"].nunique())
    fig.set_size_inches(min(max(6.4, 0.45 * classes + 2.0), 24.0), 4.8)
    plot_class_change(change, fig.add_subplot())


def _add_test_set_size(rep: _Report, done: pd.DataFrame) -> None:
    """The binomial uncertainty of each test score, with a warning where the test set is small."""
    table = ablation.test_set_table(done)
    if table.empty:
        return
    known = table.loc[table["test_n"].notna()]
    if known.empty:
        rep.section(
            "Test set size",
            f"The trials logged no `{ablation.METRIC_TEST_N}` (number of test examples), so the "
            "precision of a single test score cannot be given here.",
        )
        rep.tables["test_set"] = table
        return
    small = known.loc[known["small"].astype(bool)]
    text = (
        "One evaluation on `test_n` examples: the 95% Wilson interval of each method's mean "
        "test score, and its half-width in percentage points (for micro-F1 an approximation)."
    )
    if not small.empty:
        sizes = ", ".join(
            f"{ds}: {int(n)}" for ds, n in small.groupby("dataset")["test_n"].min().items()
        )
        widest = float(small["ci95_halfwidth"].max())
        text = (
            f"**Warning: small test set** ({sizes} test examples, below "
            f"{ablation.SMALL_TEST_SET}). A single test score is uncertain by up to "
            f"±{widest:.1f} points (95% Wilson interval), so differences between methods "
            "smaller than that are not evidence. " + text
        )
    rep.section("Test set size", text)
    shown = pd.DataFrame(
        {
            "dataset": table["dataset"],
            "method": table["method"].map(lambda m: METHOD_LABELS.get(m, m)),
            "test examples": table["test_n"].map(lambda n: "" if pd.isna(n) else f"{int(n)}"),
            "test score (%) [95% Wilson CI]": [
                "" if pd.isna(lo) else f"{m:.2f} [{lo:.2f}, {hi:.2f}]"
                for m, lo, hi in zip(
                    table["test_score_mean"], table["ci95_low"], table["ci95_high"], strict=True
                )
            ],
            "± (pp)": table["ci95_halfwidth"].map(lambda h: "" if pd.isna(h) else f"{h:.1f}"),
        }
    )
    rep.table("test_set", table, shown=shown)


def _add_ablation_tables(rep: _Report, done: pd.DataFrame, teachers: pd.DataFrame) -> None:
    """The paper's tables: methods always; LSP kernels and student sizes where there are any."""
    rep.section("Methods")
    rep.table("methods", ablation.method_table(done, teachers), latex=True)
    kernels = ablation.kernel_table(done)
    if not kernels.empty:
        rep.section("LSP kernels")
        rep.table("kernels", kernels, latex=True)
    students = ablation.student_table(done)
    if not students.empty:
        rep.section("Students")
        rep.table("students", students, latex=True)


# (param, method, hue, title, log axis): lambda is searched over orders of magnitude, so it is
# always on a log axis (symlog if 0 was tried).
_SWEEPS = (
    ("lsp.lambda", "lsp", "lsp.kernel", "LSP lambda", True),
    ("kd.temperature", "kd", None, "KD temperature", False),
)


def _add_hyperparameter_sweeps(rep: _Report, done: pd.DataFrame) -> None:
    """Score against each searched hyperparameter of :data:`_SWEEPS` the study tried."""
    for param, method, hue, title, log in _SWEEPS:
        if param not in done.columns:
            continue
        sub = done.loc[(done["method"] == method) & done[param].notna()]
        if sub.empty:
            continue
        _add_sweep(rep, sub, param, hue, title, log)


def _add_sweep(
    rep: _Report, sub: pd.DataFrame, param: str, hue: str | None, title: str, log: bool
) -> None:
    """One hyperparameter's section: a figure per dataset and the factor table."""
    hue = hue if hue in sub.columns and sub[hue].notna().any() else None
    factors = [hue, param] if hue else [param]
    table = ablation.factor_table(sub, factors)
    name = _slug(param.replace(".", "_"))
    positive = (pd.to_numeric(sub[param], errors="coerce") > 0).all()
    xscale = ("log" if positive else "symlog") if log else None
    rep.section(title)
    for ds in table["dataset"].dropna().unique():
        draw = functools.partial(_draw_sweep, table.loc[table["dataset"] == ds], param, hue, xscale)
        rep.figure(f"{name}_{_slug(ds)}", draw, f"{title} {ds}")
    rep.table(name, table)


def _draw_sweep(
    table: pd.DataFrame, param: str, hue: str | None, xscale: str | None, fig: Figure
) -> None:
    plot_hyperparameter(table, param, fig.add_subplot(), hue=hue, xscale=xscale)


def _add_training_curves(
    rep: _Report, done: pd.DataFrame, datasets: list[object], uri: str
) -> None:
    """Validation score and training loss per epoch of each method's best run, per dataset."""
    best = _best_runs(done, rep.tables["methods"])
    history = load_history(list(best), tracking_uri=uri)
    if history.empty:
        return
    rep.section(
        "Training curves",
        "The best seed of each method's best configuration. Top: validation score per epoch "
        "(comparable across methods). Below: each run's training loss on its own axis: the "
        "loss is the task loss plus the method's own weighted distillation term, so losses of "
        "different methods are not comparable.",
    )
    for ds in datasets:
        ids = set(done.loc[done["dataset"] == ds, "run_id"])
        h = history.loc[history["run_id"].isin(ids)]
        if h.empty:
            continue
        rep.figure(
            f"training_curves_{_slug(ds)}",
            functools.partial(_draw_curves, h, best),
            f"Training curves {ds}",
        )


def _draw_curves(history: pd.DataFrame, labels: dict[str, str], fig: Figure) -> None:
    k = max(history.loc[history["key"] == "train_loss", "run_id"].nunique(), 1)
    fig.set_size_inches(max(10.0, 2.6 * k), 7.5)
    grid = fig.add_gridspec(2, k)
    plot_training_curves(history, fig.add_subplot(grid[0, :]), key="epoch_val_score", labels=labels)
    plot_losses_by_run(
        history, [fig.add_subplot(grid[1, i]) for i in range(k)], key="train_loss", labels=labels
    )


def _write(rep: _Report, folder: Path, bar: tqdm) -> None:
    (folder / "tables").mkdir()
    (folder / "figures").mkdir()
    assert rep.pareto is not None
    rep.pareto.to_csv(folder / "pareto.csv", index=False)
    for name, table in rep.tables.items():
        ablation.to_csv(table, folder / "tables" / f"{name}.csv")
    for name, table in rep.latex.items():
        (folder / "tables" / f"{name}.tex").write_text(ablation.to_latex(table))
    bar.update()
    for name, draw in rep.figures.items():
        wide = name.startswith("training_curves")
        fig = Figure(figsize=(10, 4) if wide else (6.4, 4.8), layout="constrained")
        draw(fig)
        fig.savefig(folder / "figures" / f"{name}.png", dpi=150)
        fig.savefig(folder / "figures" / f"{name}.svg", metadata={"Date": None})
    bar.update()
    (folder / "README.md").write_text("\n".join(rep.lines) + "\n")


def write_report(
    study: str,
    out_dir: str | os.PathLike,
    *,
    tracking_uri: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a study's report folder (layout in the module docstring) and return its path.

    Args:
        study: Study (MLflow experiment) name.
        out_dir: The report folder. Created if missing; an existing non-empty folder is only
            replaced with ``overwrite=True``.
        tracking_uri: MLflow tracking URI; default from
            :func:`study.tracking.resolve_tracking_uri`.
        overwrite: Replace an existing report folder.

    Returns:
        The report folder (absolute).

    Raises:
        UserInputError: unknown study, no finished trials, or ``out_dir`` exists and is not
            empty (without ``overwrite``) or is a file. Nothing is written in these cases, nor
            when building fails part-way.
    """
    out = Path(out_dir).expanduser().absolute()
    _check_out_dir(out, overwrite)
    uri = resolve_tracking_uri(tracking_uri)
    with tqdm(total=8, desc=f"report {study}", unit="step", disable=None) as bar:
        runs = load_runs(study, tracking_uri=uri)
        if finished_trials(runs).empty:
            raise UserInputError(
                f"study {study!r} has no finished trials with a test score in "
                f"{display_uri(uri)} ({_status_line(runs)})"
            )
        teachers = load_teachers(study, tracking_uri=uri)
        bar.update()
        rep = _plan(study, uri, runs, teachers, bar)
        _write_into_place(rep, out, overwrite, bar)
    return out


def _write_into_place(rep: _Report, out: Path, overwrite: bool, bar: tqdm) -> None:
    """Write the report in a hidden folder beside ``out``, then rename it to ``out``
    (:mod:`study.fileio`): a failure leaves neither a partial report nor the parents made."""
    with staging_folder(out) as tmp:
        _write(rep, tmp, bar)
        _check_out_dir(out, overwrite)  # it may have appeared while we worked
        try:
            move_into_place(tmp, out, replace=overwrite)
        except FileExistsError:
            raise UserInputError(
                f"report folder {out} was filled while the report was written; not overwriting it"
            ) from None
