"""Classification scores of node tasks: the headline a study optimises (``dataset.metric``) and
AUROC beside it. AUROC is scikit-learn's ``roc_auc_score`` (ties count one half), NaN where a
label has only one class.

Single-label: ``accuracy``; ``macro_f1`` (F1 per class, averaged); ``micro_f1`` (equal to
accuracy for single-label); ``auroc`` (binary: of the positive class's margin; more classes:
one-vs-rest macro AUROC of the softmax probabilities). Multi-label (0/1 targets, a logit per
label, predicted positive above 0): ``micro_f1`` (pooled over labels, PPI's metric), ``macro_f1``
(per label, averaged), ``accuracy`` (every label of a node right), ``auroc`` (macro over labels).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: The headline a node task uses when the study file names none.
DEFAULT_SINGLE_LABEL = "accuracy"
DEFAULT_MULTILABEL = "micro_f1"


def binary_auroc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve of one binary task.

    Args:
        scores: ``[N]`` any monotone score of the positive class (logit or probability).
        labels: ``[N]`` 0/1 or bool.

    Returns:
        AUROC in [0, 1], or NaN when only one class is present (scikit-learn raises there).
    """
    from sklearn.metrics import roc_auc_score  # imported on use: it takes a second to load

    y = labels.detach().bool().flatten().cpu().numpy()
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, scores.detach().double().flatten().cpu().numpy()))


def macro_auroc(scores: Tensor, labels: Tensor) -> float:
    """Mean AUROC over the columns of ``[N, L]`` scores and 0/1 labels that hold both classes."""
    values = [binary_auroc(scores[:, j], labels[:, j]) for j in range(labels.shape[1])]
    finite = [v for v in values if v == v]
    return float(sum(finite) / len(finite)) if finite else float("nan")


def multiclass_auroc(logits: Tensor, y: Tensor) -> float:
    """One-vs-rest macro AUROC of ``[N, C]`` logits against ``[N]`` labels, over the classes
    present in ``y`` that are not all of it."""
    probs = torch.softmax(logits.detach().double(), dim=-1)
    onehot = torch.nn.functional.one_hot(y, logits.shape[-1]).bool()
    return macro_auroc(probs, onehot)


def _f1(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
    tp, fp, fn = tp.double(), fp.double(), fn.double()
    return 2 * tp / (2 * tp + fp + fn).clamp(min=1)


def node_scores(
    logits: Tensor, y: Tensor, *, multilabel: bool, metric: str, with_auroc: bool = True
) -> dict[str, float]:
    """Scores of ``[N, C]`` logits against ``y`` (``[N]`` class ids or ``[N, C]`` 0/1).

    Returns ``{"score": <metric>, <metric>: ..., ...}``: the headline and the split's standard
    figure (accuracy single-label, micro-F1 multi-label), plus ``auroc`` when ``with_auroc``
    (the per-epoch validation leaves it out unless it is the headline: PPI's 121-label AUROC
    costs 0.4 s a call). Fractions in [0, 1]; NaN for an empty split.
    """
    if len(y) == 0:
        return {"score": float("nan"), metric: float("nan")}
    if multilabel:
        pred, truth = logits > 0, y.bool()
        tp = (pred & truth).sum(0).double()
        fp = (pred & ~truth).sum(0).double()
        fn = (~pred & truth).sum(0).double()
        figures = {"micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum()))}
        if metric == "macro_f1":
            figures["macro_f1"] = float(_f1(tp, fp, fn).mean())
        if metric == "accuracy":
            figures["accuracy"] = float((pred == truth).all(dim=1).double().mean())
        if with_auroc or metric == "auroc":
            figures["auroc"] = macro_auroc(logits, truth)
    else:
        pred = logits.argmax(-1)
        accuracy = float((pred == y).double().mean())
        figures = {"accuracy": accuracy}
        if metric == "micro_f1":
            figures["micro_f1"] = accuracy
        if metric == "macro_f1":
            classes = torch.unique(torch.cat([y, pred]))
            per_class = [
                _f1(
                    ((pred == c) & (y == c)).sum(),
                    ((pred == c) & (y != c)).sum(),
                    ((pred != c) & (y == c)).sum(),
                )
                for c in classes
            ]
            figures["macro_f1"] = float(torch.stack(per_class).double().mean())
        if with_auroc or metric == "auroc":
            if logits.shape[-1] == 2:  # binary: AUROC of the positive class's margin
                figures["auroc"] = binary_auroc(logits[:, 1] - logits[:, 0], y == 1)
            else:
                figures["auroc"] = multiclass_auroc(logits, y)
    return {"score": figures[metric], **figures}
