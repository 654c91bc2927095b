"""GraphSAGE students (Hamilton et al. 2017): ``SAGEConv`` layers with mean aggregation.

Each layer adds a linear map of the node's own features to a linear map of its neighbours' mean,
``W_1 x_i + W_2 mean_{j -> i} x_j``: full-neighbourhood inference, no sampling.
"""

from __future__ import annotations

from torch import nn
from torch_geometric.nn import SAGEConv

from study.models.stack import ConvStack


def _mean_sage(in_channels: int, out_channels: int) -> nn.Module:
    return SAGEConv(in_channels, out_channels, aggr="mean")


class GraphSAGE(ConvStack):
    """Mean-aggregating ``SAGEConv`` layers with ReLU between them (see :class:`ConvStack`)."""

    arch = "sage"
    make_conv = staticmethod(_mean_sage)
