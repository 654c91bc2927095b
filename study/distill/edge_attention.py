"""Edge-attention distillation: the student learns which neighbours the teacher attends to.

For a target node ``i`` with incoming edges ``(j -> i)``, a graph-attention layer's attention
``alpha_ij^h`` (head ``h``) is a distribution over ``j``. Let ``A^t`` and ``A^s`` be the
teacher's and the student's, on the same edges. Heads are either averaged in probability
space (``heads="mean"``: ``A_ij = (1/H) sum_h alpha_ij^h``, in log space
``logsumexp_h log alpha_ij^h - log H``), or mapped (``heads="uniform"``: student head ``h`` of
``H_s`` with teacher head ``round((h + 1) H_t / H_s) - 1``, the rule of
:func:`study.layer_map.uniform_layer_map`, one divergence per student head, averaged). Then

    S_i = KL(A^s_i || A^t_i) = sum_j A^s_ij (log A^s_ij - log A^t_ij)   (direction student_teacher)
    S_i = KL(A^t_i || A^s_i)                                            (direction teacher_student)
    L   = mean of S_i over the targets with at least one incoming edge

computed from log-attention throughout (:mod:`study.models.attention` gives it before the
layer's attention dropout). Layers are paired by ``layer_map`` over attention layers; the term
sums the pairs.

Edges. Both GATs attend over the same graph plus their own self-loops, so the edges coincide and
nothing is realigned. Where they differ (a user model without self-loops, the gradient teacher
below) both distributions are taken on the union of the two edge sets, as LSP does on dynamic
graphs, with two rules: a self-loop only one side has is dropped (it is a layer's own addition,
not an edge of the graph), and an edge one side lacks gets probability ``floor`` on that side,
after which each side is renormalised over the target's edges (a zero would make the KL
infinite).

Teachers without attention (``teacher_source="gradient"``). The teacher's edge importance
``g_ij = |d y_i / d w_ij|``: ``w`` a weight on every edge's message (1 in the teacher's own
forward; PyG's explain masks multiply each ``MessagePassing`` layer's messages by it), ``y_i``
the teacher's largest logit at node ``i`` (its predicted class's). It is normalised over each
target's incoming edges, ``A^t_ij = g_ij / sum_j' g_ij'`` (uniform where every ``g`` is 0),
floored at ``floor`` and renormalised, and it is one distribution for the whole teacher: a map
pairs student attention layers with its single "layer". It is computed once per graph, with
the teacher's other precomputed outputs, by one backward per target node (batched).
"""

from __future__ import annotations

import math
from typing import get_args

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from study.catalogs import Direction
from study.errors import choose
from study.layer_map import uniform_layer_map
from study.models.attention import scatter_log_softmax_2d

_DIRECTIONS: tuple[str, ...] = get_args(Direction)
#: How the heads of the two models are matched.
HEAD_MODES: tuple[str, ...] = ("mean", "uniform")


def _two_d(log_a: Tensor) -> Tensor:
    return log_a.unsqueeze(-1) if log_a.dim() == 1 else log_a


def mean_heads(log_a: Tensor) -> Tensor:
    """``[E, H]`` per-head log-attention -> ``[E, 1]`` log of the head-averaged attention."""
    log_a = _two_d(log_a)
    return torch.logsumexp(log_a, dim=-1, keepdim=True) - math.log(log_a.shape[-1])


def head_pairs(student_heads: int, teacher_heads: int) -> list[int]:
    """The teacher head each student head learns from (``heads="uniform"``)."""
    return [t for _, t in uniform_layer_map(student_heads, teacher_heads)]


def edge_attention_loss(
    log_s: Tensor,
    log_t: Tensor,
    edge_index: Tensor,
    *,
    direction: str = "student_teacher",
    heads: str = "mean",
    num_nodes: int | None = None,
) -> Tensor:
    """Mean over targets of the KL divergence between two attention distributions.

    Args:
        log_s: ``[E, H_s]`` (or ``[E]``) the student's log-attention on ``edge_index``: per head,
            ``exp`` sums to 1 over each target's incoming edges.
        log_t: ``[E, H_t]`` (or ``[E]``) the teacher's, on the same edges.
        edge_index: ``[2, E]`` edges ``j -> i``; row 1 is the target.
        direction: ``"student_teacher"``, ``KL(A^s || A^t)``, or ``"teacher_student"``.
        heads: ``"mean"`` (average each side's heads) or ``"uniform"`` (map student heads to
            teacher heads, see the module docstring).
        num_nodes: ``N``; defaults to the largest target plus one.

    Returns:
        A scalar; 0 (attached to ``log_s``) without edges.
    """
    choose("direction", direction, _DIRECTIONS)
    choose("heads", heads, HEAD_MODES)
    log_s, log_t = _two_d(log_s), _two_d(log_t).to(log_s.dtype)
    if log_s.shape[0] != log_t.shape[0] or log_s.shape[0] != edge_index.shape[1]:
        raise ValueError(
            f"edge_attention_loss: {log_s.shape[0]} student and {log_t.shape[0]} teacher rows "
            f"for {edge_index.shape[1]} edges"
        )
    if log_s.shape[0] == 0:
        return log_s.sum()
    if heads == "mean":
        log_s, log_t = mean_heads(log_s), mean_heads(log_t)
    else:
        log_t = log_t[:, head_pairs(log_s.shape[1], log_t.shape[1])]
    target = edge_index[1]
    n = int(target.max()) + 1 if num_nodes is None else num_nodes
    first, second = (log_s, log_t) if direction == "student_teacher" else (log_t, log_s)
    terms = first.exp() * (first - second)  # [E, H]
    per_node = scatter(terms, target, dim=0, dim_size=n, reduce="sum")  # [N, H]
    has_incoming = torch.zeros(n, dtype=torch.bool, device=target.device)
    has_incoming[target] = True
    return per_node[has_incoming].mean()


# ------------------------------------------------------------------------------ edge sets


def _keys(edge_index: Tensor, num_nodes: int) -> Tensor:
    return edge_index[1] * num_nodes + edge_index[0]  # target-major


def align_attention(
    edges_s: Tensor,
    log_s: Tensor,
    edges_t: Tensor,
    log_t: Tensor,
    num_nodes: int,
    *,
    floor: float = 1e-4,
) -> tuple[Tensor, Tensor, Tensor]:
    """Both sides' log-attention on one edge set (see the module docstring's rules).

    Args:
        edges_s: ``[2, E_s]`` the student's edges, without duplicates.
        log_s: ``[E_s, H_s]`` its log-attention.
        edges_t: ``[2, E_t]`` the teacher's edges, without duplicates.
        log_t: ``[E_t, H_t]`` its log-attention.
        num_nodes: ``N``.
        floor: probability of an edge on the side that lacks it, before renormalising.

    Returns:
        ``(edge_index [2, E_u], log_s [E_u, H_s], log_t [E_u, H_t])``; the inputs themselves
        when the edge sets are equal in the same order.
    """
    log_s, log_t = _two_d(log_s), _two_d(log_t)
    if edges_s.shape == edges_t.shape and torch.equal(edges_s, edges_t):
        return edges_s, log_s, log_t
    key_s, key_t = _keys(edges_s, num_nodes), _keys(edges_t, num_nodes)
    loop_s, loop_t = edges_s[0] == edges_s[1], edges_t[0] == edges_t[1]
    keep_s = ~loop_s | torch.isin(key_s, key_t[loop_t])
    keep_t = ~loop_t | torch.isin(key_t, key_s[loop_s])
    union = torch.unique(torch.cat([key_s[keep_s], key_t[keep_t]]))  # sorted
    edge_index = torch.stack([union % num_nodes, union // num_nodes])
    target = edge_index[1]

    def place(keys: Tensor, keep: Tensor, values: Tensor) -> Tensor:
        base = values.new_full((len(union), values.shape[1]), math.log(floor))
        base = base.index_put((torch.searchsorted(union, keys[keep]),), values[keep])
        return scatter_log_softmax_2d(base, target, num_nodes)

    return edge_index, place(key_s, keep_s, log_s), place(key_t, keep_t, log_t)


def to_graph_layout(
    edge_index: Tensor, num_nodes: int, att_edges: Tensor, log_att: Tensor
) -> tuple[Tensor, Tensor]:
    """A layer's log-attention laid out on a graph's own edges and one self-loop per node, so
    that precomputed values concatenate over the graphs of a batch.

    Args:
        edge_index: ``[2, E]`` the graph's edges (as the data holds them).
        num_nodes: ``N``.
        att_edges: ``[2, E_a]`` the edges the layer attended over.
        log_att: ``[E_a, H]`` its log-attention.

    Returns:
        ``(per_edge [E, H], per_node [N, H])``: the value on each graph edge and on each node's
        self-loop; NaN where the layer has no such edge (and on the graph's own self-loops,
        which ``per_node`` holds).
    """
    log_att = _two_d(log_att)
    keys = _keys(att_edges, num_nodes)
    order = torch.argsort(keys)
    sorted_keys = keys[order]

    def lookup(query: Tensor) -> Tensor:
        out = log_att.new_full((len(query), log_att.shape[1]), float("nan"))
        if len(keys) == 0:
            return out
        pos = torch.searchsorted(sorted_keys, query).clamp(max=len(keys) - 1)
        found = sorted_keys[pos] == query
        out[found] = log_att[order[pos[found]]]
        return out

    per_edge = lookup(_keys(edge_index, num_nodes))
    per_edge[edge_index[0] == edge_index[1]] = float("nan")
    loops = torch.arange(num_nodes, device=edge_index.device)
    per_node = lookup(loops * num_nodes + loops)
    return per_edge, per_node


def from_graph_layout(
    edge_index: Tensor, num_nodes: int, per_edge: Tensor, per_node: Tensor
) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`to_graph_layout`: ``(edges [2, E'], log_att [E', H])`` without the NaN
    rows, the graph's non-loop edges first, then the self-loops (a GAT layer's own order)."""
    loops = torch.arange(num_nodes, device=edge_index.device)
    edges = torch.cat([edge_index, torch.stack([loops, loops])], dim=1)
    values = torch.cat([per_edge, per_node])
    keep = ~torch.isnan(values).any(dim=-1)
    return edges[:, keep], values[keep]


# ------------------------------------------------------------------ gradient-based importance


def _predicted_logit(model: nn.Module, x: Tensor, edge_index: Tensor) -> Tensor:
    out = model(x, edge_index)
    logits = out.logits if hasattr(out, "logits") else out
    return logits.max(dim=-1).values  # [N]


def gradient_edge_importance(
    model: nn.Module, x: Tensor, edge_index: Tensor, *, batch: int = 64
) -> Tensor:
    """``g_e = |d y_i / d w_e|`` for every edge ``e = (j -> i)`` (see the module docstring).

    Args:
        model: the teacher (a module whose message-passing layers are PyG ``MessagePassing``),
            in eval mode; returns a ``ModelOutput`` or logits.
        x: ``[N, F]`` node features.
        edge_index: ``[2, E]`` edges ``j -> i``.
        batch: target nodes per batched backward.

    Returns:
        ``[E]`` non-negative importances (not normalised: :func:`importance_log_attention`).
    """
    from torch_geometric.explain.algorithm.utils import clear_masks, set_masks

    n, num_edges = x.shape[0], edge_index.shape[1]
    weight = torch.ones(num_edges, dtype=x.dtype, device=x.device, requires_grad=True)
    set_masks(model, weight, edge_index, apply_sigmoid=False)
    try:
        with torch.enable_grad():
            y = _predicted_logit(model, x, edge_index)
            target = edge_index[1]
            out = torch.zeros(num_edges, dtype=y.dtype, device=y.device)
            for start in range(0, n, batch):
                size = min(batch, n - start)  # one-hot rows of this batch's nodes, [B, N]
                rows = torch.zeros(size, n, dtype=y.dtype, device=y.device)
                rows[torch.arange(size), torch.arange(start, start + size)] = 1.0
                (grads,) = torch.autograd.grad(
                    y, weight, grad_outputs=rows, retain_graph=True, is_grads_batched=True
                )  # [B, E]: d y_k / d w_e for the batch's nodes k
                mine = (target >= start) & (target < start + len(rows))
                out[mine] = grads[target[mine] - start, mine.nonzero().squeeze(-1)].abs()
    finally:
        clear_masks(model)
    return out.detach()


def importance_log_attention(
    importance: Tensor, edge_index: Tensor, num_nodes: int, *, floor: float = 1e-4
) -> Tensor:
    """``[E]`` importances -> ``[E, 1]`` log-distribution over each target's incoming edges:
    ``g / sum g`` (uniform where the sum is 0), floored at ``floor``, renormalised."""
    target = edge_index[1]
    total = scatter(importance, target, dim=0, dim_size=num_nodes, reduce="sum")[target]
    degree = scatter(torch.ones_like(importance), target, dim=0, dim_size=num_nodes)[target]
    share = torch.where(total > 0, importance / total.clamp(min=1e-300), 1.0 / degree)
    return scatter_log_softmax_2d(share.clamp(min=floor).log().unsqueeze(-1), target, num_nodes)
