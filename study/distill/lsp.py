"""Local structure preserving distillation (LSP).

Yang et al., "Distilling Knowledge from Graph Convolutional Networks", CVPR 2020 (DESIGN.md
section 2). For each target node ``i`` the local structure is a distribution over its incoming
edges ``j -> i``:

    LS_ij = exp(K(z_i, z_j)) / sum_{j' -> i} exp(K(z_i, z_j'))

computed here in log space with a per-target scatter log-sum-exp, so that linear and polynomial
kernels on raw features (values of 1e6 and more) neither overflow nor produce NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.utils import coalesce, scatter

from study.distill.kernels import KERNEL_PARAM_DEFAULTS, edge_kernel
from study.distill.registry import check_direction
from study.errors import UserInputError


def _check_edge_index(edge_index: Tensor, name: str = "edge_index") -> None:
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"{name}: expected shape [2, E], got {tuple(edge_index.shape)}")


def _kernel_kwargs(kernel_params: dict[str, float]) -> dict[str, float]:
    unknown = sorted(set(kernel_params) - set(KERNEL_PARAM_DEFAULTS))
    if unknown:
        valid = ", ".join(sorted(KERNEL_PARAM_DEFAULTS))
        raise UserInputError(f"unknown kernel parameter {unknown[0]!r} (valid: {valid})")
    return {**KERNEL_PARAM_DEFAULTS, **kernel_params}


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
        kernel: a name from :data:`study.distill.kernels.KERNELS`.
        num_nodes: ``N``; defaults to ``z.size(0)``.
        **kernel_params: ``degree``, ``c`` (poly), ``sigma`` (rbf).

    Returns:
        ``[E]`` log-probabilities, in the order of ``edge_index``; for every target with incoming
        edges, ``exp`` of its entries sums to 1.
    """
    _check_edge_index(edge_index)
    n = z.size(0) if num_nodes is None else num_nodes
    k = edge_kernel(z, edge_index, kernel, **_kernel_kwargs(kernel_params))
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
        kernel: a name from :data:`study.distill.kernels.KERNELS`.
        direction: ``"student_teacher"`` or ``"teacher_student"``.
        teacher_log_ls: ``[E]`` precomputed ``local_structure(z_t, edge_index, ...)``: on a fixed
            graph it never changes, so the training loop computes it once under ``no_grad``.
        num_nodes: ``N``; defaults to ``z_s.size(0)``.
        **kernel_params: ``degree``, ``c`` (poly), ``sigma`` (rbf).

    Returns:
        A scalar; 0 when the graph has no edges.

    Raises:
        UserInputError: unknown kernel, kernel parameter or direction.
    """
    check_direction(direction)
    _check_edge_index(edge_index)
    n = z_s.size(0) if num_nodes is None else num_nodes
    log_s = local_structure(z_s, edge_index, kernel=kernel, num_nodes=n, **kernel_params)
    if teacher_log_ls is None:
        if z_t is None:
            raise ValueError("lsp_loss: give z_t or teacher_log_ls")
        if z_t.size(0) != z_s.size(0):
            raise ValueError(f"lsp_loss: z_s has {z_s.size(0)} rows but z_t has {z_t.size(0)}")
        log_t = local_structure(z_t, edge_index, kernel=kernel, num_nodes=n, **kernel_params)
    else:
        if teacher_log_ls.shape != log_s.shape:
            raise ValueError(
                f"lsp_loss: teacher_log_ls has shape {tuple(teacher_log_ls.shape)}, "
                f"expected [E] = {tuple(log_s.shape)}"
            )
        log_t = teacher_log_ls.to(log_s.dtype)

    if direction == "student_teacher":
        terms = log_s.exp() * (log_s - log_t)
    else:
        terms = log_t.exp() * (log_t - log_s)
    if terms.numel() == 0:
        return terms.sum()  # 0.0, still attached to the graph of z_s

    target = edge_index[1]
    per_node = scatter(terms, target, dim=0, dim_size=n, reduce="sum")
    has_incoming = torch.zeros(n, dtype=torch.bool, device=target.device)
    has_incoming[target] = True
    return per_node[has_incoming].mean()


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
