"""Scores beside the headline metric: AUROC for binary and multi-label tasks."""

from __future__ import annotations

import torch
from torch import Tensor


def binary_auroc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve of one binary task (Mann-Whitney U, ties counted as one half).

    Args:
        scores: ``[N]`` any monotone score of the positive class (logit or probability).
        labels: ``[N]`` 0/1 or bool.

    Returns:
        AUROC in [0, 1], or NaN when only one class is present.
    """
    labels = labels.bool().flatten()
    scores = scores.detach().double().flatten()
    n_pos = int(labels.sum())
    n_neg = labels.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Average ranks of tied scores, from the sorted order and each value's first/last position.
    sorted_scores, order = torch.sort(scores)
    _, inverse, counts = torch.unique_consecutive(
        sorted_scores, return_inverse=True, return_counts=True
    )
    ends = torch.cumsum(counts, 0).double()
    avg_rank_of_value = ends - (counts.double() - 1) / 2
    ranks = torch.empty_like(scores)
    ranks[order] = avg_rank_of_value[inverse]
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def macro_auroc(scores: Tensor, labels: Tensor) -> float:
    """Mean AUROC over the columns of ``[N, L]`` scores and 0/1 labels that hold both classes."""
    values = [binary_auroc(scores[:, j], labels[:, j]) for j in range(labels.shape[1])]
    finite = [v for v in values if v == v]
    return float(sum(finite) / len(finite)) if finite else float("nan")
