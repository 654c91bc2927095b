"""Per-class change against the student alone: does distillation help the frequent classes and
hurt the rare ones (the tail)?

Each trial logs its per-class table (``study.per_class``: recall, precision, F1 per class and
split, with the class's training count). For each method's best configuration and the
student-alone configuration it is compared with (both chosen on validation, exactly as
:func:`analysis.ablation.paired_vs_none` chooses them), the change of a class's score is taken
seed by seed (paired), then summarised over seeds: mean, sample std, 95% t-interval, n. Where
the two configurations share no seed the change is the difference of their means, with no
interval (``paired`` False). Classes are ordered by training frequency, head first.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from analysis.ablation import METHOD_LABELS, _isnan, format_diff, mean_ci95, paired_vs_none
from analysis.runs import finished_trials

#: Columns of :func:`class_change`.
CHANGE_COLUMNS = [
    "dataset", "method", "class", "class_name", "train_count", "rank", "n", "paired",
    "diff", "diff_std", "ci95_low", "ci95_high", "baseline", "method_score",
]  # fmt: skip
#: Per-class tables as :func:`analysis.runs.load_class_tables` returns them.
TABLE_COLUMNS = [
    "run_id", "split", "class", "class_name", "train_count", "support",
    "precision", "recall", "f1",
]  # fmt: skip


def _values(tables: pd.DataFrame, run_ids: pd.Series, split: str, metric: str) -> pd.DataFrame:
    """``run_id``, ``class`` and the metric (percent) of the given runs on one split."""
    t = tables.loc[tables["run_id"].isin(set(run_ids)) & (tables["split"] == split)]
    return t.assign(value=pd.to_numeric(t[metric], errors="coerce") * 100.0)[
        ["run_id", "class", "class_name", "train_count", "value"]
    ]


def class_change(
    runs: pd.DataFrame, tables: pd.DataFrame, *, split: str = "test", metric: str = "recall"
) -> pd.DataFrame:
    """Per class, each method's change against the student alone, in percentage points.

    Args:
        runs: trial runs (:func:`analysis.runs.load_runs`); only finished ones count.
        tables: per-class tables of (some of) those runs, :data:`TABLE_COLUMNS`.
        split: ``"test"`` or ``"val"``.
        metric: ``"recall"``, ``"precision"`` or ``"f1"``.

    Returns:
        :data:`CHANGE_COLUMNS`, one row per (dataset, method, class); ``rank`` 0 is the class
        with the most training examples; ``baseline`` and ``method_score`` are the two sides'
        mean scores (percent) over their seeds.
    """
    done = finished_trials(runs)
    pairs = paired_vs_none(done)
    if pairs.empty or tables.empty:
        return pd.DataFrame(columns=CHANGE_COLUMNS)
    done = done.assign(config_id=done["config_id"].where(done["config_id"].notna(), done["run_id"]))
    rows = []
    for _, pair in pairs.iterrows():
        if _isnan(pair.get("baseline_config_id")):
            continue
        mine = done.loc[done["config_id"] == pair["config_id"], ["run_id", "seed"]]
        base = done.loc[done["config_id"] == pair["baseline_config_id"], ["run_id", "seed"]]
        a = _values(tables, mine["run_id"], split, metric).merge(mine, on="run_id")
        b = _values(tables, base["run_id"], split, metric).merge(base, on="run_id")
        if a.empty or b.empty:
            continue
        info = pd.concat([a, b]).groupby("class")[["class_name", "train_count"]].first()
        ranks = info.sort_values(["train_count", "class"], ascending=[False, True]).index
        rank = {c: i for i, c in enumerate(ranks)}
        for c, row in info.iterrows():
            mine_c, base_c = a.loc[a["class"] == c], b.loc[b["class"] == c]
            both = mine_c.merge(base_c, on="seed", suffixes=("", "_base"))
            paired = not both.empty
            if paired:
                diffs = (both["value"] - both["value_base"]).to_numpy(dtype="float64")
                mean, half, n = mean_ci95(diffs)
                std = float(np.std(diffs, ddof=1)) if n >= 2 else float("nan")
            else:
                mean = float(mine_c["value"].mean() - base_c["value"].mean())
                half, n, std = float("nan"), 0, float("nan")
            rows.append({
                "dataset": pair["dataset"], "method": pair["method"], "class": c,
                "class_name": row["class_name"], "train_count": int(row["train_count"]),
                "rank": rank[c], "n": n, "paired": paired, "diff": mean, "diff_std": std,
                "ci95_low": mean - half, "ci95_high": mean + half,
                "baseline": float(base_c["value"].mean()),
                "method_score": float(mine_c["value"].mean()),
            })  # fmt: skip
    table = pd.DataFrame(rows, columns=CHANGE_COLUMNS)
    order = (
        table["method"].map({m: i for i, m in enumerate(METHOD_LABELS)}).fillna(len(METHOD_LABELS))
    )
    table = table.assign(_order=order).sort_values(
        ["dataset", "_order", "method", "rank"], kind="stable"
    )
    return table.drop(columns="_order").reset_index(drop=True)


def balanced_training(change: pd.DataFrame) -> int | None:
    """The training count every class shares (Planetoid's 20 per class), or ``None``: with
    balanced training data, "head" and "tail" have no meaning."""
    counts = pd.to_numeric(change["train_count"], errors="coerce").dropna().unique()
    return int(counts[0]) if len(counts) == 1 else None


def head_tail_summary(change: pd.DataFrame, parts: int = 3) -> pd.DataFrame:
    """Per (dataset, method): the mean per-class change over the most frequent third of the
    classes (head), the middle and the least frequent third (tail), in percentage points, with
    how many classes each part holds."""
    cols = ["dataset", "method", "classes", "head", "middle", "tail", "worst_class", "worst"]
    rows = []
    for (ds, method), g in change.groupby(["dataset", "method"], sort=False):
        g = g.sort_values("rank")
        split = np.array_split(g["diff"].to_numpy(dtype="float64"), parts)
        worst = g.loc[g["diff"].idxmin()]
        rows.append({
            "dataset": ds, "method": method, "classes": len(g),
            "head": float(np.nanmean(split[0])) if len(split[0]) else float("nan"),
            "middle": float(np.nanmean(split[1])) if parts > 2 and len(split[1]) else float("nan"),
            "tail": float(np.nanmean(split[-1])) if len(split[-1]) else float("nan"),
            "worst_class": worst["class_name"], "worst": float(worst["diff"]),
        })  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


def format_change(change: pd.DataFrame, *, digits: int = 1) -> pd.DataFrame:
    """One row per class (head first), one column per method: ``+1.2 [-0.4, +2.9] (n=3)``."""
    if change.empty:
        return pd.DataFrame()

    def cell(r: pd.Series) -> str:
        return format_diff(r, digits=digits, paired=bool(r["paired"]))

    wide = change.assign(cell=change.apply(cell, axis=1)).pivot_table(
        index=["rank", "class_name", "train_count"],
        columns="method",
        values="cell",
        aggfunc="first",
    )
    base = change.groupby("rank")["baseline"].first()
    out = wide.reset_index()
    out.insert(3, "student alone (%)", out["rank"].map(base).map(lambda v: f"{v:.{digits}f}"))
    out = out.rename(columns={m: f"{METHOD_LABELS.get(m, m)} (pp)" for m in wide.columns})
    out = out.rename(columns={"class_name": "class", "train_count": "train examples"})
    return out.drop(columns="rank")


def plot_class_change(
    change: pd.DataFrame, ax: Axes, *, metric: str = "recall", split: str = "test"
) -> None:
    """Per-class change against the student alone, classes head to tail along x, one series
    per method with its 95% interval (paired seeds); a line at 0."""
    classes = change.drop_duplicates("rank").sort_values("rank")
    x = np.arange(len(classes))
    methods = list(dict.fromkeys(change["method"]))
    width = 0.8 / max(len(methods), 1)
    for k, method in enumerate(methods):
        g = change.loc[change["method"] == method].set_index("rank").reindex(classes["rank"])
        offset = (k - (len(methods) - 1) / 2) * width
        low = (g["diff"] - g["ci95_low"]).to_numpy(dtype="float64")
        high = (g["ci95_high"] - g["diff"]).to_numpy(dtype="float64")
        n = int(pd.to_numeric(g["n"], errors="coerce").min()) if len(g) else 0
        paired = bool(g["paired"].fillna(False).astype(bool).all())
        what = f"n={n} seed{'s' if n != 1 else ''}" if paired else "unpaired: no seed in common"
        ax.errorbar(
            x + offset,
            g["diff"].to_numpy(dtype="float64"),
            yerr=np.vstack([np.nan_to_num(low), np.nan_to_num(high)]) if paired else None,
            fmt="o" if paired else "s",
            mfc=None if paired else "none",
            capsize=3,
            label=f"{METHOD_LABELS.get(method, method)} ({what})",
        )
    ax.axhline(0.0, color="0.4", linewidth=1, zorder=0)
    many = len(classes) > 25
    step = max(1, len(classes) // 25)
    ax.set_xticks(x[::step])
    labels = [
        f"{name}\n{int(count)}"
        for name, count in zip(classes["class_name"], classes["train_count"], strict=True)
    ]
    ax.set_xticklabels(labels[::step], fontsize=7 if many else 8, rotation=90 if many else 0)
    balanced = balanced_training(change) is not None
    ax.set_xlabel(
        "class (training examples; every class has as many)"
        if balanced
        else "class (training examples), most frequent first"
    )
    ax.set_ylabel(f"change in {split} {metric} vs student alone (pp)")
    ax.legend(fontsize=8, title="95% t-interval over paired seeds", title_fontsize=8)
    ax.grid(axis="y", alpha=0.3)
