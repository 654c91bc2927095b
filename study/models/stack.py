"""A plain stack of layers with ReLU between them: the shared body of the GCN, GraphSAGE and MLP
students, and the check of their free ``width``/``depth`` form."""

from __future__ import annotations

from collections.abc import Callable

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


class ConvStack(nn.Module):
    """``depth`` layers with ReLU between them; subclasses say which layer.

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

    #: Whether a layer reads the graph (the MLP's do not): layer-wise inference then needs no
    #: neighbours of a chunk.
    reads_graph: bool = True

    @property
    def num_layers(self) -> int:
        """Number of layers, the output layer included."""
        return len(self.convs)

    def forward(self, x: Tensor, edge_index: Tensor) -> ModelOutput:
        """Run all layers on ``x [N, in_channels]`` over ``edge_index [2, E]``."""
        hidden: list[Tensor] = []
        for index in range(self.num_layers):
            x = self.layer(index, x, edge_index)
            if index < self.num_layers - 1:
                hidden.append(x)
        return ModelOutput(logits=x, hidden=hidden or [x])

    def chunk_state(self, rowptr: Tensor, col: Tensor) -> Tensor | None:
        """What :meth:`chunk_edges` needs of the whole graph (its incoming edges as a CSR:
        ``rowptr [N + 1]``, ``col [E]``); plain layers need nothing."""
        return None

    def chunk_edges(
        self, edge_index: Tensor, node_ids: Tensor, num_targets: int, state: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """A chunk's edges (and weights) as :meth:`layer` reads them, from its incoming edges
        ``edge_index [2, E_c]`` in local ids (``node_ids [M]`` their global ids, the first
        ``num_targets`` the chunk's targets): plain layers read them as they are."""
        return edge_index, None

    def layer(
        self,
        index: int,
        x: Tensor,
        edge_index: Tensor,
        edge_weight: Tensor | None = None,
        num_targets: int | None = None,
    ) -> Tensor:
        """Layer ``index`` on ``x [N, F]``: dropout, the layer, ReLU unless it is the last.

        ``edge_weight`` comes from :meth:`chunk_edges` (``None``: the layer's own behaviour).
        ``num_targets``: only the first that many nodes' outputs are wanted (every edge points
        at one of them); the layer then runs bipartite, ``[num_targets, F_out]``, so that the
        other nodes' per-node work is not done (layer-wise inference, serving)."""
        x = F.dropout(x, p=self.dropout, training=self.training)
        x = self._conv(self.convs[index], x, edge_index, edge_weight, num_targets)
        return F.relu(x) if index < self.num_layers - 1 else x

    def readout(self, x: Tensor) -> Tensor:
        """Logits from the last layer's output (the identity for a plain stack)."""
        return x

    def _conv(
        self,
        conv: nn.Module,
        x: Tensor,
        edge_index: Tensor,
        edge_weight: Tensor | None,
        num_targets: int | None,
    ) -> Tensor:
        if num_targets is None:
            return conv(x, edge_index)
        return conv((x, x[:num_targets]), edge_index, size=(x.shape[0], num_targets))
