"""Local structure preserving distillation (LSP).

Yang et al., "Distilling Knowledge from Graph Convolutional Networks", CVPR 2020 (DESIGN.md
section 2). For each target node ``i`` the local structure is a distribution over its incoming
edges ``j -> i``:

    LS_ij = exp(K(z_i, z_j)) / sum_{j' -> i} exp(K(z_i, z_j'))

computed here in log space with a per-target scatter log-sum-exp, so that linear and polynomial
kernels on raw features (values of 1e6 and more) neither overflow nor produce NaN.
"""

from __future__ import annotations

from typing import Any, get_args

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch_geometric.utils import coalesce, scatter

from study.catalogs import Direction
from study.distill.kernels import edge_kernel
from study.errors import choose

#: The KL directions :data:`study.catalogs.Direction` allows.
_DIRECTIONS: tuple[str, ...] = get_args(Direction)


def _check_edge_index(edge_index: Tensor, name: str = "edge_index") -> None:
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"{name}: expected shape [2, E], got {tuple(edge_index.shape)}")


def scatter_log_softmax(src: Tensor, index: Tensor, num_nodes: int) -> Tensor:
    """Log-softmax of ``src`` within the groups given by ``index``.

    Stable: subtracts the per-group maximum (found by a scatter max, detached because the result
    does not depend on it) before the scatter sum of ``exp``; the group's largest term is then
    ``exp(0) = 1``, so the log never sees 0.

    Args:
        src: ``[E]`` scores.
        index: ``[E]`` group (target node) of each score.
        num_nodes: number of groups ``N``.

    Returns:
        ``[E]`` log-probabilities; ``exp`` of them sums to 1 within each non-empty group.
    """
    group_max = scatter(src.detach(), index, dim=0, dim_size=num_nodes, reduce="max")
    shifted = src - group_max[index]
    group_sum = scatter(shifted.exp(), index, dim=0, dim_size=num_nodes, reduce="sum")
    return shifted - group_sum.log()[index]


def local_structure(
    z: Tensor,
    edge_index: Tensor,
    *,
    kernel: str = "rbf",
    num_nodes: int | None = None,
    **kernel_params: float,
) -> Tensor:
    """Per-edge log local structure ``log LS_ij``.

    ``log LS_ij = K(z_i, z_j) - logsumexp_{j' -> i} K(z_i, z_j')`` with ``i = edge_index[1]``
    (target) and ``j = edge_index[0]`` (source).

    Args:
        z: ``[N, F]`` node features.
        edge_index: ``[2, E]`` edges ``j -> i``.
        kernel: a name from :data:`study.catalogs.KERNELS`.
        num_nodes: ``N``; defaults to ``z.size(0)``.
        **kernel_params: the kernel's own (``degree``, ``c`` for poly, ``sigma`` for rbf);
            missing ones take the catalog's defaults.

    Returns:
        ``[E]`` log-probabilities, in the order of ``edge_index``; for every target with incoming
        edges, ``exp`` of its entries sums to 1.
    """
    _check_edge_index(edge_index)
    n = z.size(0) if num_nodes is None else num_nodes
    k = edge_kernel(z, edge_index, kernel, **kernel_params)
    return scatter_log_softmax(k, edge_index[1], n)


def lsp_loss(
    z_s: Tensor,
    z_t: Tensor | None,
    edge_index: Tensor,
    *,
    kernel: str = "rbf",
    direction: str = "student_teacher",
    teacher_log_ls: Tensor | None = None,
    num_nodes: int | None = None,
    **kernel_params: float,
) -> Tensor:
    """LSP loss: mean over target nodes of the KL divergence between local structures.

    ``S_i = KL(LS_i^s || LS_i^t) = sum_j LS_ij^s (log LS_ij^s - log LS_ij^t)`` for
    ``direction="student_teacher"`` (the paper), ``KL(LS_i^t || LS_i^s)`` for
    ``"teacher_student"`` (the official code). ``L_LSP`` is the mean of ``S_i`` over the target
    nodes with at least one incoming edge; nodes of in-degree 0 have no local structure and are
    left out of the mean. The weight lambda and the ``lsp_until_epoch`` schedule belong to the
    training loop.

    Args:
        z_s: ``[N, F_s]`` student features.
        z_t: ``[N, F_t]`` teacher features; ``F_t`` may differ from ``F_s`` (no adapter needed).
            Gradients flow into it unless the caller detaches it. Unused (may be ``None``) when
            ``teacher_log_ls`` is given.
        edge_index: ``[2, E]`` edges ``j -> i`` both sides are evaluated on (for dynamic graphs,
            the :func:`union_edges` of teacher and student graphs).
        kernel: a name from :data:`study.catalogs.KERNELS`.
        direction: ``"student_teacher"`` or ``"teacher_student"``.
        teacher_log_ls: ``[E]`` precomputed ``local_structure(z_t, edge_index, ...)``: on a fixed
            graph it never changes, so the training loop computes it once under ``no_grad``.
        num_nodes: ``N``; defaults to ``z_s.size(0)``.
        **kernel_params: the kernel's own (``degree``, ``c`` for poly, ``sigma`` for rbf).

    Returns:
        A scalar; 0 when the graph has no edges.

    Raises:
        UserInputError: unknown kernel, kernel parameter (one the kernel does not take, too) or
            direction.
    """
    choose("direction", direction, _DIRECTIONS)
    _check_edge_index(edge_index)
    n = z_s.size(0) if num_nodes is None else num_nodes
    k_s = edge_kernel(z_s, edge_index, kernel, **kernel_params)
    if teacher_log_ls is None:
        if z_t is None:
            raise ValueError("lsp_loss: give z_t or teacher_log_ls")
        if z_t.size(0) != z_s.size(0):
            raise ValueError(f"lsp_loss: z_s has {z_s.size(0)} rows but z_t has {z_t.size(0)}")
        log_t = local_structure(z_t, edge_index, kernel=kernel, num_nodes=n, **kernel_params)
    else:
        if teacher_log_ls.shape != k_s.shape:
            raise ValueError(
                f"lsp_loss: teacher_log_ls has shape {tuple(teacher_log_ls.shape)}, "
                f"expected [E] = {tuple(k_s.shape)}"
            )
        log_t = teacher_log_ls.to(k_s.dtype)
    if k_s.numel() == 0:
        return k_s.sum()  # 0.0, still attached to the graph of z_s
    return _LocalStructureDivergence.apply(
        k_s, log_t, edge_index[1], n, direction == "student_teacher"
    )


class _LocalStructureDivergence(torch.autograd.Function):
    """``mean_i KL`` between the student's local structure (from its kernel values) and the
    teacher's log local structure, with the backward written out.

    Autograd through the per-edge log-softmax and KL records some thirty ``[E]`` operations, each
    a pass over the edges (and, on a busy CPU, a thread synchronisation); the closed forms below
    take five. With ``p = LS^s``, ``q = exp(log_t)`` (``log_t`` treated as a free input, so the
    teacher's gradient is right when it is not precomputed), ``d_e = log p_e - log q_e`` and
    ``S_i`` the per-node divergence, the loss ``(1 / n_valid) sum_i S_i`` has

    - ``KL(p || q)``: ``dL/dk_e = p_e (d_e - S_i) / n_valid``, ``dL/dlog_t_e = -p_e / n_valid``;
    - ``KL(q || p)``: ``dL/dk_e = (p_e Q_i - q_e) / n_valid`` with ``Q_i = sum_e q_e``, and
      ``dL/dlog_t_e = q_e (1 - d_e) / n_valid``;

    using ``sum_e p_e = 1`` within each node (true of the log-softmax up to rounding).
    """

    @staticmethod
    def forward(
        ctx: Any, k_s: Tensor, log_t: Tensor, target: Tensor, num_nodes: int, student_first: bool
    ) -> Tensor:
        log_s = scatter_log_softmax(k_s, target, num_nodes)
        p = log_s.exp()
        d = log_s - log_t
        has_incoming = torch.zeros(num_nodes, dtype=torch.bool, device=target.device)
        has_incoming[target] = True
        saved: tuple[Tensor, ...]
        if student_first:
            terms = p * d
            saved = (p, d)
        else:
            q = log_t.exp()
            terms = -q * d
            saved = (p, q, d)
        per_node = scatter(terms, target, dim=0, dim_size=num_nodes, reduce="sum")
        loss = per_node[has_incoming].mean()
        ctx.student_first = student_first
        ctx.count = int(has_incoming.sum())
        extra = per_node if student_first else scatter(q, target, 0, dim_size=num_nodes)
        ctx.save_for_backward(target, extra, *saved)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        target, per_node_sum, *saved = ctx.saved_tensors
        scale = grad / ctx.count
        if ctx.student_first:
            p, d = saved
            grad_k = (d - per_node_sum[target]).mul_(p).mul_(scale)
            grad_t = (p * -scale) if ctx.needs_input_grad[1] else None
        else:
            p, q, d = saved
            grad_k = (p * per_node_sum[target]).sub_(q).mul_(scale)
            grad_t = (1.0 - d).mul_(q).mul_(scale) if ctx.needs_input_grad[1] else None
        return grad_k, grad_t, None, None, None


def union_edges(edge_index_a: Tensor, edge_index_b: Tensor, num_nodes: int | None = None) -> Tensor:
    """Union of two edge sets without duplicates, ``E^u = E^a | E^b`` (LSP on dynamic graphs).

    Duplicates within either input are removed too. The result is sorted by target
    (``edge_index[1]``), then by source: each target's incoming edges are contiguous, which is
    PyG's ``coalesce(..., sort_by_row=False)`` order.

    Args:
        edge_index_a: ``[2, E_a]`` edges ``j -> i``.
        edge_index_b: ``[2, E_b]`` edges ``j -> i``.
        num_nodes: ``N``; defaults to the largest index plus one.

    Returns:
        ``[2, E_u]`` edges, ``E_u <= E_a + E_b``.
    """
    _check_edge_index(edge_index_a, "edge_index_a")
    _check_edge_index(edge_index_b, "edge_index_b")
    both = torch.cat([edge_index_a, edge_index_b], dim=1)
    return coalesce(both, num_nodes=num_nodes, sort_by_row=False)
