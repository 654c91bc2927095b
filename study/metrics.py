"""Scores beside the headline metric: AUROC for binary and multi-label tasks (scikit-learn's
``roc_auc_score``, ties counted as one half), NaN where a label has only one class."""

from __future__ import annotations

from torch import Tensor


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
