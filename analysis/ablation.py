"""Ablation tables: configurations summarised over seeds, the paper's rows beside ours.

Conventions (the reports rely on them):

- A *configuration* is a ``config_id`` (every hyperparameter but the seed); its runs are seeds.
  :func:`summarize` gives per group ``n`` (finished seeds), ``<metric>_mean`` and
  ``<metric>_std`` (sample std, ddof=1). With one seed the std is NaN, never 0: it is unknown,
  and the formatted value says ``(n=1)`` with no ``±``.
- A table row for a method (or kernel, student, factor level) is the *best configuration* of
  that group, chosen on the mean validation score (``val_score``; the test score breaks ties and
  stands in when no validation score was logged) and reported with its test score, so that test
  data never picks the winner. ``n_configs`` says how many configurations competed.
- Tables give scores in percent, like the paper: a study that logs fractions in [0, 1] is scaled
  by 100 (:func:`score_scale`). Latency is in ms, training time in s, parameters as counts.
- Paper rows (``source == "paper (Yang et al. 2020)"``) are added only for the datasets the paper
  reports (PPI, ModelNet40), right after our row for the same method/kernel.
- Failed trials (status FAILED or KILLED, e.g. training that diverged) never enter a table,
  whatever they logged; :func:`failure_table` counts them per method with their reasons.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.paper import KERNEL_ROWS, METHOD_ROWS, OUR_SOURCE, PAPER_SOURCE, paper_frame
from analysis.runs import FINISHED, TRIAL_COLUMNS, failed_trials, finished_trials
from study.catalogs import METHODS, method_label
from study.errors import choose
from study.tracking import (
    EXTRA_METRICS,
    FINAL_METRICS,
    METRIC_SERVE_B1_P50,
    METRIC_SERVE_B256_P50,
    METRIC_TEST,
    METRIC_VAL,
)

__all__ = [
    "summarize",
    "best_configs",
    "config_summary",
    "failure_table",
    "method_table",
    "kernel_table",
    "student_table",
    "factor_table",
    "score_scale",
    "to_percent",
    "arrange_table",
    "format_mean_std",
    "format_table",
    "to_markdown",
    "to_latex",
    "to_csv",
    "METHOD_LABELS",
    "METRIC_TEST_N",
    "SMALL_TEST_SET",
    "t_quantile_975",
    "mean_ci95",
    "wilson_interval",
    "paired_vs_none",
    "format_paired",
    "test_set_table",
]

SCORE_METRICS = (METRIC_TEST, METRIC_VAL)
#: Every score a table may carry, all scaled to percent with the test score (one unit per table).
PERCENT_METRICS = (
    METRIC_TEST,
    METRIC_VAL,
    "test_accuracy",
    "test_micro_f1",
    "test_auroc",
    "test_mean_class_accuracy",
    "test_macro_f1",
    "test_worst_class_recall",
    "val_macro_f1",
    "val_worst_class_recall",
    "val_auroc",
)
#: Split figures a formatted table shows beside the scores, when its runs logged them.
SPLIT_COLUMNS = (
    ("test_auroc", "test AUROC (%)"),
    ("test_mean_class_accuracy", "test mAcc (%)"),
    ("test_macro_f1", "test macro-F1 (%)"),
    ("test_worst_class_recall", "test worst-class recall (%)"),
)
#: The final metric a trial logs for the number of test examples its test score counts
#: (shapes, nodes or graphs); the binomial CI of :func:`test_set_table` needs it.
METRIC_TEST_N = "test_n"  # logged by every trial: the test examples its score counts
#: Below this many test examples the report warns (binomial CI half-width per method).
SMALL_TEST_SET = 200
# Columns that differ between the seeds of one configuration by construction: never carried.
_PER_RUN = frozenset({"run_id", "run_name", "status", "seed", "error"})
#: Distinct failure reasons a :func:`failure_table` row spells out; more are counted.
MAX_REASONS = 3
#: Report labels in report order: the teacher, then every method of the catalog.
METHOD_LABELS = {"teacher": "teacher", **{e.name: method_label(e.name) for e in METHODS}}
_METHOD_ORDER = {m: i for i, m in enumerate(METHOD_LABELS)}
_SOURCE_ORDER = {OUR_SOURCE: 0, PAPER_SOURCE: 1}


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------
def summarize(
    df: pd.DataFrame,
    by: str | Sequence[str],
    metrics: Sequence[str] | None = None,
    *,
    finished_only: bool = True,
) -> pd.DataFrame:
    """Group trial runs (e.g. by ``config_id``) and summarise each metric over the group's seeds.

    Args:
        df: Trial runs as from :func:`analysis.runs.load_runs`.
        by: Grouping columns; NA is a group of its own (a KD run has no ``lsp.kernel``).
        metrics: Metric columns to summarise; default the final metrics
            (:data:`study.tracking.FINAL_METRICS` and ``EXTRA_METRICS``) that ``df`` has.
        finished_only: Keep only FINISHED runs with a test score (the runs that count).

    Returns:
        One row per group, sorted by ``by``: the ``by`` columns, ``n`` (runs in the group), every
        other column that is constant within every group (method, dataset, hyperparameters when
        grouping by ``config_id``), then ``<m>_mean`` and ``<m>_std`` (ddof=1; NaN when n=1).

    Raises:
        UserInputError: a ``by`` column or metric that ``df`` does not have.
    """
    by = [by] if isinstance(by, str) else list(by)
    for col in by:
        choose("column", col, list(df.columns))
    if metrics is None:
        known = (*FINAL_METRICS, *EXTRA_METRICS, METRIC_TEST_N)
        metrics = [m for m in known if m in df.columns]
    for m in metrics:
        choose("metric", m, list(df.columns))
    data = finished_trials(df) if finished_only else df
    stat_cols = [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
    if data.empty:
        return pd.DataFrame(columns=[*by, "n", *stat_cols])

    g = data.groupby(by, dropna=False, sort=True)
    out = g.size().rename("n").to_frame()
    candidates = [c for c in data.columns if c not in by and c not in metrics and c not in _PER_RUN]
    if candidates:
        constant = (g[candidates].nunique(dropna=False) <= 1).all()
        carried = [c for c in candidates if bool(constant[c])]
        if carried:
            out = out.join(g[carried].first())
    stats = {}
    for m in metrics:
        stats[f"{m}_mean"] = g[m].mean()
        stats[f"{m}_std"] = g[m].std(ddof=1)
    out = out.join(pd.DataFrame(stats))
    out["n"] = out["n"].astype("int64")
    return out.reset_index()


def score_scale(values: pd.Series | np.ndarray | Sequence[float]) -> float:
    """100.0 when every finite score lies in [0, 1] (a fraction), else 1.0 (already percent)."""
    arr = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype="float64")
    arr = arr[np.isfinite(arr)]
    if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
        return 100.0
    return 1.0


def to_percent(table: pd.DataFrame, scale: float) -> pd.DataFrame:
    """A copy with the score statistics (``test_score_*``, ``val_score_*`` and the split scores of
    :data:`PERCENT_METRICS`, e.g. ``test_auroc_*``) multiplied by scale: one unit per table."""
    table = table.copy()
    for m in PERCENT_METRICS:
        for s in ("mean", "std"):
            col = f"{m}_{s}"
            if col in table.columns:
                table[col] = pd.to_numeric(table[col], errors="coerce") * scale
    return table


def config_summary(df: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """:func:`summarize` of the finished trials by ``config_id`` (and ``by``): one row per
    configuration. A run without a ``config_id`` counts as a configuration of its own."""
    data = finished_trials(df)
    if not data.empty:
        own = data["config_id"].where(data["config_id"].notna(), data["run_id"])
        data = data.assign(config_id=own)
    return summarize(data, ["config_id", *by], finished_only=False)


def best_configs(df: pd.DataFrame, by: Sequence[str], *, select: str = METRIC_VAL) -> pd.DataFrame:
    """The best configuration of each ``by`` group, chosen on mean ``select`` (higher is better).

    The test score never picks: ties on ``select`` go to the smaller ``config_id``, so the
    choice is deterministic, and a summary without ``select`` (e.g. runs that logged no
    validation score) has no winner by score, only by ``config_id``. Runs without a
    ``config_id`` count as configurations of their own.

    Returns:
        The :func:`summarize` rows (grouped by ``config_id`` and ``by``) of the winners, with
        ``n_configs``, the number of configurations in the group. Scores as logged (not scaled).
    """
    by = list(by)
    summary = config_summary(df, by)
    if summary.empty:
        return summary.assign(n_configs=0)
    summary["n_configs"] = summary.groupby(by, dropna=False)["config_id"].transform("size")
    sel = f"{select}_mean"
    score = (
        pd.to_numeric(summary[sel], errors="coerce")
        if sel in summary.columns
        else pd.Series(np.nan, index=summary.index)
    )
    ranked = (
        summary.assign(_sel=score)
        .sort_values(
            ["_sel", "config_id"], ascending=[False, True], na_position="last", kind="stable"
        )
        .drop_duplicates(subset=by, keep="first")
        .drop(columns="_sel")
    )
    return ranked.sort_values(by, kind="stable", na_position="last").reset_index(drop=True)


def _reasons(errors: pd.Series) -> str:
    """Distinct reasons, most frequent first, ``(xN)`` when repeated, at most
    :data:`MAX_REASONS` spelt out."""
    texts = errors.map(lambda e: "no reason recorded" if _isnan(e) or not str(e) else str(e))
    counts = texts.value_counts(sort=True)
    shown = [f"{r} (x{n})" if n > 1 else str(r) for r, n in counts.iloc[:MAX_REASONS].items()]
    if len(counts) > MAX_REASONS:
        shown.append(f"and {len(counts) - MAX_REASONS} other reasons")
    return "; ".join(shown)


def failure_table(df: pd.DataFrame, by: Sequence[str] = ("dataset", "method")) -> pd.DataFrame:
    """The failed trials (see :func:`analysis.runs.failed_trials`) counted per group.

    Returns:
        One row per ``by`` group with a failed trial: the ``by`` columns, ``failed`` (failed
        trials), ``trials`` (all trial runs of the group, any status) and ``reasons`` (their
        ``gds.error`` reasons, distinct, most frequent first); empty when none failed.
    """
    by = list(by)
    failed = failed_trials(df)
    if failed.empty:
        return pd.DataFrame(columns=[*by, "failed", "trials", "reasons"])
    errors = failed["error"] if "error" in failed.columns else pd.Series(None, index=failed.index)
    g = failed.assign(error=errors).groupby(by, dropna=False, sort=True)
    out = g.size().rename("failed").to_frame()
    out["trials"] = df.groupby(by, dropna=False, sort=True).size().reindex(out.index)
    out["reasons"] = g["error"].agg(_reasons)
    out = out.reset_index()
    out["failed"] = out["failed"].astype("int64")
    out["trials"] = out["trials"].astype("int64")
    if "method" in by:
        order = out["method"].map(lambda m: _METHOD_ORDER.get(m, len(_METHOD_ORDER)))
        out = out.assign(_order=order).sort_values(
            [c if c != "method" else "_order" for c in by], kind="stable"
        )
        out = out.drop(columns="_order")
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------
def _ours(df: pd.DataFrame, by: Sequence[str], select: str) -> pd.DataFrame:
    best = best_configs(df, by, select=select)
    scale = score_scale(finished_trials(df)[METRIC_TEST]) if not df.empty else 1.0
    best = to_percent(best, scale)
    best.insert(0, "source", OUR_SOURCE)
    best["note"] = ""
    return best


def _ordered(table: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Sort rows by the keys (methods in the paper's order, numbers numerically, NA last), then
    ours before the paper's."""
    if table.empty:
        return table.reset_index(drop=True)
    order = pd.DataFrame(index=table.index)
    for i, k in enumerate(keys):
        col = table[k]
        order[f"na{i}"] = col.isna()
        if k == "method":
            order[f"v{i}"] = col.map(lambda m: _METHOD_ORDER.get(m, len(_METHOD_ORDER)))
            order[f"w{i}"] = col.astype(str)
        elif pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            order[f"v{i}"] = pd.to_numeric(col, errors="coerce").astype("float64").fillna(np.inf)
        else:
            order[f"v{i}"] = col.astype(str)
    order["src"] = table["source"].map(
        lambda s: _SOURCE_ORDER.get(s, 1 if str(s).startswith(PAPER_SOURCE) else 2)
    )
    idx = order.sort_values(list(order.columns), kind="stable").index
    return table.loc[idx].reset_index(drop=True)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True, sort=False)


def _teacher_rows(teachers: pd.DataFrame, scale: float) -> pd.DataFrame:
    t = teachers.loc[(teachers["status"] == FINISHED) & teachers[METRIC_TEST].notna()]
    if t.empty:
        return pd.DataFrame()
    cfg = t["teacher_hash"] if "teacher_hash" in t.columns else t["run_id"]
    rows = pd.DataFrame(
        {
            "source": OUR_SOURCE,
            "dataset": t["dataset"].to_numpy(),
            "method": "teacher",
            "config_id": cfg.where(cfg.notna(), t["run_id"]).to_numpy(),
            "n": 1,
            "n_configs": 1,
        }
    )
    for m in FINAL_METRICS:
        if m in t.columns:
            rows[f"{m}_mean"] = pd.to_numeric(t[m], errors="coerce").to_numpy()
            rows[f"{m}_std"] = np.nan
    rows["device"] = t["device"].to_numpy() if "device" in t.columns else None
    rows["note"] = ""
    return to_percent(rows, scale)


def _test_n(df: pd.DataFrame) -> dict[object, float]:
    """Dataset -> its number of test examples (median of the finished runs' ``test_n``)."""
    done = finished_trials(df)
    if METRIC_TEST_N not in done.columns or done.empty:
        return {}
    n = pd.to_numeric(done[METRIC_TEST_N], errors="coerce")
    return {d: float(v) for d, v in n.groupby(done["dataset"]).median().dropna().items()}


def method_table(
    df: pd.DataFrame,
    teachers: pd.DataFrame | None = None,
    *,
    paper: bool = True,
    select: str = METRIC_VAL,
) -> pd.DataFrame:
    """Methods side by side, like the paper's Tables 2 (PPI) and 4 (ModelNet40).

    Args:
        df: Trial runs (any status; only finished ones count).
        teachers: Teacher runs from :func:`analysis.runs.load_teachers`: adds ``teacher`` rows.
        paper: Add the paper's rows for PPI and ModelNet40.
        select: Metric that picks each method's best configuration (on its mean over seeds).

    Returns:
        One row per (dataset, method, source): ``source``, ``dataset``, ``method``,
        ``config_id``, ``n_configs``, ``n``, ``<metric>_mean``/``_std`` (scores in percent),
        ``device``, ``note``, plus the winning configuration's hyperparameters.
    """
    ours = _ours(df, ["dataset", "method"], select)
    frames = [ours]
    if teachers is not None and not teachers.empty:
        scale = score_scale(finished_trials(df)[METRIC_TEST]) if not df.empty else 1.0
        frames.append(_teacher_rows(teachers, scale))
    if paper and not ours.empty:
        frames.append(paper_frame(METHOD_ROWS, ours["dataset"].dropna().unique(), _test_n(df)))
    return arrange_table(_ordered(_concat(frames), ["dataset", "method"]), ["dataset", "method"])


def kernel_table(df: pd.DataFrame, *, paper: bool = True, select: str = METRIC_VAL) -> pd.DataFrame:
    """LSP by kernel (the paper's Table 5): the best LSP configuration of each kernel.

    Returns:
        As :func:`method_table`, keyed by ``dataset`` and ``lsp.kernel``; empty when the study
        has no LSP runs with a kernel.
    """
    if "lsp.kernel" not in df.columns:
        return pd.DataFrame()
    lsp = df.loc[(df["method"] == "lsp") & df["lsp.kernel"].notna()]
    ours = _ours(lsp, ["dataset", "lsp.kernel"], select)
    frames = [ours]
    if paper and not ours.empty:
        frames.append(paper_frame(KERNEL_ROWS, ours["dataset"].dropna().unique(), _test_n(df)))
    keys = ["dataset", "method", "lsp.kernel"]
    return arrange_table(_ordered(_concat(frames), ["dataset", "lsp.kernel"]), keys)


def student_table(df: pd.DataFrame, *, select: str = METRIC_VAL) -> pd.DataFrame:
    """Students of different sizes, with and without distillation (the paper's Table 6).

    Keys: ``dataset``, every ``student.*`` param the study has (width, depth, heads, k; else the
    ``student_arch`` tag), and ``method``. The paper's Table 6 values are not reproduced here.
    """
    keys = [c for c in df.columns if c.startswith("student.")] or ["student_arch"]
    ours = _ours(df, ["dataset", *keys, "method"], select)
    keys = ["dataset", *keys, "method"]
    return arrange_table(_ordered(ours, keys), keys)


def factor_table(
    df: pd.DataFrame,
    factor: str | Sequence[str],
    *,
    within: Sequence[str] = ("dataset", "method"),
    select: str = "best",
    select_metric: str = METRIC_VAL,
) -> pd.DataFrame:
    """Any factor the user names (``lsp.lambda``, ``kd.temperature``, ``lsp.kernel`` + ...).

    Args:
        df: Trial runs.
        factor: One column or several (e.g. ``["lsp.kernel", "lsp.lambda"]``).
        within: Columns the table is also split by.
        select: ``"best"``: per level, the best configuration (on ``select_metric``) over the
            other hyperparameters; ``"all"``: every finished run at that level pooled.
        select_metric: Metric for ``"best"``.

    Returns:
        One row per (within, factor level); runs where every factor is NA (methods without that
        hyperparameter) are left out. Scores in percent.

    Raises:
        UserInputError: an unknown factor or ``select``.
    """
    factors = [factor] if isinstance(factor, str) else list(factor)
    metrics = (*FINAL_METRICS, *EXTRA_METRICS, METRIC_TEST_N)
    valid = [c for c in df.columns if c not in _PER_RUN and c not in metrics]
    for f in factors:
        choose("factor", f, valid)
    choose("selection", select, ("all", "best"))
    data = df.loc[df[factors].notna().any(axis=1)]
    keys = [*within, *factors]
    if select == "best":
        table = _ours(data, keys, select_metric)
    else:
        fin = finished_trials(data)
        table = summarize(fin, keys, finished_only=False)
        if not fin.empty:
            counts = fin.groupby(keys, dropna=False, sort=True)["config_id"].nunique()
            table["n_configs"] = counts.to_numpy()
        table = to_percent(table, score_scale(fin[METRIC_TEST]) if not fin.empty else 1.0)
        table.insert(0, "source", OUR_SOURCE)
    return arrange_table(_ordered(table, keys), keys)


# --------------------------------------------------------------------------------------------
# Uncertainty: paired differences against the student alone, binomial CIs of small test sets
# --------------------------------------------------------------------------------------------
# Two-sided 95% quantiles of Student's t, t_{0.975}(df) for df = 1..30 (scipy.stats.t.ppf).
_T975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157,
    2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
    2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831,
    2.048407, 2.045230, 2.042272,
)  # fmt: skip
_Z975 = 1.959963984540054


def t_quantile_975(dof: int) -> float:
    """Student's t 97.5% quantile (a two-sided 95% interval) for ``dof`` degrees of freedom:
    tabulated to 30, beyond by the Cornish-Fisher expansion (error below 1e-5); NaN if dof < 1."""
    if dof < 1:
        return float("nan")
    if dof <= len(_T975):
        return _T975[dof - 1]
    z, v = _Z975, float(dof)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
    )


def mean_ci95(values: Sequence[float] | np.ndarray) -> tuple[float, float, int]:
    """(mean, half-width of its 95% t-interval, n) of the finite values; half-width NaN if n < 2."""
    arr = np.asarray(values, dtype="float64")
    arr = arr[np.isfinite(arr)]
    n = int(arr.size)
    if n == 0:
        return float("nan"), float("nan"), 0
    if n < 2:
        return float(arr.mean()), float("nan"), n
    half = t_quantile_975(n - 1) * float(arr.std(ddof=1)) / float(np.sqrt(n))
    return float(arr.mean()), half, n


def wilson_interval(p: float, n: float, z: float = _Z975) -> tuple[float, float]:
    """Wilson score interval (95% by default) of a proportion ``p`` (fraction) seen on ``n``
    examples; (NaN, NaN) when ``n`` is unknown or below 1."""
    if _isnan(p) or _isnan(n) or n < 1:
        return float("nan"), float("nan")
    p, n = float(p), float(n)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * float(np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)))
    return centre - half, centre + half


BASELINE = "none"
_STUDENT_TAG = "student_arch"


def _student_keys(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("student.")] + (
        [_STUDENT_TAG] if _STUDENT_TAG in df.columns else []
    )


def _same(a: object, b: object) -> bool:
    return (_isnan(a) and _isnan(b)) or (not _isnan(a) and not _isnan(b) and a == b)


def _verdict(n: int, low: float, high: float) -> str:
    if n < 2 or _isnan(low):
        return "n<2: no CI, no evidence either way"
    if low > 0:
        return "better than student alone"
    if high < 0:
        return "worse than student alone"
    return "no clear difference (CI contains 0)"


def paired_vs_none(
    df: pd.DataFrame, *, select: str = METRIC_VAL, baseline: str = BASELINE
) -> pd.DataFrame:
    """Each method's best configuration against the student alone (``none``), paired by seed.

    For each (dataset, method) the best configuration (on mean ``select``, as in
    :func:`method_table`) is compared with the best ``none`` configuration of the same dataset
    and, where there is one, the same student (every ``student.*`` param and ``student_arch``
    equal; else the best ``none`` of the dataset, and ``note`` says the students differ). Seeds
    that both ran are paired; the difference is on the test score in percentage points.

    Returns:
        One row per (dataset, method other than ``baseline``): ``dataset``, ``method``,
        ``config_id``, ``baseline_config_id``, ``n`` (paired seeds), ``diff`` (mean paired
        difference, pp), ``diff_std`` (ddof=1), ``ci95_low``/``ci95_high`` (95% t-interval of the
        mean; NaN when n < 2), ``verdict`` and ``note``.
    """
    cols = ["dataset", "method", "config_id", "baseline_config_id", "n", "diff", "diff_std",
            "ci95_low", "ci95_high", "verdict", "note"]  # fmt: skip
    done = finished_trials(df)
    if done.empty:
        return pd.DataFrame(columns=cols)
    done = done.assign(config_id=done["config_id"].where(done["config_id"].notna(), done["run_id"]))
    scale = score_scale(done[METRIC_TEST])
    keys = _student_keys(done)
    summary = config_summary(done, ["dataset", "method"])
    best = best_configs(done, ["dataset", "method"], select=select)
    sel = f"{select}_mean"
    rows = []
    for _, row in best.iterrows():
        if row["method"] == baseline:
            continue
        out = {c: row.get(c) for c in ("dataset", "method", "config_id")}
        base = summary.loc[(summary["dataset"] == row["dataset"]) & (summary["method"] == baseline)]
        note = ""
        if base.empty:
            rows.append({**out, "n": 0, "verdict": "no student-alone runs to compare", "note": ""})
            continue
        same = base.loc[
            [all(_same(b[k], row.get(k)) for k in keys if k in base.columns)
             for _, b in base.iterrows()]
        ]  # fmt: skip
        if same.empty:
            same, note = base, "student differs from the student-alone baseline"
        ranked = same.assign(_s=pd.to_numeric(same.get(sel), errors="coerce")).sort_values(
            ["_s", "config_id"], ascending=[False, True], na_position="last", kind="stable"
        )
        base_cfg = ranked["config_id"].iloc[0]
        mine = done.loc[done["config_id"] == row["config_id"], ["seed", METRIC_TEST]]
        theirs = done.loc[done["config_id"] == base_cfg, ["seed", METRIC_TEST]]
        paired = mine.merge(theirs, on="seed", suffixes=("", "_base"))
        diffs = (paired[METRIC_TEST] - paired[f"{METRIC_TEST}_base"]).to_numpy(dtype="float64")
        mean, half, n = mean_ci95(diffs * scale)
        std = float(np.std(diffs * scale, ddof=1)) if n >= 2 else float("nan")
        low, high = mean - half, mean + half
        if n == 0:
            note = "; ".join(x for x in (note, "no seed in common") if x)
        verdict = _verdict(n, low, high) if n else "no paired seeds"
        rows.append({**out, "baseline_config_id": base_cfg, "n": n, "diff": mean,
                     "diff_std": std, "ci95_low": low, "ci95_high": high,
                     "verdict": verdict, "note": note})  # fmt: skip
    table = pd.DataFrame(rows, columns=cols)
    table["n"] = pd.to_numeric(table["n"], errors="coerce").astype("Int64")
    return _ordered(table.assign(source=OUR_SOURCE), ["dataset", "method"]).drop(columns="source")


def format_diff(row: pd.Series, *, digits: int = 2, paired: bool = True) -> str:
    """A row's mean difference ``diff`` for reading: ``+1.25 [-0.40, +2.90] (n=3)``, without the
    interval when ``ci95_low`` is NaN; ``(unpaired)`` instead of n when not ``paired``."""
    if _isnan(row["diff"]):
        return ""
    text = f"{row['diff']:+.{digits}f}"
    if not _isnan(row["ci95_low"]):
        text += f" [{row['ci95_low']:+.{digits}f}, {row['ci95_high']:+.{digits}f}]"
    return text + (f" (n={int(row['n'])})" if paired else " (unpaired)")


def format_paired(table: pd.DataFrame, *, digits: int = 2) -> pd.DataFrame:
    """:func:`paired_vs_none` for reading: ``+1.25 [-0.40, +2.90] (n=3)`` in percentage points."""
    if table.empty:
        return pd.DataFrame()

    def cell(r: pd.Series) -> str:
        return format_diff(r, digits=digits)

    return pd.DataFrame(
        {
            "dataset": table["dataset"].map(_format_value),
            "method": table["method"].map(lambda m: METHOD_LABELS.get(m, m)),
            "test score − student alone (pp), mean [95% CI]": table.apply(cell, axis=1),
            "verdict": table["verdict"].map(_format_value),
            "note": table["note"].map(_format_value),
            "config_id": table["config_id"].map(_format_value),
            "student-alone config_id": table["baseline_config_id"].map(_format_value),
        }
    )


def test_set_table(df: pd.DataFrame, *, select: str = METRIC_VAL) -> pd.DataFrame:
    """How precise each method's test score can be, given the size of the test set.

    One evaluation on ``test_n`` examples (metric :data:`METRIC_TEST_N`) estimates a proportion
    whose 95% Wilson interval half-width is given here for each (dataset, method)'s best
    configuration at its mean test score (an approximation for micro-F1). Without ``test_n``
    the columns are NaN and ``small`` is NA.

    Returns:
        ``dataset``, ``method``, ``config_id``, ``test_n``, ``test_score_mean`` (percent),
        ``ci95_low``/``ci95_high`` (percent), ``ci95_halfwidth`` (percentage points),
        ``small`` (``test_n`` < :data:`SMALL_TEST_SET`).
    """
    cols = ["dataset", "method", "config_id", "test_n", "test_score_mean", "ci95_low",
            "ci95_high", "ci95_halfwidth", "small"]  # fmt: skip
    done = finished_trials(df)
    if done.empty:
        return pd.DataFrame(columns=cols)
    scale = score_scale(done[METRIC_TEST])
    best = best_configs(done, ["dataset", "method"], select=select)
    n_col = f"{METRIC_TEST_N}_mean"
    rows = []
    for _, r in best.iterrows():
        n = r[n_col] if n_col in best.columns else float("nan")
        p = float(r[f"{METRIC_TEST}_mean"]) * scale / 100.0
        low, high = wilson_interval(p, n)
        rows.append({
            "dataset": r["dataset"], "method": r["method"], "config_id": r["config_id"],
            "test_n": n, "test_score_mean": p * 100.0, "ci95_low": low * 100.0,
            "ci95_high": high * 100.0, "ci95_halfwidth": (high - low) * 50.0,
            "small": pd.NA if _isnan(n) else bool(n < SMALL_TEST_SET),
        })  # fmt: skip
    table = pd.DataFrame(rows, columns=cols)
    return _ordered(table.assign(source=OUR_SOURCE), ["dataset", "method"]).drop(columns="source")


# --------------------------------------------------------------------------------------------
# Formatting and rendering
# --------------------------------------------------------------------------------------------
def _isnan(x: object) -> bool:
    try:
        return x is None or x is pd.NA or bool(pd.isna(x))
    except (TypeError, ValueError):
        return False


def format_mean_std(mean: float, std: float, n: int | None = None, *, digits: int = 2) -> str:
    """``"95.70 ± 0.12 (n=3)"``; ``"95.70 (n=1)"`` when std is NaN; no ``(n=..)`` if n is NA."""
    if _isnan(mean):
        return ""
    text = f"{float(mean):.{digits}f}"
    if not _isnan(std):
        text += f" ± {float(std):.{digits}f}"
    if n is not None and not _isnan(n):
        text += f" (n={int(n)})"
    return text


def _format_params(x: float | None) -> str:
    if x is None or _isnan(x):
        return ""
    x = float(x)
    if x >= 1e5:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def _format_value(x: object) -> str:
    if _isnan(x):
        return ""
    if isinstance(x, float | np.floating):
        return f"{float(x):.6g}"
    return str(x)


def format_table(table: pd.DataFrame, *, digits: int = 2) -> pd.DataFrame:
    """A table of this module -> strings for reading.

    Shows the columns left of ``n`` (source, keys, config_id, n_configs), then the score as
    ``mean ± std (n=k)``, latency and training time as ``mean ± std``, parameters as ``0.16M``,
    the device, a note where any, and ``best config``: the winning hyperparameters (the columns
    right of ``note``) as ``name=value`` pairs. Paper rows show their single published value.
    """
    if table.empty:
        return pd.DataFrame()
    cols = list(table.columns)
    left = cols[: cols.index("n")] if "n" in cols else []
    hyper = cols[cols.index("note") + 1 :] if "note" in cols else []
    out = pd.DataFrame(index=table.index)
    for c in left:
        col = table[c]
        if c == "method":
            col = col.map(lambda m: METHOD_LABELS.get(m, m))
        out[c] = col.map(_format_value)
    n = table["n"] if "n" in cols else pd.Series(pd.NA, index=table.index)

    def stat(name: str) -> pd.Series:
        return table[name] if name in cols else pd.Series(np.nan, index=table.index)

    for metric, label in ((METRIC_TEST, "test score (%)"), (METRIC_VAL, "val score (%)")):
        if f"{metric}_mean" in cols:
            out[label] = [
                format_mean_std(m, s, k, digits=digits)
                for m, s, k in zip(stat(f"{metric}_mean"), stat(f"{metric}_std"), n, strict=True)
            ]
    for metric, label in SPLIT_COLUMNS:
        if f"{metric}_mean" in cols and pd.to_numeric(table[f"{metric}_mean"]).notna().any():
            out[label] = [
                format_mean_std(m, s, None, digits=digits)
                for m, s in zip(stat(f"{metric}_mean"), stat(f"{metric}_std"), strict=True)
            ]
    if "num_params_mean" in cols:
        out["params"] = table["num_params_mean"].map(_format_params)
    for metric, label in (
        ("latency_ms_p50", "latency p50 (ms)"),
        (METRIC_SERVE_B1_P50, "serve 1 node p50 (ms)"),
        (METRIC_SERVE_B256_P50, "serve 256 nodes p50 (ms)"),
        ("train_seconds", "train time (s)"),
    ):
        if f"{metric}_mean" in cols:
            out[label] = [
                format_mean_std(m, s, None, digits=digits)
                for m, s in zip(stat(f"{metric}_mean"), stat(f"{metric}_std"), strict=True)
            ]
    if "device" in cols:
        out["device"] = table["device"].map(_format_value)
    if "note" in cols and table["note"].map(_format_value).str.len().gt(0).any():
        out["note"] = table["note"].map(_format_value)
    if hyper:
        out["best config"] = [
            ", ".join(
                f"{h}={_format_value(v)}" for h, v in zip(hyper, row, strict=True) if not _isnan(v)
            )
            for row in table[hyper].itertuples(index=False)
        ]
    return out.reset_index(drop=True)


def arrange_table(table: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Fixed column order: source, keys, ids, n, statistics, device, note, hyperparameters.

    :func:`format_table` relies on it: columns left of ``n`` are shown as they are, columns right
    of ``note`` are the winning configuration's hyperparameters.
    """
    if table.empty:
        return table
    table = table.copy()
    if "note" not in table.columns:
        table["note"] = ""
    if "device" not in table.columns:
        table["device"] = None
    for c in ("n", "n_configs"):
        if c in table.columns:
            table[c] = pd.to_numeric(table[c], errors="coerce").astype("Int64")
    cols = list(table.columns)
    stats = [c for c in cols if c.endswith(("_mean", "_std"))]
    front = [c for c in ("source", *keys, "config_id", "n_configs", "n") if c in cols]
    front = list(dict.fromkeys(front))
    ids = [c for c in TRIAL_COLUMNS if c in cols and c not in front and c != "device"]
    known = set(front) | set(stats) | set(ids) | {"device", "note"}
    hyper = [c for c in cols if c not in known]
    return table[[*front, *stats, "device", *ids, "note", *hyper]]


def _display(frame: pd.DataFrame) -> pd.DataFrame:
    """Tables of this module (with ``*_mean`` columns) are formatted; other frames shown as-is."""
    if any(str(c).endswith("_mean") for c in frame.columns):
        return format_table(frame)
    return frame


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub pipe table (no ``tabulate`` needed); tables of this module are formatted first."""
    shown = _display(frame)
    if shown.empty:
        return "_(no rows)_\n"

    def cell(x: object) -> str:
        return _format_value(x).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in shown.columns) + " |"
    rule = "|" + "|".join("---" for _ in shown.columns) + "|"
    body = ["| " + " | ".join(cell(x) for x in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _latex_escape(text: str) -> str:
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)
    return out.replace("±", r"$\pm$")


def to_latex(frame: pd.DataFrame) -> str:
    """A plain LaTeX ``tabular`` (no jinja2 or booktabs needed), special characters escaped."""
    shown = _display(frame)
    if shown.empty:
        return "% (no rows)\n"

    def row(values) -> str:
        return " & ".join(_latex_escape(_format_value(v)) for v in values) + r" \\"

    lines = [
        r"\begin{tabular}{" + "l" * len(shown.columns) + "}",
        r"\hline",
        row(shown.columns),
        r"\hline",
        *(row(r) for r in shown.itertuples(index=False)),
        r"\hline",
        r"\end{tabular}",
    ]
    return "\n".join(lines) + "\n"


def to_csv(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the numeric table (means, stds, n, hyperparameters) as CSV; returns the path."""
    path = Path(path)
    table.to_csv(path, index=False)
    return path
