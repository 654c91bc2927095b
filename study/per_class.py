"""Per-class figures of a classification split: precision, recall and F1 of every class (every
label of a multi-label task), their macro-F1 and the worst class's recall, so that a study can
show whether distillation helps the frequent classes and hurts the rare ones ("the tail").

Definitions are scikit-learn's ``classification_report`` (``zero_division=0``): for class ``c``
with ``tp``, ``fp``, ``fn`` counted over the split, precision ``tp / (tp + fp)``, recall
``tp / (tp + fn)``, F1 ``2 tp / (2 tp + fp + fn)``, each 0 where its denominator is 0; the
support is the number of examples of class ``c`` (positives of label ``c``). Macro-F1 averages
F1 over the classes that occur in the split or in the predictions (scikit-learn's label set);
the worst-class recall is the minimum recall over the classes with support. Point clouds' mean
class accuracy is the mean recall over the classes with support.

The per-class table is what a trial logs as an MLflow table artifact (:data:`TABLE_ARTIFACT`),
one row per ``(split, class)``, with the class's training frequency beside it so a report can
order classes from head to tail (:func:`class_rows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from study.data.base import NodeTask, PointCloudTask, Task
from study.tracking import CLASS_TABLE_ARTIFACT

#: Where a trial's per-class table lies among its artifacts (``MlflowClient.log_table``).
TABLE_ARTIFACT = CLASS_TABLE_ARTIFACT
#: The table's columns, in order.
COLUMNS: tuple[str, ...] = (
    "split",
    "class",
    "class_name",
    "train_count",
    "support",
    "precision",
    "recall",
    "f1",
)
#: The summary figures per split (``test_macro_f1``, ``val_worst_class_recall``, ...).
SUMMARY_KEYS: tuple[str, ...] = ("macro_f1", "worst_class_recall")


def class_counts(pred: Tensor, truth: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(tp, fp, fn)`` per class, each ``[C]`` long.

    Args:
        pred: ``[N, C]`` bool, the predicted classes (one-hot for single-label).
        truth: ``[N, C]`` bool, the true classes.
    """
    tp = (pred & truth).sum(0)
    fp = (pred & ~truth).sum(0)
    fn = (~pred & truth).sum(0)
    return tp, fp, fn


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))


def class_report(pred: Tensor, truth: Tensor) -> dict[str, Tensor]:
    """Per-class precision, recall, F1 and support (see the module docstring).

    Args:
        pred: ``[N, C]`` bool predictions (:func:`one_hot_pair` for class ids).
        truth: ``[N, C]`` bool true classes.

    Returns:
        ``{"precision", "recall", "f1": [C] double, "support": [C] long, "present": [C] bool}``;
        ``present``: the class occurs in ``truth`` or ``pred`` (scikit-learn's label set).
    """
    tp, fp, fn = class_counts(pred, truth)
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "support": tp + fn,
        "present": (tp + fp + fn) > 0,
    }


def one_hot_pair(pred: Tensor, y: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """``[N]`` predicted and true class ids as ``[N, C]`` bool one-hots."""
    eye = torch.eye(num_classes, dtype=torch.bool, device=y.device)
    return eye[pred], eye[y]


def summary(report: dict[str, Tensor]) -> dict[str, float]:
    """``macro_f1`` (mean F1 over present classes) and ``worst_class_recall`` (min recall over
    classes with support); NaN where no class qualifies."""
    present, has = report["present"], report["support"] > 0
    macro = float(report["f1"][present].mean()) if bool(present.any()) else float("nan")
    worst = float(report["recall"][has].min()) if bool(has.any()) else float("nan")
    return {"macro_f1": macro, "worst_class_recall": worst}


def class_rows(
    split: str,
    report: dict[str, Tensor],
    train_count: Tensor,
    names: Sequence[str] = (),
) -> list[list[Any]]:
    """Rows of :data:`COLUMNS` for one split, one per class with support or training examples."""
    rows = []
    for c in range(len(train_count)):
        support, seen = int(report["support"][c]), int(train_count[c])
        if support == 0 and seen == 0:
            continue
        rows.append(
            [
                split,
                c,
                names[c] if c < len(names) else str(c),
                seen,
                support,
                float(report["precision"][c]),
                float(report["recall"][c]),
                float(report["f1"][c]),
            ]
        )
    return rows


# ------------------------------------------------------------------- a model on a task's splits


def predictions(task: Task, logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``(pred, truth)`` as ``[N, C]`` bool from :func:`study.train.split_logits`' output: the
    arg-max class (a logit above 0 per label, multi-label)."""
    if isinstance(task, NodeTask) and task.multilabel:
        return logits > 0, y.bool()
    return one_hot_pair(logits.argmax(-1), y, task.num_classes)


def train_counts(task: Task) -> Tensor:
    """``[C]`` training examples (positives, multi-label) of every class."""
    if isinstance(task, PointCloudTask):
        return torch.bincount(task.train.labels, minlength=task.num_classes)
    assert isinstance(task, NodeTask)
    total = torch.zeros(task.num_classes, dtype=torch.long)
    for graph in task.train:
        y = graph.y[graph.mask].cpu()
        total += y.long().sum(0) if task.multilabel else torch.bincount(y, minlength=len(total))
    return total


def per_class_figures(
    model: nn.Module,
    task: Task,
    device: str = "cpu",
    splits: Sequence[str] = ("val", "test"),
    *,
    chunk_nodes: int | None = None,
) -> tuple[dict[str, list[Any]], dict[str, float]]:
    """The per-class table of ``model`` on ``splits``, the summary figures, and the validation
    AUROC (the test split's is among the test metrics already).

    Returns:
        ``({column: values}, {"val_macro_f1": ..., "test_worst_class_recall": ...,
        "val_auroc": ...})``: the table as ``MlflowClient.log_table`` takes it (:data:`COLUMNS`),
        and :func:`summary` per split. One forward per split (layer-wise in chunks of
        ``chunk_nodes`` nodes when given, as a mini-batch study evaluates).
    """
    from study.train import split_logits, split_scores

    counts = train_counts(task)
    names = list(getattr(task, "class_names", []) or [])
    rows: list[list[Any]] = []
    figures: dict[str, float] = {}
    for split in splits:
        logits, y = split_logits(model, task, split, device, chunk_nodes=chunk_nodes)
        report = class_report(*predictions(task, logits, y))
        rows += class_rows(split, report, counts, names)
        figures.update({f"{split}_{k}": v for k, v in summary(report).items()})
        if split == "val":  # the test split's AUROC is among the test metrics already
            auroc = split_scores(task, logits, y).get("auroc")
            if auroc is not None:
                figures["val_auroc"] = float(auroc)
    table = {col: [row[i] for row in rows] for i, col in enumerate(COLUMNS)}
    return table, figures
