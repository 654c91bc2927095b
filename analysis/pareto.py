"""Non-dominated configurations over (accuracy, latency[, parameters]).

Domination, exactly: configuration a dominates b when a is at least as good as b in every
objective and strictly better in at least one ("max" objectives: larger is better, "min":
smaller). The front is the set of configurations no other configuration dominates. Two
configurations with identical objective values do not dominate each other, so both are on the
front when either is. Configurations with a missing (NaN) objective cannot be compared and are
left out. Objectives are the means over seeds (``*_mean`` columns of
:func:`analysis.ablation.summarize`); the seeds' spread (``*_std``) travels with each row.

The default front is on the **validation** score (``val_score_mean``) and latency: the front is
a choice among configurations, and the test split never enters a choice. The test score travels
with each row (``test_score_mean``/``_std``) and is what tables report beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from study.errors import UserInputError, choose

__all__ = ["DEFAULT_OBJECTIVES", "pareto_mask", "pareto_front"]

DEFAULT_OBJECTIVES: dict[str, str] = {"val_score_mean": "max", "latency_ms_p50_mean": "min"}
_SENSES = ("max", "min")


def pareto_mask(values: np.ndarray, senses: Sequence[str]) -> np.ndarray:
    """Which rows are non-dominated.

    Args:
        values: Objective values, shape ``[n, k]``, all finite.
        senses: ``"max"`` or ``"min"`` for each of the ``k`` columns.

    Returns:
        Boolean mask of shape ``[n]``: True where no other row dominates the row.
    """
    values = np.asarray(values, dtype="float64")
    if values.ndim != 2 or values.shape[1] != len(senses):
        raise ValueError(f"values must be [n, {len(senses)}], got {values.shape}")
    if values.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    # Turn every objective into "smaller is better".
    sign = np.array([-1.0 if s == "max" else 1.0 for s in senses])
    x = values * sign
    # no_worse[a, b]: a is at least as good as b everywhere; better[a, b]: strictly somewhere.
    no_worse = (x[:, None, :] <= x[None, :, :]).all(axis=-1)
    better = (x[:, None, :] < x[None, :, :]).any(axis=-1)
    dominated = (no_worse & better).any(axis=0)
    return ~dominated


def pareto_front(
    summary: pd.DataFrame,
    objectives: Mapping[str, str] | None = None,
    *,
    by: str | Sequence[str] | None = None,
) -> pd.DataFrame:
    """The non-dominated configurations of a summary (one row per configuration).

    Args:
        summary: Configurations, e.g. ``summarize(runs, ["config_id"])``: ``config_id``,
            ``*_mean`` and ``*_std`` columns.
        objectives: Column -> ``"max"`` or ``"min"``; default :data:`DEFAULT_OBJECTIVES`
            (validation score up, latency p50 down). Add ``{"num_params_mean": "min"}`` for a
            3-D front.
        by: Compute one front per group (e.g. ``"dataset"``: fronts across datasets are
            meaningless).

    Returns:
        Exactly the non-dominated rows, all columns kept (``config_id``, stds, hyperparameters),
        sorted by ``by`` and then by the first objective to minimise (by the first objective,
        best first, when none is minimised), so a front reads left to right on a latency axis.

    Raises:
        UserInputError: an objective column that the summary lacks or a sense other than
            ``"max"``/``"min"``.
    """
    objectives = dict(DEFAULT_OBJECTIVES if objectives is None else objectives)
    if not objectives:
        raise UserInputError("pareto_front needs at least one objective (e.g. val_score_mean)")
    for col, sense in objectives.items():
        choose("objective column", col, list(summary.columns))
        choose(f"sense for {col}", sense, _SENSES)
    groups = [] if by is None else [by] if isinstance(by, str) else list(by)
    for col in groups:
        choose("column", col, list(summary.columns))

    cols = list(objectives)
    senses = [objectives[c] for c in cols]
    values = summary[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype="float64")
    comparable = np.isfinite(values).all(axis=1)
    keep = np.zeros(len(summary), dtype=bool)
    if groups:
        codes = summary.groupby(groups, dropna=False, sort=False).ngroup().to_numpy()
    else:
        codes = np.zeros(len(summary), dtype=int)
    for code in np.unique(codes):
        idx = np.flatnonzero((codes == code) & comparable)
        keep[idx] = pareto_mask(values[idx], senses)

    front = summary.loc[keep]
    sort_col = next((c for c in cols if objectives[c] == "min"), cols[0])
    ascending = objectives[sort_col] == "min"
    secondary = [c for c in cols if c != sort_col]
    front = front.sort_values(
        [*groups, sort_col, *secondary],
        ascending=[True] * len(groups) + [ascending] + [objectives[c] == "min" for c in secondary],
        kind="stable",
    )
    return front.reset_index(drop=True)
