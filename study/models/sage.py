"""GraphSAGE students (Hamilton et al. 2017): ``SAGEConv`` layers with mean aggregation.

Each layer adds a linear map of the node's own features to a linear map of its neighbours' mean,
``W_1 x_i + W_2 mean_{j -> i} x_j``: full-neighbourhood inference, no sampling.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import SAGEConv

from study.models.base import ModelOutput
from study.models.mlp import stack_sizes


class GraphSAGE(nn.Module):
    """A stack of mean-aggregating ``SAGEConv`` layers with ReLU between them.

    Args:
        in_channels: input node feature width.
        out_channels: logits per node.
        width: width of every hidden layer.
        depth: number of ``SAGEConv`` layers, the output layer included (``>= 1``).
        dropout: dropout on each layer's input features (as :class:`~study.models.gat.GAT`).

    ``forward`` returns ``ModelOutput(logits [N, out_channels], hidden, None)`` where ``hidden``
    holds, for every layer before the last, its output after ReLU (``[N, width]``); with a single
    layer, ``hidden == [logits]``.
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
        sizes = stack_sizes("sage", in_channels, out_channels, width, depth, dropout)
        self.dropout = dropout
        self.convs = nn.ModuleList(SAGEConv(i, o, aggr="mean") for i, o in sizes)
        self.spec: dict = {
            "arch": "sage",
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
