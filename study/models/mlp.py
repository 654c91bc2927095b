"""A multilayer perceptron student: reads node features only, never the graph.

The fastest kind of student (GLNN, Zhang et al. 2022, distils GNNs into exactly this): at
inference it needs no neighbour fetching, so its latency does not grow with the degree. It still
trains with every distillation method, because the losses compare its outputs on the nodes
(KD, FitNet, AT) or over the graph's edges (LSP) whatever the student did or did not aggregate.

:func:`stack_sizes` also checks and lays out the free ``width``/``depth`` form that the GCN and
GraphSAGE students share.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from study.errors import UserInputError
from study.models.base import ModelOutput


def stack_sizes(
    arch: str, in_channels: int, out_channels: int, width: int, depth: int, dropout: float
) -> list[tuple[int, int]]:
    """``(in, out)`` widths of each layer of a plain stack, after checking the sizes.

    Args:
        arch: the architecture name, to start error messages with.
        in_channels: input width.
        out_channels: output width (logits).
        width: width of every layer but the last.
        depth: number of layers, the output layer included (``>= 1``).
        dropout: dropout probability, in ``[0, 1)``.

    Returns:
        ``depth`` pairs: ``in -> width -> ... -> width -> out`` (``in -> out`` when depth is 1).
    """
    if depth < 1:
        raise UserInputError(f"{arch}: depth={depth} must be at least 1")
    if min(width, in_channels, out_channels) < 1:
        raise UserInputError(
            f"{arch}: widths must be positive (in_channels={in_channels}, width={width}, "
            f"out_channels={out_channels})"
        )
    if not 0.0 <= dropout < 1.0:
        raise UserInputError(f"{arch}: dropout={dropout} must be in [0, 1)")
    widths = [in_channels] + [width] * (depth - 1) + [out_channels]
    return list(zip(widths[:-1], widths[1:], strict=True))


class MLP(nn.Module):
    """``Linear`` layers with ReLU between them; the graph is ignored.

    Args:
        in_channels: input node feature width.
        out_channels: logits per node.
        width: width of every hidden layer.
        depth: number of ``Linear`` layers, the output layer included (``>= 1``).
        dropout: dropout on each layer's input features (as :class:`~study.models.gat.GAT`).

    ``forward(x, edge_index=None)`` returns ``ModelOutput(logits [N, out_channels], hidden,
    None)`` where ``hidden`` holds, for every layer before the last, its output after ReLU
    (``[N, width]``); with a single layer, ``hidden == [logits]``. ``edge_index`` is accepted so
    the MLP drops in wherever a GNN is called, and never read.
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
        sizes = stack_sizes("mlp", in_channels, out_channels, width, depth, dropout)
        self.dropout = dropout
        self.lins = nn.ModuleList(nn.Linear(i, o) for i, o in sizes)
        self.spec: dict = {
            "arch": "mlp",
            "in_channels": int(in_channels),
            "out_channels": int(out_channels),
            "width": width,
            "depth": depth,
            "dropout": dropout,
        }

    def forward(self, x: Tensor, edge_index: Tensor | None = None) -> ModelOutput:
        """Run all layers on the node features.

        Args:
            x: ``[N, in_channels]`` node features.
            edge_index: ignored (any ``[2, E]`` tensor, or ``None``).

        Returns:
            ``ModelOutput`` with ``logits [N, out_channels]`` and the hidden features.
        """
        hidden: list[Tensor] = []
        last = len(self.lins) - 1
        for layer, lin in enumerate(self.lins):
            x = F.dropout(x, p=self.dropout, training=self.training)
            x = lin(x)
            if layer < last:
                x = F.relu(x)
                hidden.append(x)
        if len(hidden) == 0:
            hidden.append(x)
        return ModelOutput(logits=x, hidden=hidden)
