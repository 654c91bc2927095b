"""Graph convolutional network students (Kipf and Welling 2017): ``GCNConv`` layers.

Each layer averages its neighbours' (and its own) linearly transformed features with the
symmetric normalisation ``D^-1/2 (A + I) D^-1/2``. Cheaper per edge than GAT (no attention), so
a natural small student for a GAT teacher. The normalisation is recomputed on every call (no
``cached=True``), so one model serves transductive and inductive graphs.
"""

from __future__ import annotations

from torch_geometric.nn import GCNConv

from study.models.stack import ConvStack


class GCN(ConvStack):
    """A stack of ``GCNConv`` layers with ReLU between them (see :class:`ConvStack`)."""

    arch = "gcn"
    make_conv = staticmethod(GCNConv)
