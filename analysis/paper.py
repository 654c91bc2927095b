"""Published numbers of Yang et al., "Distilling Knowledge from Graph Convolutional Networks"
(CVPR 2020), to print beside a study's own rows (DESIGN.md section 3).

Scores are in percent (PPI: micro-F1, ModelNet40: overall accuracy). The paper gives no standard
deviations, so paper rows carry no std and no n. Every distillation method trains the same student
network, so student rows carry the student's parameter count (and, on ModelNet40, its latency,
8.72 ms teacher / 3.31 ms student per sample on a GTX 1080Ti).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import pandas as pd

PAPER_SOURCE = "paper (Yang et al. 2020)"
OUR_SOURCE = "this study"
PAPER_DEVICE = "GTX 1080Ti"
#: Test examples behind the paper's scores: PPI's 2 test graphs (5524 nodes) and ModelNet40's
#: official test split (2468 shapes). A study whose ``test_n`` differs ran on other data.
PAPER_TEST_N = {"ppi": 5524, "modelnet40": 2468}
#: The paper rows' source when the study's test set differs from the paper's (e.g. a ModelNet40
#: subset) and when the study logged no ``test_n`` to check it by.
PAPER_OTHER_DATA = f"{PAPER_SOURCE}, other data"
PAPER_UNCHECKED = f"{PAPER_SOURCE}, data not checked"


@dataclass(frozen=True)
class PaperRow:
    """One published row. ``score`` is None where the paper reports none (``note`` says why)."""

    dataset: str
    method: str
    score: float | None
    num_params: float | None = None
    latency_ms_p50: float | None = None
    kernel: str | None = None
    note: str = ""


class _Size(TypedDict, total=False):
    """The model-size fields of a :class:`PaperRow`, shared by the rows of one model."""

    num_params: float
    latency_ms_p50: float


_PPI_TEACHER: _Size = {"num_params": 3.64e6}
_PPI_STUDENT: _Size = {"num_params": 0.16e6}
_MN_TEACHER: _Size = {"num_params": 1.81e6, "latency_ms_p50": 8.72}
_MN_STUDENT: _Size = {"num_params": 0.10e6, "latency_ms_p50": 3.31}

METHOD_ROWS: tuple[PaperRow, ...] = (
    PaperRow("ppi", "teacher", 97.6, **_PPI_TEACHER),
    PaperRow("ppi", "none", 95.7, **_PPI_STUDENT),
    PaperRow("ppi", "kd", None, **_PPI_STUDENT, note="inapplicable (multi-label)"),
    PaperRow("ppi", "fitnet", 95.6, **_PPI_STUDENT),
    PaperRow("ppi", "at", 95.4, **_PPI_STUDENT),
    PaperRow("ppi", "lsp", 96.1, **_PPI_STUDENT),
    PaperRow("modelnet40", "teacher", 92.4, **_MN_TEACHER),
    PaperRow("modelnet40", "none", 91.2, **_MN_STUDENT),
    PaperRow("modelnet40", "kd", 91.6, **_MN_STUDENT),
    PaperRow("modelnet40", "fitnet", 91.1, **_MN_STUDENT),
    PaperRow("modelnet40", "at", 91.6, **_MN_STUDENT),
    PaperRow("modelnet40", "lsp", 91.9, **_MN_STUDENT),
)

KERNEL_ROWS: tuple[PaperRow, ...] = tuple(
    PaperRow("modelnet40", "lsp", score, **_MN_STUDENT, kernel=kernel)
    for kernel, score in (("l2", 91.4), ("poly", 91.7), ("rbf", 91.9), ("linear", 91.5))
)


def canonical_dataset(name: object) -> str:
    """``"ModelNet-40"`` -> ``"modelnet40"``: how dataset names are matched with the paper's."""
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def paper_source(dataset: object, test_n: float | None) -> tuple[str, str]:
    """(source, note) of the paper's rows for a study dataset whose test set has ``test_n``
    examples: :data:`PAPER_SOURCE` when it is the paper's, :data:`PAPER_OTHER_DATA` when it
    differs, :data:`PAPER_UNCHECKED` when ``test_n`` is unknown (NaN or None)."""
    paper_n = PAPER_TEST_N.get(canonical_dataset(dataset))
    if paper_n is None or test_n is None or not np.isfinite(float(test_n)):
        return PAPER_UNCHECKED, "the study logged no test_n: its data/split may differ"
    if int(round(float(test_n))) == paper_n:
        return PAPER_SOURCE, ""
    return PAPER_OTHER_DATA, f"paper: {paper_n} test examples; this study: {int(float(test_n))}"


def paper_frame(
    rows: Iterable[PaperRow],
    datasets: Iterable[object],
    test_n: Mapping[object, float] | None = None,
) -> pd.DataFrame:
    """Paper rows for the given datasets only, in the columns of :mod:`analysis.ablation` tables.

    Args:
        rows: :data:`METHOD_ROWS` or :data:`KERNEL_ROWS`.
        datasets: The study's dataset names (matched by :func:`canonical_dataset`); each paper
            row takes the study's spelling of its dataset.
        test_n: Study dataset -> its number of test examples (metric ``test_n``); labels the
            rows by :func:`paper_source` (default: unknown, "data not checked").

    Returns:
        Columns ``source``, ``dataset``, ``method``, ``lsp.kernel`` (kernel rows only), ``n``
        (NA), ``test_score_mean`` (percent), ``test_score_std`` (NaN), ``num_params_mean``,
        ``latency_ms_p50_mean``, ``device``, ``note``.
    """
    spelled = {canonical_dataset(d): d for d in datasets}
    rows = [r for r in rows if r.dataset in spelled]
    with_kernel = any(r.kernel is not None for r in rows)
    data: dict[str, list] = {
        "source": [PAPER_SOURCE] * len(rows),
        "dataset": [spelled[r.dataset] for r in rows],
        "method": [r.method for r in rows],
    }
    if with_kernel:
        data["lsp.kernel"] = [r.kernel for r in rows]

    def num(values: list) -> pd.Series:
        return pd.Series([np.nan if v is None else float(v) for v in values], dtype="float64")

    frame = pd.DataFrame(data)
    frame["n"] = pd.Series([pd.NA] * len(rows), dtype="Int64")
    frame["test_score_mean"] = num([r.score for r in rows])
    frame["test_score_std"] = num([None] * len(rows))
    frame["num_params_mean"] = num([r.num_params for r in rows])
    frame["latency_ms_p50_mean"] = num([r.latency_ms_p50 for r in rows])
    frame["device"] = pd.Series(
        [PAPER_DEVICE if r.latency_ms_p50 is not None else None for r in rows], dtype="object"
    )
    labels = {d: paper_source(d, (test_n or {}).get(d)) for d in spelled.values()}
    frame["source"] = pd.Series([labels[spelled[r.dataset]][0] for r in rows], dtype="object")
    notes = ["; ".join(x for x in (r.note, labels[spelled[r.dataset]][1]) if x) for r in rows]
    frame["note"] = pd.Series(notes, dtype="object")
    return frame
