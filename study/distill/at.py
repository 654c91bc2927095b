"""Attention transfer (AT) on graphs: match per-node attention maps.

Zagoruyko and Komodakis, "Paying More Attention to Attention", ICLR 2017, as adapted by Yang et
al. 2020 (DESIGN.md section 2). The attention of node ``i`` is ``a_i = sum_c |z_ic|^p``, the map
is L2-normalised over nodes, and the loss is the mean squared difference of the two maps. It
compares one scalar per node, so student and teacher widths may differ and no adapter is needed.

Zagoruyko and Komodakis use ``p = 2``; the LSP paper uses ``p = 1``, which is the default here.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.utils import scatter

from study.errors import UserInputError


def attention_map(
    z: Tensor, p: float = 1.0, *, batch: Tensor | None = None, eps: float = 1e-12
) -> Tensor:
    """Per-node attention ``a_i = sum_c |z_ic|^p``, L2-normalised over nodes.

    Args:
        z: ``[N, F]`` node features.
        p: exponent, ``> 0`` (paper: 1).
        batch: optional ``[N]`` graph index of each node (PyG's ``batch``); with it, each graph's
            map is normalised on its own, as AT normalises per image. Without it, over all nodes.
        eps: floor of the norm, so that an all-zero map gives zeros and finite gradients.

    Returns:
        ``[N]`` attention map with unit L2 norm per graph (unless all zero).
    """
    if not p > 0:
        raise UserInputError(f"at: p must be > 0, got {p!r}")
    a = z.abs().pow(p).sum(dim=-1)
    if batch is None:
        batch = torch.zeros(a.size(0), dtype=torch.long, device=a.device)
    sq = scatter(a * a, batch, dim=0, reduce="sum")
    # Clamp before sqrt: its gradient at 0 is infinite, and 0 * inf would be NaN.
    norm = sq.clamp_min(eps * eps).sqrt()
    return a / norm[batch]


def at_loss(z_s: Tensor, z_t: Tensor, p: float = 1.0, *, batch: Tensor | None = None) -> Tensor:
    """``mean_i (a_i^s - a_i^t)^2`` over nodes of the normalised attention maps.

    Args:
        z_s: ``[N, F_s]`` student features.
        z_t: ``[N, F_t]`` teacher features (``F_t`` may differ from ``F_s``).
        p: attention exponent (paper: 1; Zagoruyko and Komodakis: 2).
        batch: optional ``[N]`` graph index, see :func:`attention_map`.

    Returns:
        A scalar.
    """
    if z_s.size(0) != z_t.size(0):
        raise ValueError(f"at_loss: z_s has {z_s.size(0)} rows but z_t has {z_t.size(0)}")
    a_s = attention_map(z_s, p, batch=batch)
    a_t = attention_map(z_t, p, batch=batch).to(a_s.dtype)
    return (a_s - a_t).pow(2).mean()
