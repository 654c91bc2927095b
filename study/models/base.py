"""What every model returns, so distillation code never needs to know the architecture."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor, nn
from torch_geometric.data import Data


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
        attention: for models with graph-attention layers whose attention recording is on
            (:mod:`study.models.attention`), a function returning one ``(edge_index [2, E_l],
            log_alpha [E_l, H_l])`` per attention layer, in forward order: the edges the layer
            attended over (its own self-loops included) and its per-head log-attention, a
            distribution over each target's incoming edges. Computed when called, not in the
            forward; ``None`` otherwise.
    """

    logits: Tensor | None
    hidden: list[Tensor]
    edge_indices: list[Tensor] | None = field(default=None)
    attention: Callable[[], list[tuple[Tensor, Tensor]]] | None = field(default=None)


def reads_types(model: nn.Module) -> bool:
    """Whether ``model`` is relation-aware (``reads_types``, see :mod:`study.models.rgcn`): it
    takes ``(x, edge_index, edge_type, node_type)``."""
    return bool(getattr(model, "reads_types", False))


def model_inputs(model: nn.Module, graph: Data) -> tuple[Tensor, ...]:
    """The forward arguments of ``model`` on a node graph: ``(x, edge_index)``, plus
    ``(edge_type, node_type)`` for a relation-aware model on a typed graph."""
    if reads_types(model) and "edge_type" in graph:
        return (graph.x, graph.edge_index, graph.edge_type, graph.node_type)
    return (graph.x, graph.edge_index)
