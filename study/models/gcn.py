"""Graph convolutional network students (Kipf and Welling 2017): ``GCNConv`` layers.

Each layer averages its neighbours' (and its own) linearly transformed features with the
symmetric normalisation ``D^-1/2 (A + I) D^-1/2``. Cheaper per edge than GAT (no attention), so
a natural small student for a GAT teacher. The normalisation is recomputed on every call (no
``cached=True``), so one model serves transductive and inductive graphs.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch_geometric.nn import GCNConv
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from study.models.stack import ConvStack


class GCN(ConvStack):
    """A stack of ``GCNConv`` layers with ReLU between them (see :class:`ConvStack`)."""

    arch = "gcn"
    make_conv = staticmethod(GCNConv)

    def prepare(self, edge_index: Tensor, num_nodes: int) -> tuple[Tensor, Tensor | None]:
        """Self-loops and ``D^-1/2 (A + I) D^-1/2`` weights from the WHOLE graph's degrees: a
        chunk of it sees only some edges of each source, so it cannot normalise by itself."""
        edge_index, weight = gcn_norm(edge_index, None, num_nodes, add_self_loops=True)
        return edge_index, weight

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
