"""Relation-aware teacher and student for typed graphs (:mod:`study.data.hetero`): an RGCN.

Schlichtkrull et al. 2018: ``h_i' = W_0 h_i + sum_r mean_{j in N_r(i)} W_r h_j``, one weight
matrix per relation ``r`` (:class:`RelationalConv`, the layer of PyG's ``RGCNConv`` with
``aggr="mean"`` computed in one pass over the edges: ``RGCNConv`` without pyg-lib propagates once
per relation, ten times slower here on 8 relations). Before the first layer a per-node-type linear
projection maps each type's zero-padded features to the model width, so a user's ``x`` and a
merchant's ``x`` (which share padded columns but not meaning) get their own weights.

A relation-aware model is called as ``model(x, edge_index, edge_type, node_type)``
(:func:`study.models.base.model_inputs` builds that tuple from a typed graph); on a graph
without types every edge is relation 0 and every node type 0, so it also runs on homogeneous
graphs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.utils import scatter

from study.errors import UserInputError
from study.models.base import ModelOutput
from study.models.stack import stack_sizes


class RelationalConv(nn.Module):
    """``h_i' = W_0 h_i + b + sum_r mean_{j -> i of relation r} W_r h_j``.

    Args:
        in_channels, out_channels: widths.
        num_relations: ``R``.
    """

    def __init__(self, in_channels: int, out_channels: int, num_relations: int) -> None:
        super().__init__()
        self.num_relations = num_relations
        self.weight = nn.Parameter(torch.empty(num_relations, in_channels, out_channels))
        self.root = nn.Linear(in_channels, out_channels)
        nn.init.xavier_uniform_(self.weight.view(num_relations * in_channels, out_channels))

    def forward(self, x: Tensor, edge_index: Tensor, edge_type: Tensor) -> Tensor:
        """``[N, out]`` from ``x [N, in]``, ``edge_index [2, E]`` and ``edge_type [E]``."""
        n, r = x.shape[0], self.num_relations
        src, dst = edge_index[0], edge_index[1]
        # Each relation's transform of every node ([R, N, out]), then each edge's message.
        per_relation = torch.matmul(x.unsqueeze(0), self.weight)
        messages = per_relation[edge_type, src]
        # A mean per (target, relation): groups never mix relations, empty groups give 0.
        pooled = scatter(messages, dst * r + edge_type, dim=0, dim_size=n * r, reduce="mean")
        return self.root(x) + pooled.view(n, r, -1).sum(dim=1)


class RGCN(nn.Module):
    """Per-node-type input projection, then ``depth`` ``RGCNConv`` layers with ReLU between.

    Args:
        in_channels: the padded feature width ``F_max``.
        out_channels: logits per node.
        width: the projection's and every hidden layer's width.
        depth: number of relational layers, the output layer included (``>= 1``).
        dropout: dropout on each relational layer's input.
        num_node_types: ``T`` (one projection each).
        num_relations: ``R`` (one weight matrix per relation and layer).

    ``forward`` returns ``ModelOutput(logits [N, out_channels], hidden)``: ``hidden`` holds every
    relational layer's output but the last, after ReLU (``[N, width]``); with one layer,
    ``[logits]``. Logits exist for every node; only the target type's are scored.
    """

    arch = "rgcn"
    reads_types = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        width: int,
        depth: int,
        dropout: float = 0.0,
        num_node_types: int = 1,
        num_relations: int = 1,
    ) -> None:
        super().__init__()
        width, depth, dropout = int(width), int(depth), float(dropout)
        sizes = stack_sizes(self.arch, width, out_channels, width, depth, dropout)
        if num_node_types < 1 or num_relations < 1:
            raise UserInputError(
                f"rgcn: num_node_types={num_node_types} and num_relations={num_relations} "
                "must be at least 1"
            )
        self.dropout = dropout
        self.project = nn.ModuleList(nn.Linear(in_channels, width) for _ in range(num_node_types))
        self.convs = nn.ModuleList(RelationalConv(i, o, num_relations) for i, o in sizes)
        self.spec: dict = {
            "arch": self.arch,
            "in_channels": int(in_channels),
            "out_channels": int(out_channels),
            "width": width,
            "depth": depth,
            "dropout": dropout,
            "num_node_types": int(num_node_types),
            "num_relations": int(num_relations),
        }

    @property
    def num_layers(self) -> int:
        """Number of relational layers, the output layer included."""
        return len(self.convs)

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        edge_type: Tensor | None = None,
        node_type: Tensor | None = None,
    ) -> ModelOutput:
        """Logits and hidden features of ``x [N, F_max]`` over ``edge_index [2, E]`` with
        ``edge_type [E]`` and ``node_type [N]`` (both ``None``: one type, one relation)."""
        if edge_type is None:
            edge_type = edge_index.new_zeros(edge_index.shape[1])
        if node_type is None:
            node_type = edge_index.new_zeros(x.shape[0])
        # Every type's projection of every node, then each node's own: a gather, which exports
        # to ONNX (boolean-mask assignment does not trace to a fixed graph).
        projected = torch.stack([lin(x) for lin in self.project])  # [T, N, width]
        h = projected.gather(0, node_type.view(1, -1, 1).expand(1, -1, projected.shape[2]))[0]
        h = F.relu(h)
        hidden: list[Tensor] = []
        for index, conv in enumerate(self.convs):
            h = F.dropout(h, p=self.dropout, training=self.training)
            h = conv(h, edge_index, edge_type)
            if index < self.num_layers - 1:
                h = F.relu(h)
                hidden.append(h)
        return ModelOutput(logits=h, hidden=hidden or [h])
