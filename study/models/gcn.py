"""Graph convolutional network students (Kipf and Welling 2017): ``GCNConv`` layers.

Each layer averages its neighbours' (and its own) linearly transformed features with the
symmetric normalisation ``D^-1/2 (A + I) D^-1/2``. Cheaper per edge than GAT (no attention), so
a natural small student for a GAT teacher.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GCNConv

from study.models.base import ModelOutput
from study.models.mlp import stack_sizes


class GCN(nn.Module):
    """A stack of ``GCNConv`` layers with ReLU between them, returning hidden features.

    Args:
        in_channels: input node feature width.
        out_channels: logits per node.
        width: width of every hidden layer.
        depth: number of ``GCNConv`` layers, the output layer included (``>= 1``).
        dropout: dropout on each layer's input features (as :class:`~study.models.gat.GAT`).

    ``forward`` returns ``ModelOutput(logits [N, out_channels], hidden, None)`` where ``hidden``
    holds, for every layer before the last, its output after ReLU (``[N, width]``); with a single
    layer, ``hidden == [logits]``. The normalisation is recomputed on every call (no
    ``cached=True``), so the same model serves transductive and inductive graphs.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        width: int,
        depth: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        width, depth, dropout = int(width), int(depth), float(dropout)
        sizes = stack_sizes("gcn", in_channels, out_channels, width, depth, dropout)
        self.dropout = dropout
        self.convs = nn.ModuleList(GCNConv(i, o) for i, o in sizes)
        self.spec: dict = {
            "arch": "gcn",
            "in_channels": int(in_channels),
            "out_channels": int(out_channels),
            "width": width,
            "depth": depth,
            "dropout": dropout,
        }

    def forward(self, x: Tensor, edge_index: Tensor) -> ModelOutput:
        """Run all layers.

        Args:
            x: ``[N, in_channels]`` node features.
            edge_index: ``[2, E]`` edges (source row 0, target row 1).

        Returns:
            ``ModelOutput`` with ``logits [N, out_channels]`` and the hidden features.
        """
        hidden: list[Tensor] = []
        last = len(self.convs) - 1
        for layer, conv in enumerate(self.convs):
            x = F.dropout(x, p=self.dropout, training=self.training)
            x = conv(x, edge_index)
            if layer < last:
                x = F.relu(x)
                hidden.append(x)
        if len(hidden) == 0:
            hidden.append(x)
        return ModelOutput(logits=x, hidden=hidden)
