"""A multilayer perceptron student: reads node features only, never the graph.

The fastest kind of student (GLNN, Zhang et al. 2022, distils GNNs into exactly this): at
inference it needs no neighbour fetching, so its latency does not grow with the degree. It still
trains with every distillation method, because the losses compare its outputs on the nodes
(KD, FitNet, AT) or over the graph's edges (LSP) whatever the student did or did not aggregate.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from study.models.base import ModelOutput
from study.models.stack import ConvStack


class MLP(ConvStack):
    """``Linear`` layers with ReLU between them; the graph is ignored (see :class:`ConvStack`;
    the layers are in ``convs`` like the graph students').

    ``forward(x, edge_index=None)`` accepts ``edge_index`` so the MLP drops in wherever a GNN is
    called, and never reads it.
    """

    arch = "mlp"
    make_conv = staticmethod(nn.Linear)

    reads_graph = False

    def forward(self, x: Tensor, edge_index: Tensor | None = None) -> ModelOutput:
        """Run all layers on the node features ``x [N, in_channels]``."""
        return super().forward(x, x.new_empty((2, 0), dtype=torch.long))

    def _conv(
        self,
        conv: nn.Module,
        x: Tensor,
        edge_index: Tensor,
        edge_weight: Tensor | None,
        num_targets: int | None,
    ) -> Tensor:
        return conv(x if num_targets is None else x[:num_targets])
