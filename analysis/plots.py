"""Seaborn figures from precomputed frames: compute first (ablation, pareto), then draw on an Axes.

Every function takes the frame it draws and a matplotlib ``Axes`` and returns that Axes; none
computes statistics of its own beyond unit scaling, so tests check the frames and the figures only
render them. Scores are drawn in percent (a study logging fractions is scaled by 100, see
:func:`analysis.ablation.score_scale`), latency in ms. Nothing here selects a backend: draw on
any Axes; :mod:`analysis.report` uses ``matplotlib.figure.Figure`` (Agg canvas, no pyplot).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from analysis.ablation import METHOD_LABELS, score_scale
from study.errors import choose

__all__ = [
    "ARCH_LEGEND_TITLE",
    "score_axis_label",
    "readable",
    "plot_pareto",
    "plot_hyperparameter",
    "plot_training_curves",
    "plot_losses_by_run",
]

ARCH_COLUMN = "student_arch"
#: The gid of the rings that mark the front's points in :func:`plot_pareto`.
FRONT_MARKS_GID = "pareto-front-marks"
#: The legend section that names the marker of each student architecture in :func:`plot_pareto`.
ARCH_LEGEND_TITLE = "student arch"


#: Axis names for the metrics and hyperparameters the report draws.
READABLE = {
    "epoch_val_score": "validation score",
    "val_score": "validation score",
    "test_score": "test score",
    "train_loss": "training loss (method's own objective)",
    "distill_loss": "distillation term (defined per method)",
    "latency_ms_p50": "latency p50 (ms)",
    "serve_b1_ms_p50": "serving 1 node, k-hop fetch included: p50 (ms)",
    "serve_b256_ms_p50": "serving 256 nodes, k-hop fetch included: p50 (ms)",
    "num_params": "parameters",
    "lsp.lambda": "LSP weight λ (lsp.lambda)",
    "lsp.kernel": "LSP kernel",
    "kd.temperature": "KD temperature T (kd.temperature)",
    "kd.alpha": "KD weight α (kd.alpha)",
}


def readable(name: str) -> str:
    """An axis name for a metric or hyperparameter (the raw name when none is known)."""
    return READABLE.get(name, name)


def score_axis_label(dataset: str | Sequence[str] | None = None, score: str = "test_score") -> str:
    """``"test micro-F1 (%)"`` for PPI, ``"test accuracy (%)"`` otherwise (``"val ..."`` for
    ``val_score``); ``"test score (%)"`` when several datasets share the axis."""
    split = "validation" if score.startswith(("val", "epoch_val")) else "test"
    names = [] if dataset is None else [dataset] if isinstance(dataset, str) else list(dataset)
    names = sorted({str(n).lower() for n in names})
    if len(names) != 1:
        return f"{split} score (%)"
    return f"{split} {'micro-F1' if names[0] == 'ppi' else 'accuracy'} (%)"


def _nan0(series: pd.Series) -> np.ndarray:
    return np.nan_to_num(pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64"))


def _datasets(frame: pd.DataFrame) -> list[str] | None:
    return frame["dataset"].dropna().unique().tolist() if "dataset" in frame.columns else None


def method_colors(labels: Iterable[str]) -> dict[str, Any]:
    """A colour per method label, the same in every figure of every report: the catalog's
    methods in catalog order take the palette's colours in turn; other labels (a plugin's) the
    next ones, by name."""
    known = list(dict.fromkeys(METHOD_LABELS.values()))
    present = set(labels)
    extra = sorted(present - set(known))
    palette = sns.color_palette(n_colors=len(known) + len(extra))
    colors = dict(zip([*known, *extra], palette, strict=True))
    return {label: colors[label] for label in [*known, *extra] if label in present}


def plot_pareto(
    summary: pd.DataFrame,
    front: pd.DataFrame,
    ax: Axes,
    *,
    score: str = "test_score",
    latency: str = "latency_ms_p50",
) -> Axes:
    """Score against latency for every configuration, the Pareto front as a step line.

    Args:
        summary: Configurations (``summarize(runs, ["config_id"])``): ``method``,
            ``<score>_mean/_std``, ``<latency>_mean/_std``, optionally ``num_params_mean``.
        front: The non-dominated rows (:func:`analysis.pareto.pareto_front` of ``summary``).
        ax: Where to draw.
        score: Score metric (y axis, percent).
        latency: Latency metric (x axis, ms).

    Points are coloured by method and sized by parameter count; when ``summary`` holds more
    than one student architecture (``student_arch``), each has its own marker and the legend has
    a "student arch" section. Error bars are the std over seeds (none where n=1). The step line
    shows the best score reachable within each latency.
    """
    y_mean, y_std = f"{score}_mean", f"{score}_std"
    x_mean, x_std = f"{latency}_mean", f"{latency}_std"
    data = summary.loc[summary[[x_mean, y_mean]].notna().all(axis=1)].copy()
    scale = score_scale(data[y_mean])
    data["x"] = pd.to_numeric(data[x_mean], errors="coerce")
    data["y"] = pd.to_numeric(data[y_mean], errors="coerce") * scale
    methods = data["method"] if "method" in data.columns else pd.Series("all", index=data.index)
    data["method"] = methods.map(lambda m: METHOD_LABELS.get(m, m)).astype(str)
    colors = method_colors(data["method"].unique())
    has_size = "num_params_mean" in data.columns and data["num_params_mean"].notna().any()
    # Only a mix of architectures gets markers: one arch would add a legend section of one entry.
    archs = data[ARCH_COLUMN].dropna().unique() if ARCH_COLUMN in data.columns else []
    style = ARCH_LEGEND_TITLE if len(archs) > 1 else None
    if style is not None:
        # The column name is the legend's section title; a missing arch gets a marker of its own.
        data[style] = data[ARCH_COLUMN].where(data[ARCH_COLUMN].notna(), "unknown").astype(str)
    if has_size:
        data["params"] = pd.to_numeric(data["num_params_mean"], errors="coerce")
    if len(data):
        ax.errorbar(
            data["x"],
            data["y"],
            xerr=_nan0(data[x_std]) if x_std in data.columns else None,
            yerr=_nan0(data[y_std]) * scale if y_std in data.columns else None,
            fmt="none",
            ecolor="0.6",
            elinewidth=0.8,
            capsize=2,
            zorder=1,
        )
        sns.scatterplot(
            data=data,
            x="x",
            y="y",
            hue="method",
            hue_order=list(colors),
            palette=colors,
            size="params" if has_size else None,
            style=style,
            style_order=sorted(data[style].unique()) if style else None,
            sizes=(30, 220),
            ax=ax,
            zorder=3,
            legend="auto",
        )
    handles: list[Artist] = []
    labels: list[str] = []
    legend = ax.get_legend()
    if legend is not None:
        for handle, text in zip(legend.legend_handles, legend.texts, strict=False):
            if handle is not None:  # matplotlib types a handle it could not draw as None
                handles.append(handle)
                labels.append(_count_label(text.get_text()))
    f = front.loc[front[[x_mean, y_mean]].notna().all(axis=1)].sort_values([x_mean, y_mean])
    if len(f):
        fx = pd.to_numeric(f[x_mean]).to_numpy(dtype="float64")
        fy = pd.to_numeric(f[y_mean]).to_numpy(dtype="float64") * scale
        # The step line runs on to the slowest configuration: the best score reachable within
        # each latency. A front of one point, or of points sharing a latency, stays visible.
        right = float(np.nanmax(data["x"])) if len(data) else float(fx.max())
        right = max(right, float(fx.max()))
        span = right - float(fx.min())
        right += 0.05 * span if span > 0 else 0.05 * max(abs(right), 1.0)
        (line,) = ax.plot(
            [*fx, right],
            [*fy, fy[-1]],
            drawstyle="steps-post",
            color="black",
            linewidth=1.2,
            zorder=2,
        )
        ring = ax.scatter(
            fx, fy, s=260, facecolors="none", edgecolors="black", linewidths=1.4, zorder=4
        )
        ring.set_gid(FRONT_MARKS_GID)
        handles += [line, ring]
        labels += ["Pareto front", "on the front"]
    if "n" in data.columns:
        for x, y, n in zip(data["x"], data["y"], data["n"], strict=True):
            if not _isnan(n):
                ax.annotate(
                    f"n={int(n)}", (x, y), xytext=(6, -10), textcoords="offset points",
                    fontsize="x-small", color="0.3",
                )  # fmt: skip
    ax.set_title("mean over seeds; error bars ±1 std (none when n=1)", fontsize="small")
    if handles:
        ax.legend(handles, labels, fontsize="small", loc="best")
    ax.set_xlabel(readable(latency))
    ax.set_ylabel(score_axis_label(_datasets(summary), score))
    ax.grid(True, alpha=0.3)
    return ax


def _isnan(x: object) -> bool:
    try:
        return x is None or bool(pd.isna(x))
    except (TypeError, ValueError):
        return False


def _auto_xscale(x: np.ndarray) -> str:
    x = x[np.isfinite(x)]
    if x.size < 2:
        return "linear"
    positive = x[x > 0]
    if positive.size and positive.max() / positive.min() >= 100:
        return "log" if (x > 0).all() else "symlog"
    return "linear"


def plot_hyperparameter(
    table: pd.DataFrame,
    param: str,
    ax: Axes,
    *,
    hue: str | None = None,
    score: str = "test_score",
    xscale: str | None = None,
) -> Axes:
    """Score against one hyperparameter, a line per ``hue`` level (e.g. lambda by kernel).

    Args:
        table: One row per (hue, param) level with ``<score>_mean``/``_std``, e.g.
            ``factor_table(runs, ["lsp.kernel", "lsp.lambda"])``.
        param: The x column (``"lsp.lambda"``, ``"kd.temperature"``).
        ax: Where to draw.
        hue: Column that splits lines (``"lsp.kernel"``), or None for one line.
        score: Score metric (percent).
        xscale: ``"linear"``, ``"log"`` or ``"symlog"``; default log when the positive values
            span 100x or more (symlog if 0 is among them), as lambda does.
    """
    choose("column", param, list(table.columns))
    if hue is not None:
        choose("column", hue, list(table.columns))
    y_mean, y_std = f"{score}_mean", f"{score}_std"
    data = table.loc[table[param].notna() & table[y_mean].notna()].copy()
    data["_x"] = pd.to_numeric(data[param], errors="coerce")
    data = data.loc[data["_x"].notna()].sort_values("_x")
    scale = score_scale(data[y_mean])
    levels = [None] if hue is None else sorted(data[hue].dropna().astype(str).unique())
    palette = sns.color_palette(n_colors=max(len(levels), 1))
    for level, color in zip(levels, palette, strict=False):
        part = data if level is None else data.loc[data[hue].astype(str) == level]
        std = _nan0(part[y_std]) * scale if y_std in part.columns else None
        n = pd.to_numeric(part["n"], errors="coerce") if "n" in part.columns else None
        # A trend line only where every point is a mean over two seeds or more.
        joined = n is not None and len(part) > 1 and bool((n >= 2).all())
        xs = part["_x"].to_numpy(dtype="float64")
        ys = pd.to_numeric(part[y_mean]).to_numpy(dtype="float64") * scale
        ax.errorbar(
            xs,
            ys,
            yerr=std,
            marker="o",
            linestyle="-" if joined else "none",
            capsize=3,
            color=color,
            label=level,
        )
        if n is not None:
            for x, y, k in zip(xs, ys, n, strict=True):
                if not _isnan(k):
                    ax.annotate(
                        f"n={int(k)}", (x, y), xytext=(5, 5), textcoords="offset points",
                        fontsize="x-small", color=color,
                    )  # fmt: skip
    ax.set_title(
        "mean over seeds, error bars ±1 std; lines join only means of n≥2 seeds",
        fontsize="small",
    )
    ax.set_xscale(xscale or _auto_xscale(data["_x"].to_numpy(dtype="float64")))
    ax.set_xlabel(readable(param))
    ax.set_ylabel(score_axis_label(_datasets(table), score))
    if hue is not None and levels:
        ax.legend(title=readable(hue), fontsize="small")
    ax.grid(True, alpha=0.3)
    return ax


def plot_training_curves(
    history: pd.DataFrame,
    ax: Axes,
    *,
    key: str = "epoch_val_score",
    labels: Mapping[str, str] | None = None,
) -> Axes:
    """Per-epoch curves of some runs (e.g. the best trial of each method) on one axis.

    Only for a metric defined alike for every run (``epoch_val_score``, in percent): a loss
    includes each method's own distillation term, so losses of different methods go on
    separate axes (:func:`plot_losses_by_run`).

    Args:
        history: Long frame from :func:`analysis.runs.load_history` (run_id, key, step, value).
        ax: Where to draw.
        key: Which metric (``epoch_val_score``, ``train_loss``, ``distill_loss``).
        labels: run_id -> legend label (default: the first 8 characters of the run id).
    """
    data = history.loc[history["key"] == key].copy()
    if data.empty:
        ax.text(
            0.5, 0.5, f"no '{key}' history logged", ha="center", va="center", transform=ax.transAxes
        )
        ax.set_axis_off()
        return ax
    names = dict(labels or {})
    runs = list(dict.fromkeys(data["run_id"]))
    shown = [names.get(r, r[:8]) for r in runs]
    # Two runs with one label must stay apart in the legend.
    shown = [f"{s} {r[:6]}" if shown.count(s) > 1 else s for s, r in zip(shown, runs, strict=True)]
    palette = sns.color_palette(n_colors=max(len(runs), 1))
    # A score per epoch is drawn in percent, like every other score.
    scale = score_scale(data["value"]) if key == "epoch_val_score" else 1.0
    for run, label, color in zip(runs, shown, palette, strict=False):
        part = data.loc[data["run_id"] == run].sort_values("step")
        ax.plot(
            part["step"].to_numpy(dtype="float64"),
            part["value"].to_numpy(dtype="float64") * scale,
            label=label,
            color=color,
            marker="o" if len(part) < 20 else None,
            markersize=3,
        )
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(
        score_axis_label(None, "epoch_val_score") if key == "epoch_val_score" else readable(key)
    )
    ax.legend(fontsize="small")
    ax.grid(True, alpha=0.3)
    return ax


def _count_label(text: str) -> str:
    """A parameter count in a legend as people write it (``11535.0`` -> ``11.5k``); others as is."""
    try:
        value = float(text)
    except ValueError:
        return text
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    return f"{value / 1e3:.1f}k" if value >= 1e3 else f"{value:g}"


def plot_losses_by_run(
    history: pd.DataFrame,
    axes: Sequence[Axes],
    *,
    key: str = "train_loss",
    labels: Mapping[str, str] | None = None,
) -> list[Axes]:
    """One panel per run for a loss whose definition differs between methods (``train_loss``
    is the task loss plus each method's own weighted distillation term), each on its own y axis
    and titled by its label, so no two methods' losses are read on one scale.

    Args:
        history: Long frame from :func:`analysis.runs.load_history`.
        axes: At least as many Axes as runs with ``key`` logged (extra ones are switched off).
        key: The loss.
        labels: run_id -> title (default: the first 8 characters of the run id).
    """
    data = history.loc[history["key"] == key]
    runs = list(dict.fromkeys(data["run_id"]))
    names = dict(labels or {})
    palette = sns.color_palette(n_colors=max(len(runs), 1))
    used: list[Axes] = []
    for ax, run, color in zip(axes, runs, palette, strict=False):
        part = data.loc[data["run_id"] == run].sort_values("step")
        ax.plot(
            part["step"].to_numpy(dtype="float64"),
            part["value"].to_numpy(dtype="float64"),
            color=color,
            marker="o" if len(part) < 20 else None,
            markersize=3,
        )
        ax.set_title(names.get(run, run[:8]), fontsize="small")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        used.append(ax)
    if used:
        used[0].set_ylabel(readable(key))
    for ax in axes[len(used) :]:
        ax.set_axis_off()
    return used
