"""A plain stack of message-passing layers (the shared body of the GCN and GraphSAGE students)."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from study.models.base import ModelOutput
from study.models.mlp import stack_sizes


class ConvStack(nn.Module):
    """``depth`` convolutions with ReLU between them; subclasses say which convolution.

    Args:
        in_channels: input node feature width.
        out_channels: logits per node.
        width: width of every hidden layer.
        depth: number of layers, the output layer included (``>= 1``).
        dropout: dropout on each layer's input features (as :class:`~study.models.gat.GAT`).

    ``forward`` returns ``ModelOutput(logits [N, out_channels], hidden, None)`` where ``hidden``
    holds, for every layer before the last, its output after ReLU (``[N, width]``); with a single
    layer, ``hidden == [logits]``.
    """

    arch: str = ""
    make_conv: Callable[[int, int], nn.Module]

    def __init__(
        self, in_channels: int, out_channels: int, *, width: int, depth: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        width, depth, dropout = int(width), int(depth), float(dropout)
        sizes = stack_sizes(self.arch, in_channels, out_channels, width, depth, dropout)
        self.dropout = dropout
        self.convs = nn.ModuleList(type(self).make_conv(i, o) for i, o in sizes)
        self.spec: dict = {
            "arch": self.arch,
            "in_channels": int(in_channels),
            "out_channels": int(out_channels),
            "width": width,
            "depth": depth,
            "dropout": dropout,
        }

    def forward(self, x: Tensor, edge_index: Tensor) -> ModelOutput:
        """Run all layers on ``x [N, in_channels]`` over ``edge_index [2, E]``."""
        hidden: list[Tensor] = []
        last = len(self.convs) - 1
        for layer, conv in enumerate(self.convs):
            x = F.dropout(x, p=self.dropout, training=self.training)
            x = conv(x, edge_index)
            if layer < last:
                x = F.relu(x)
                hidden.append(x)
        return ModelOutput(logits=x, hidden=hidden or [x])
