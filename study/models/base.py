"""What every model returns, so distillation code never needs to know the architecture."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class ModelOutput:
    """A forward pass, with what distillation needs beside the logits.

    Attributes:
        logits: ``[N, C]`` node logits (node tasks) or ``[B, C]`` cloud logits (point clouds);
            ``None`` when the caller asked a model to skip its classifier (a teacher whose
            logits no loss reads, see ``DGCNN.forward``).
        hidden: one ``[N_total, F_l]`` tensor per message-passing layer, in order: the node
            (or point) features that layer produced, before the classifier. For point clouds
            ``N_total = B * P`` (points of all clouds stacked, cloud-major).
        edge_indices: for dynamic-graph models (DGCNN), the ``[2, E_l]`` kNN graph each layer
            aggregated over, in the same flat indexing as ``hidden`` (source row 0, target row 1);
            ``None`` for models on a fixed input graph.
    """

    logits: Tensor | None
    hidden: list[Tensor]
    edge_indices: list[Tensor] | None = field(default=None)
