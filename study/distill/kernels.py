"""Per-edge similarity kernels K(z_i, z_j) for local structure preserving distillation (LSP).

Yang et al., "Distilling Knowledge from Graph Convolutional Networks", CVPR 2020, section 3.3
(DESIGN.md section 2). Every kernel is a similarity: larger means more alike.

Each kernel takes the gathered feature rows of the two ends of every edge, ``z_target = z[i]`` and
``z_source = z[j]`` (both ``[E, F]``), and returns ``[E]``. Reductions go through ``einsum`` or
``vector_norm`` so that at most one extra ``[E, F]`` temporary (the difference ``z_i - z_j``) is
materialised beside the inputs.

:func:`edge_kernel` (what LSP calls) evaluates a kernel on a graph's edges without handing
gathered rows to autograd. Autograd's own backward of ``z[i] - z[j]`` scatters two ``[E, F]``
gradients back with ``index_put_(accumulate=True)``, a serial row-by-row loop on CPU that cost
more than the rest of the LSP step together. The fused functions below keep the forward exact
(the difference is taken feature by feature, never through ``||a||^2 + ||b||^2 - 2 a.b``) and
write the backward as sparse-times-dense products: the gradient of every node is a signed,
weighted sum of the rows of its edges, i.e. ``[N, E]`` incidence matrices in CSR form times the
saved ``[E, F]`` differences (squared distances), or an ``[N, N]`` weighted adjacency times ``z``
(dot products). The products are the same ``w_e * x_ef`` as in the scatter; only the order of the
additions differs.

The kernels' names, parameters and defaults are those of :data:`study.catalogs.KERNELS`; a kernel
registered there by another package is evaluated as ``factory(z[i], z[j], **params)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from study.catalog import Entry
from study.catalogs import KERNELS
from study.distill.params import as_kwargs, validate_params

#: The divisor of the L1 distance in the official LSP code's kernel exp(-||z_i - z_j||_1 / 100).
L1_OFFICIAL_SCALE = 100.0


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot product ``[E, F] x [E, F] -> [E]`` without an ``[E, F]`` product tensor."""
    return torch.einsum("ef,ef->e", a, b)


def squared_distance(z_target: Tensor, z_source: Tensor) -> Tensor:
    """Row-wise squared Euclidean distance ``||z_i - z_j||^2``.

    Computed directly from the difference, not as ``||a||^2 + ||b||^2 - 2 a.b``: the expansion
    cancels catastrophically when ``z_i`` is close to ``z_j`` (exactly the neighbours the RBF
    kernel weighs most), can come out negative, and gives a wrong gradient at ``z_i = z_j``. The
    direct form is exact up to rounding and costs one ``[E, F]`` temporary, the same order as the
    gathered inputs themselves.

    Args:
        z_target: ``[E, F]`` rows of the edge targets.
        z_source: ``[E, F]`` rows of the edge sources.

    Returns:
        ``[E]`` non-negative squared distances.
    """
    diff = z_target - z_source
    return _dot(diff, diff)


def linear_kernel(z_target: Tensor, z_source: Tensor) -> Tensor:
    """``K = z_i . z_j``. Shapes: ``[E, F], [E, F] -> [E]``."""
    return _dot(z_target, z_source)


def poly_kernel(z_target: Tensor, z_source: Tensor, degree: float = 2.0, c: float = 0.0) -> Tensor:
    """``K = (z_i . z_j + c)^degree`` (paper: degree 2, c 0). Shapes: ``[E, F], [E, F] -> [E]``."""
    return _poly_of_dot(_dot(z_target, z_source), degree, c)


def _rbf_of_squared_distance(sq: Tensor, sigma: float = 1.0) -> Tensor:
    return torch.exp(-sq / (2.0 * sigma * sigma))


def _l2_of_squared_distance(sq: Tensor) -> Tensor:
    return -sq


def _poly_of_dot(dot: Tensor, degree: float = 2.0, c: float = 0.0) -> Tensor:
    return (dot + c).pow(degree)


def _linear_of_dot(dot: Tensor) -> Tensor:
    return dot


def rbf_kernel(z_target: Tensor, z_source: Tensor, sigma: float = 1.0) -> Tensor:
    """``K = exp(-||z_i - z_j||^2 / (2 sigma^2))`` (paper: sigma 1). ``[E, F] x2 -> [E]``."""
    return _rbf_of_squared_distance(squared_distance(z_target, z_source), sigma)


def l2_kernel(z_target: Tensor, z_source: Tensor) -> Tensor:
    """``K = -||z_i - z_j||^2``: the paper's squared distance, negated so nearer means larger."""
    return _l2_of_squared_distance(squared_distance(z_target, z_source))


def l1_official_kernel(z_target: Tensor, z_source: Tensor) -> Tensor:
    """``K = exp(-||z_i - z_j||_1 / 100)``: the kernel of the official LSP code, not the paper's."""
    # vector_norm reduces without an |diff| temporary and has a zero subgradient at diff = 0.
    l1 = torch.linalg.vector_norm(z_target - z_source, ord=1, dim=-1)
    return torch.exp(-l1 / L1_OFFICIAL_SCALE)


def resolve_kernel(kernel: str, params: dict[str, Any]) -> tuple[Entry, dict[str, Any]]:
    """The :data:`~study.catalogs.KERNELS` entry called ``kernel`` and its keyword parameters:
    the schema's defaults updated by ``params``, validated.

    Raises:
        UserInputError: an unknown kernel (the message lists the valid ones), a parameter the
            kernel does not take (likewise), or a value out of range (``sigma <= 0``, a ``poly``
            degree that is not a whole number >= 1: a fractional power of a negative dot is NaN).
    """
    entry = KERNELS.get(kernel)
    return entry, as_kwargs(validate_params(f"kernel {kernel!r}", entry, params))


def kernel_values(
    z_target: Tensor,
    z_source: Tensor,
    kernel: str = "rbf",
    **params: Any,
) -> Tensor:
    """Evaluate a named kernel on gathered edge endpoints.

    Args:
        z_target: ``[E, F]`` features of each edge's target ``i`` (``z[edge_index[1]]``).
        z_source: ``[E, F]`` features of each edge's source ``j`` (``z[edge_index[0]]``).
        kernel: a name from :data:`study.catalogs.KERNELS` (built in: ``linear``, ``poly``,
            ``rbf``, ``l2``, ``l1_official``).
        **params: the kernel's parameters (``degree`` and ``c`` for poly, ``sigma`` for rbf);
            missing ones take the catalog's defaults.

    Returns:
        ``[E]`` kernel values ``K(z_i, z_j)``.

    Raises:
        UserInputError: unknown kernel name (the message lists the valid ones) or a bad parameter.
    """
    entry, kwargs = resolve_kernel(kernel, params)
    if z_target.shape != z_source.shape or z_target.dim() != 2:
        raise ValueError(
            f"kernel_values: expected two [E, F] tensors of one shape, got "
            f"{tuple(z_target.shape)} and {tuple(z_source.shape)}"
        )
    return entry.load()(z_target, z_source, **kwargs)


#: Kernels that are a function of the squared distance / of the dot product of an edge's ends;
#: :func:`edge_kernel` evaluates those through the fused functions below.
_OF_SQUARED_DISTANCE: dict[str, Callable[..., Tensor]] = {
    "rbf": _rbf_of_squared_distance,
    "l2": _l2_of_squared_distance,
}
_OF_DOT: dict[str, Callable[..., Tensor]] = {"linear": _linear_of_dot, "poly": _poly_of_dot}


def edge_kernel(
    z: Tensor,
    edge_index: Tensor,
    kernel: str = "rbf",
    **params: Any,
) -> Tensor:
    """Kernel value of every edge ``j -> i`` of a graph.

    Same values as ``kernel_values(z[i], z[j], ...)``; ``rbf``, ``l2``, ``linear`` and ``poly``
    go through :func:`edge_squared_distance` / :func:`edge_dot`, whose backward is a sparse
    product instead of autograd's row-by-row scatter (see the module docstring); any other
    kernel (``l1_official``, a plugin's) is its catalog factory on the gathered rows.

    Args:
        z: ``[N, F]`` node features.
        edge_index: ``[2, E]`` edges, row 0 the sources ``j``, row 1 the targets ``i`` (PyG).
        kernel, **params: as in :func:`kernel_values`.

    Returns:
        ``[E]`` values ``K(z_i, z_j)``, in the order of ``edge_index``.
    """
    entry, kwargs = resolve_kernel(kernel, params)
    if z.dim() != 2:
        raise ValueError(f"edge_kernel: expected z of shape [N, F], got {tuple(z.shape)}")
    target, source = edge_index[1], edge_index[0]
    # Catalog names are unique (a plugin cannot take a built-in's), so the name decides.
    if kernel in _OF_SQUARED_DISTANCE:
        return _OF_SQUARED_DISTANCE[kernel](edge_squared_distance(z, target, source), **kwargs)
    if kernel in _OF_DOT:
        return _OF_DOT[kernel](edge_dot(z, target, source), **kwargs)
    return entry.load()(z[target], z[source], **kwargs)


def edge_squared_distance(z: Tensor, target: Tensor, source: Tensor) -> Tensor:
    """``||z[target_e] - z[source_e]||^2`` for every edge, with a sparse-product backward.

    Args:
        z: ``[N, F]`` node features.
        target: ``[E]`` long, the ``i`` of every edge.
        source: ``[E]`` long, the ``j`` of every edge.

    Returns:
        ``[E]`` squared distances (differentiable in ``z``, once).
    """
    return _EdgeSquaredDistance.apply(z, target, source)


def edge_dot(z: Tensor, target: Tensor, source: Tensor) -> Tensor:
    """``z[target_e] . z[source_e]`` for every edge, with a sparse-product backward.

    Args:
        z: ``[N, F]`` node features.
        target: ``[E]`` long, the ``i`` of every edge.
        source: ``[E]`` long, the ``j`` of every edge.

    Returns:
        ``[E]`` dot products (differentiable in ``z``, once).
    """
    return _EdgeDot.apply(z, target, source)


#: dtypes torch's CSR-times-dense product supports on every backend; others scatter instead.
_SPARSE_DTYPES = (torch.float32, torch.float64)


def _rows_times(
    rows: Tensor, cols: Tensor | None, values: Tensor, num_rows: int, dense: Tensor
) -> Tensor:
    """``A @ dense`` for the ``[num_rows, dense.size(0)]`` matrix with entries ``(rows[e],
    cols[e], values[e])`` (``cols=None``: ``cols[e] = e``); duplicate entries are summed.

    Built as CSR and multiplied by MKL / cuSPARSE. Rows that are already sorted (edges sorted by
    target or by source, as PyG's ``coalesce`` leaves them) need no sort; otherwise a stable
    sort, on 32-bit keys (twice as fast as 64-bit on CPU), so the summation order is
    deterministic. Dtypes CSR products do not cover (half precision) fall back to ``index_add_``.
    """
    if dense.dtype not in _SPARSE_DTYPES:
        picked = dense if cols is None else dense.index_select(0, cols)
        scaled = picked * values.unsqueeze(-1).to(dense.dtype)
        return dense.new_zeros(num_rows, dense.size(1)).index_add_(0, rows, scaled)
    if cols is None:
        cols = torch.arange(rows.numel(), device=rows.device)
    if rows.numel() > 1 and not bool((rows[1:] >= rows[:-1]).all()):
        keys = rows.to(torch.int32) if num_rows < 2**31 else rows
        order = torch.argsort(keys, stable=True)
        cols, values = cols[order], values[order]
    crow = torch.zeros(num_rows + 1, dtype=torch.long, device=rows.device)
    torch.cumsum(torch.bincount(rows, minlength=num_rows), 0, out=crow[1:])
    with warnings.catch_warnings():
        # Torch warns once per process that CSR is "beta"; the product used here is stable.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        matrix = torch.sparse_csr_tensor(
            crow,
            cols,
            values.to(dense.dtype),
            (num_rows, dense.size(0)),
            check_invariants=False,  # valid by construction; checking costs a pass over E
        )
    return matrix @ dense


#: Elements per chunk of the edge differences when nothing is kept for a backward (4 MiB in
#: float32): small enough to stay in cache and to be recycled by the allocator.
_CHUNK_ELEMENTS = 1 << 20


def _squared_distance_chunked(z: Tensor, target: Tensor, source: Tensor) -> Tensor:
    """Squared distances without a full ``[E, F]`` difference (no gradient wanted).

    A frozen teacher's side of LSP on a large graph (a batch of kNN clouds: ~800k union edges
    of 256 features) would otherwise allocate and page in two ``[E, F]`` gathers of 0.8 GB each.
    Each chunk is computed exactly as the full version computes it.
    """
    out = torch.empty(target.numel(), dtype=z.dtype, device=z.device)
    step = max(1, _CHUNK_ELEMENTS // max(1, z.size(1)))
    for start in range(0, target.numel(), step):
        t, s = target[start : start + step], source[start : start + step]
        diff = z.index_select(0, t).sub_(z.index_select(0, s))
        torch.linalg.vector_norm(diff, dim=-1, out=out[start : start + step]).square_()
    return out


def _gathered_difference(z: Tensor, target: Tensor, source: Tensor) -> Tensor:
    """``z[target] - z[source]`` as one ``[E, F]`` tensor (kept for a backward).

    Subtracted in place into the first gather, the second gathered chunk by chunk: the only
    ``[E, F]`` allocation is the result (two for ``z[t] - z[s]``; each fresh one is hundreds of
    MB on a batch of clouds, and paid again in page faults every step).
    """
    diff = z.index_select(0, target)
    step = max(1, _CHUNK_ELEMENTS // max(1, z.size(1)))
    for start in range(0, target.numel(), step):
        diff[start : start + step].sub_(z.index_select(0, source[start : start + step]))
    return diff


class _EdgeSquaredDistance(torch.autograd.Function):
    """Forward: one ``[E, F]`` difference (kept for the backward), reduced by ``vector_norm``.

    ``vector_norm(diff) ** 2`` rather than ``einsum``: a third of the time on CPU, and its
    blocked accumulation is no less accurate (1-ulp level; the backward does not use it).
    Backward: ``dz = D_t @ (2 g diff) - D_s @ (2 g diff)``, ``D_t[i, e] = 1`` at
    ``i = target_e`` and ``D_s`` likewise at the sources, as two CSR products weighted by
    ``2 g`` (a self-loop's two entries meet a zero difference).
    """

    @staticmethod
    def forward(ctx: FunctionCtx, z: Tensor, target: Tensor, source: Tensor) -> Tensor:
        ctx.num_nodes = z.size(0)  # type: ignore[attr-defined]
        if not ctx.needs_input_grad[0]:  # type: ignore[attr-defined]
            return _squared_distance_chunked(z, target, source)
        diff = _gathered_difference(z, target, source)
        ctx.save_for_backward(diff, target, source)
        return torch.linalg.vector_norm(diff, dim=-1).square_()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:
        diff, target, source = ctx.saved_tensors
        weight = 2.0 * grad
        grad_z = _rows_times(target, None, weight, ctx.num_nodes, diff)
        grad_z -= _rows_times(source, None, weight, ctx.num_nodes, diff)
        return grad_z, None, None


class _EdgeDot(torch.autograd.Function):
    """Forward: two gathers reduced by ``einsum``; nothing ``[E, F]`` is kept.

    Backward: ``dz = G @ z + G^T @ z`` with ``G[target_e, source_e] = g_e`` (duplicates
    summed, so a self-loop ``z_i . z_i`` gets its ``2 g z_i``).
    """

    @staticmethod
    def forward(ctx: FunctionCtx, z: Tensor, target: Tensor, source: Tensor) -> Tensor:
        if ctx.needs_input_grad[0]:  # type: ignore[attr-defined]
            ctx.save_for_backward(z, target, source)
        return _dot(z.index_select(0, target), z.index_select(0, source))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:
        z, target, source = ctx.saved_tensors
        grad_z = _rows_times(target, source, grad, z.size(0), z)
        grad_z += _rows_times(source, target, grad, z.size(0), z)
        return grad_z, None, None
