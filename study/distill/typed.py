"""Type-aware distillation terms for typed (heterogeneous) graphs (DESIGN.md section 6).

A typed graph (:mod:`study.data.hetero`) carries ``node_type [N]`` and ``edge_type [E]``.
Mixing types in one distribution or one normalisation is the "collapsing of type information"
to avoid, so:

- LSP: local structures are distributions over the incoming edges of one relation only,
  ``LS^r_ij = softmax_{j' -> i, type r} K(z_i, z_j)``; the loss is
  ``sum_r w_r * mean_{i with an r-edge} KL(LS^r_i,s || LS^r_i,t)``, ``w_r = 1 / R`` (uniform)
  or the study file's ``lsp.relation_weights``;
- edge_attention: each side's attention (heads averaged first, unless mapped one to one)
  renormalised over the incoming edges of one relation (the distribution given the relation),
  then ``sum_r w_r * KL`` as for LSP; a layer's own self-loops belong to no relation and drop
  out;
- FitNet and AT: the per-type loss (AT's maps normalised over the nodes of one type), averaged
  over the node types present;
- KD: the target type's nodes only (the others have no classes).

Every function is a pure function of tensors; the homogeneous ones of the neighbouring modules
are reused, never rewritten.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from study.data.base import is_typed
from study.distill.edge_attention import edge_attention_loss, mean_heads
from study.distill.kernels import edge_kernel
from study.distill.lsp import _check_edge_index, lsp_loss, scatter_log_softmax
from study.errors import UserInputError
from study.models.attention import scatter_log_softmax_2d


@dataclass(frozen=True)
class GraphTypes:
    """The types of a typed graph as the losses read them.

    Attributes:
        node_type: ``[N]`` long, in ``0..num_node_types-1``.
        edge_type: ``[E]`` long, in ``0..num_relations-1``, aligned with ``edge_index``.
        num_node_types: ``T``.
        num_relations: ``R``.
        target_type: the node type that is classified.
        relation_names: ``src__rel__dst`` per relation, as study files name them.
    """

    node_type: Tensor
    edge_type: Tensor
    num_node_types: int
    num_relations: int
    target_type: int
    relation_names: tuple[str, ...] = ()


def graph_types(graph: Any) -> GraphTypes | None:
    """:class:`GraphTypes` of a typed ``Data`` (``edge_type``, ``node_type``, ``*_names``,
    ``target_type``), ``None`` for a homogeneous graph."""
    if not is_typed(graph):
        return None
    return GraphTypes(
        node_type=graph.node_type,
        edge_type=graph.edge_type,
        num_node_types=len(graph.node_type_names),
        num_relations=len(graph.edge_type_names),
        target_type=int(graph.target_type),
        relation_names=tuple("__".join(t) for t in graph.edge_type_names),
    )


def relation_weight_vector(weights: Mapping[str, float], names: Sequence[str]) -> list[float]:
    """``R`` weights from a study file's ``{relation: weight}``: a relation is named
    ``src__rel__dst`` or, when no other relation has that edge type, ``rel``; relations left
    out weigh 0.

    Raises:
        UserInputError: a name that is no relation (the valid names listed).
    """
    bare = [n.split("__")[1] if n.count("__") == 2 else n for n in names]
    out = [0.0] * len(names)
    for key, value in weights.items():
        if key in names:
            out[list(names).index(key)] = float(value)
        elif bare.count(key) == 1:
            out[bare.index(key)] = float(value)
        else:
            unique = [b for b in bare if bare.count(b) == 1]
            raise UserInputError(
                f"unknown relation {key!r} (valid: {', '.join([*names, *unique])})",
                key="relation_weights",
            )
    return out


def relation_local_structure(
    z: Tensor,
    edge_index: Tensor,
    edge_type: Tensor,
    num_relations: int,
    *,
    kernel: str = "rbf",
    num_nodes: int | None = None,
    **kernel_params: float,
) -> Tensor:
    """Per-edge ``log LS^r_ij``: each target's distribution over its incoming edges of the
    edge's own relation, in one pass (groups ``target * R + relation``).

    Args:
        z: ``[N, F]`` node features.
        edge_index: ``[2, E]`` edges ``j -> i``.
        edge_type: ``[E]`` relation of each edge.
        num_relations: ``R``.
        kernel, **kernel_params: as :func:`study.distill.lsp.local_structure`.

    Returns:
        ``[E]`` log-probabilities in the order of ``edge_index``; within each (target, relation)
        with edges, ``exp`` of them sums to 1.
    """
    _check_edge_index(edge_index)
    n = z.size(0) if num_nodes is None else num_nodes
    k = edge_kernel(z, edge_index, kernel, **kernel_params)
    return scatter_log_softmax(k, edge_index[1] * num_relations + edge_type, n * num_relations)


def relation_lsp_loss(
    z_s: Tensor,
    z_t: Tensor | None,
    edge_index: Tensor,
    edge_type: Tensor,
    num_relations: int,
    *,
    weights: Sequence[float] | None = None,
    teacher_log_ls: Tensor | None = None,
    **lsp_kwargs: Any,
) -> Tensor:
    """Type-aware LSP: ``sum_r w_r * lsp_loss`` on relation ``r``'s edges alone.

    Args:
        z_s, z_t: ``[N, F_s]``, ``[N, F_t]`` as :func:`study.distill.lsp.lsp_loss`.
        edge_index: ``[2, E]`` edges ``j -> i``.
        edge_type: ``[E]`` relation of each edge.
        num_relations: ``R``.
        weights: ``R`` weights ``w_r``; ``None``: uniform ``1 / R``.
        teacher_log_ls: ``[E]`` :func:`relation_local_structure` of the teacher, precomputed.
        **lsp_kwargs: ``kernel``, ``direction``, ``num_nodes`` and kernel parameters.

    Returns:
        A scalar; a relation without edges adds nothing.
    """
    w = [1.0 / num_relations] * num_relations if weights is None else list(weights)
    if len(w) != num_relations:
        raise ValueError(f"relation_lsp_loss: {len(w)} weights for {num_relations} relations")
    total = z_s.sum() * 0.0  # attached to the student's graph even with no edge at all
    for r in range(num_relations):
        keep = edge_type == r
        if w[r] == 0.0 or not bool(keep.any()):
            continue
        log_t = None if teacher_log_ls is None else teacher_log_ls[keep]
        term = lsp_loss(z_s, z_t, edge_index[:, keep], teacher_log_ls=log_t, **lsp_kwargs)
        total = total + w[r] * term
    return total


def relation_attention_loss(
    log_s: Tensor,
    log_t: Tensor,
    edge_index: Tensor,
    edge_type: Tensor,
    num_relations: int,
    *,
    weights: Sequence[float] | None = None,
    num_nodes: int | None = None,
    **attention_kwargs: Any,
) -> Tensor:
    """Type-aware edge-attention distillation: ``sum_r w_r * edge_attention_loss`` on relation
    ``r``'s edges alone, each side's attention renormalised over each target's ``r``-edges.

    Args:
        log_s: ``[E, H_s]`` the student's log-attention on ``edge_index`` (a distribution over
            each target's incoming edges of every relation, as a graph-attention layer gives).
        log_t: ``[E, H_t]`` the teacher's on the same edges.
        edge_index: ``[2, E]`` edges ``j -> i``.
        edge_type: ``[E]`` relation of each edge.
        num_relations: ``R``.
        weights: ``R`` weights ``w_r``; ``None``: uniform ``1 / R``.
        num_nodes: ``N``.
        **attention_kwargs: ``direction`` and ``heads`` of
            :func:`study.distill.edge_attention.edge_attention_loss`.

    Returns:
        A scalar; a relation without edges adds nothing.
    """
    w = [1.0 / num_relations] * num_relations if weights is None else list(weights)
    if len(w) != num_relations:
        raise ValueError(f"relation_attention_loss: {len(w)} weights for {num_relations} relations")
    n = int(edge_index.max()) + 1 if num_nodes is None else num_nodes
    if attention_kwargs.get("heads", "mean") == "mean":
        # The head-averaged distribution is the one conditioned on the relation (averaging
        # per-head conditionals would weigh a head that barely attends to r like the others).
        log_s, log_t = mean_heads(log_s), mean_heads(log_t)
    total = log_s.sum() * 0.0  # attached to the student's graph even with no edge at all
    for r in range(num_relations):
        keep = edge_type == r
        if w[r] == 0.0 or not bool(keep.any()):
            continue
        edges = edge_index[:, keep]
        # Conditioning on the relation: the attention renormalised over the target's r-edges.
        cond_s = scatter_log_softmax_2d(log_s[keep], edges[1], n)
        cond_t = scatter_log_softmax_2d(log_t[keep], edges[1], n)
        term = edge_attention_loss(cond_s, cond_t, edges, num_nodes=n, **attention_kwargs)
        total = total + w[r] * term
    return total


def per_type_mean(
    loss: Callable[[Tensor, Tensor], Tensor],
    z_s: Tensor,
    z_t: Tensor,
    node_type: Tensor,
    num_node_types: int,
) -> Tensor:
    """``mean_t loss(z_s[type t], z_t[type t])`` over the node types that have nodes."""
    terms = []
    for t in range(num_node_types):
        keep = node_type == t
        if bool(keep.any()):
            terms.append(loss(z_s[keep], z_t[keep]))
    if not terms:
        return z_s.sum() * 0.0
    return torch.stack(terms).mean()
