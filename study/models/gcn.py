"""Graph convolutional network students (Kipf and Welling 2017): ``GCNConv`` layers.

Each layer averages its neighbours' (and its own) linearly transformed features with the
symmetric normalisation ``D^-1/2 (A + I) D^-1/2``. Cheaper per edge than GAT (no attention), so
a natural small student for a GAT teacher. The normalisation is recomputed on every call (no
``cached=True``), so one model serves transductive and inductive graphs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import GCNConv

from study.models.stack import ConvStack


class GCN(ConvStack):
    """A stack of ``GCNConv`` layers with ReLU between them (see :class:`ConvStack`)."""

    arch = "gcn"
    make_conv = staticmethod(GCNConv)

    def chunk_state(self, rowptr: Tensor, col: Tensor) -> Tensor:
        """``[N]`` ``deg^-1/2`` of ``A + I`` from the WHOLE graph (a chunk sees only some edges of
        each source, so it cannot normalise by itself), as ``gcn_norm`` computes it:
        it replaces existing self-loops by one per node, so ``deg`` = in-edges from other
        nodes + 1. Counted over slices of targets (no ``[E]`` temporary)."""
        n = rowptr.numel() - 1
        deg = (rowptr[1:] - rowptr[:-1]).to(torch.float)
        step = 1 << 16
        for start in range(0, n, step):
            stop = min(start + step, n)
            lo, hi = int(rowptr[start]), int(rowptr[stop])
            target = torch.repeat_interleave(
                torch.arange(start, stop), rowptr[start + 1 : stop + 1] - rowptr[start:stop]
            )
            loops = target[col[lo:hi] == target]
            deg.index_add_(0, loops, torch.full((loops.numel(),), -1.0))
        deg += 1.0
        return deg.pow(-0.5)  # deg >= 1: no zero to mask

    def chunk_edges(
        self, edge_index: Tensor, node_ids: Tensor, num_targets: int, state: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """The chunk's edges without self-loops, one self-loop per target, and
        ``D^-1/2 (A + I) D^-1/2`` weights from the whole graph's ``state`` (``gcn_norm``'s edges
        into these targets, the same weights)."""
        assert state is not None
        kept = edge_index[:, node_ids[edge_index[0]] != node_ids[edge_index[1]]]
        loops = torch.arange(num_targets).repeat(2, 1)
        edges = torch.cat([kept, loops], dim=1)
        return edges, state[node_ids[edges[0]]] * state[node_ids[edges[1]]]

    def _conv(
        self,
        conv: nn.Module,
        x: Tensor,
        edge_index: Tensor,
        edge_weight: Tensor | None,
        num_targets: int | None,
    ) -> Tensor:
        if edge_weight is None:
            out = conv(x, edge_index)
            return out if num_targets is None else out[:num_targets]
        # GCNConv.forward with the normalisation already done (it would normalise again).
        assert isinstance(conv, GCNConv)
        size = None if num_targets is None else (x.shape[0], num_targets)
        out = conv.propagate(edge_index, x=conv.lin(x), edge_weight=edge_weight, size=size)
        return out if conv.bias is None else out + conv.bias
