"""k-nearest-neighbour graphs of batched point clouds in plain torch.

PyG 2.8's ``knn_graph`` needs ``pyg-lib`` (not on PyPI), so the graphs DGCNN aggregates over are
built here the way DGCNN's own code does: squared distances from one batched matrix product,
then ``topk`` per cloud.
"""

from __future__ import annotations

import torch
from torch import Tensor

from study.errors import UserInputError


def pairwise_sq_dist(x: Tensor) -> Tensor:
    """Squared Euclidean distances between the points of each cloud.

    Args:
        x: ``[B, P, F]`` point features.

    Returns:
        ``[B, P, P]`` distances, clamped at 0 (the expansion can round slightly below it).
    """
    sq = (x * x).sum(dim=-1)
    # ||a||^2 - 2 a.b + ||b||^2 is one batched matmul, which is what makes this fast on GPUs.
    dist = sq.unsqueeze(2) - 2.0 * torch.bmm(x, x.transpose(1, 2)) + sq.unsqueeze(1)
    return dist.clamp_min_(0.0)


def knn_indices(x: Tensor, k: int, *, include_self: bool = True) -> Tensor:
    """The ``k`` nearest neighbours of every point, within its own cloud, nearest first.

    Args:
        x: ``[B, P, F]`` point features (coordinates or any layer's features).
        k: neighbours per point; ``1 <= k <= P`` (``P - 1`` without self).
        include_self: count the point itself as its own nearest neighbour (distance 0), as
            DGCNN's code does. It is then forced to be first even when duplicate points tie
            with it, so the graph is well defined.

    Returns:
        ``[B, P, k]`` long indices into the cloud's ``P`` points.
    """
    if x.dim() != 3:
        raise UserInputError(f"knn: expected x of shape [B, P, F], got {tuple(x.shape)}")
    _, num_points, _ = x.shape
    max_k = num_points if include_self else num_points - 1
    if not 1 <= k <= max_k:
        raise UserInputError(
            f"knn: k={k} is out of range for clouds of {num_points} points "
            f"(valid: 1..{max_k}, include_self={include_self})"
        )
    with torch.no_grad():  # indices carry no gradient; skip building a graph for the distances
        dist = pairwise_sq_dist(x.detach())
        diag = torch.arange(num_points, device=x.device)
        dist[:, diag, diag] = -1.0 if include_self else float("inf")
        return dist.topk(k, dim=-1, largest=False, sorted=True).indices


def knn_to_edge_index(idx: Tensor) -> Tensor:
    """Flatten per-cloud neighbour indices to one ``[2, B*P*k]`` edge index.

    Args:
        idx: ``[B, P, k]`` neighbour indices from :func:`knn_indices`.

    Returns:
        ``[2, B*P*k]`` long: row 0 the neighbour ``j`` (source), row 1 the centre ``i``
        (target), both flat as ``b * P + p``. Edges are grouped by centre, in centre order,
        nearest neighbour first.
    """
    batch, num_points, k = idx.shape
    offset = (torch.arange(batch, device=idx.device) * num_points).view(batch, 1, 1)
    source = (idx + offset).reshape(-1)
    target = torch.arange(batch * num_points, device=idx.device).repeat_interleave(k)
    return torch.stack([source, target], dim=0)


def knn_graph_dense(x: Tensor, k: int, *, include_self: bool = True) -> Tensor:
    """The kNN graph of a batch of equal-sized point clouds, as a flat PyG edge index.

    Edge ``j -> i`` means ``j`` is one of the ``k`` nearest neighbours of ``i`` in the same
    cloud. The default ``include_self=True`` follows DGCNN's code, where each point is its own
    nearest neighbour (distance 0); pass ``False`` for the ``k`` nearest other points.

    Args:
        x: ``[B, P, F]`` point features.
        k: neighbours per point.
        include_self: see :func:`knn_indices`.

    Returns:
        ``[2, B*P*k]`` long edge index (source row 0, target row 1), flat indices ``b * P + p``.
    """
    return knn_to_edge_index(knn_indices(x, k, include_self=include_self))
