"""Layer-wise inference with bounded memory: a whole graph's outputs, one layer at a time, in
chunks of target nodes, without autograd.

A full forward of an L-layer GNN on N nodes holds every layer's per-edge intermediates (GAT's
attention, messages) for all E edges at once, and with autograd keeps them all. Here layer ``l``
runs on one chunk of targets at a time, over the chunk's incoming edges and the sources they
read, so the peak beyond the ``[N, F]`` layer outputs is one chunk's edges (PyG's
``examples/reddit.py`` ``inference`` does the same with a full-neighbour loader). The result
equals the full forward: every target sees all its incoming edges.

Models opt in by exposing ``num_layers``, ``prepare``, ``layer`` and ``readout`` (the built-in
GAT, GCN, GraphSAGE and MLP do; see :class:`LayerwiseModel`). Any other model (a user's own,
whose layers this code cannot see) runs one full forward under ``no_grad``: no autograd graph,
but its whole-graph activations at once.
"""

from __future__ import annotations

from typing import Protocol, cast, runtime_checkable

import torch
from torch import Tensor, nn

from study.models.base import ModelOutput
from study.sampling import CSR

#: Target nodes per chunk of layer-wise inference: a chunk's edges are about this times the
#: mean in-degree, so 16k nodes at degree 10 is 160k edges (a few MB per feature channel
#: group), far below any graph that needs the chunking and large enough to amortise the
#: per-call overhead.
INFERENCE_CHUNK_NODES = 16384


@runtime_checkable
class LayerwiseModel(Protocol):
    """What :func:`layerwise_forward` needs of a model (see :class:`study.models.stack.ConvStack`).

    ``forward`` must equal: ``h = x``; for each layer ``h = layer(l, h, edge_index)``, the
    outputs of all but the last layer being the hidden features; ``logits = readout(h)``.
    """

    reads_graph: bool

    @property
    def num_layers(self) -> int: ...

    def prepare(self, edge_index: Tensor, num_nodes: int) -> tuple[Tensor, Tensor | None]: ...

    def layer(
        self,
        index: int,
        x: Tensor,
        edge_index: Tensor,
        edge_weight: Tensor | None = None,
        num_targets: int | None = None,
    ) -> Tensor: ...

    def readout(self, x: Tensor) -> Tensor: ...


def supports_layerwise(model: nn.Module) -> bool:
    """Whether ``model`` has the layer-wise path (else :func:`layerwise_forward` runs it whole)."""
    return isinstance(model, LayerwiseModel)


def chunk_subgraph(csr: CSR, start: int, stop: int) -> tuple[Tensor, Tensor, Tensor]:
    """The incoming edges of targets ``start..stop-1``, relabelled for a local forward.

    Returns:
        ``(extra, edge_index, entries)``: ``extra [M]`` the sources outside the chunk (global
        ids, sorted), local node ``r`` being ``start + r`` for ``r < stop - start`` and
        ``extra[r - (stop - start)]`` after; ``edge_index [2, E_c]`` the chunk's edges in local
        ids; ``entries [E_c]`` their positions in ``csr.col``.
    """
    lo, hi = int(csr.rowptr[start]), int(csr.rowptr[stop])
    width = stop - start
    src = csr.col[lo:hi]
    deg = csr.rowptr[start + 1 : stop + 1] - csr.rowptr[start:stop]
    dst = torch.repeat_interleave(torch.arange(width), deg)
    outside = (src < start) | (src >= stop)
    extra = torch.unique(src[outside])
    local_src = src - start
    local_src[outside] = width + torch.searchsorted(extra, src[outside])
    return extra, torch.stack([local_src, dst]), torch.arange(lo, hi)


@torch.no_grad()
def layerwise_forward(
    model: nn.Module,
    x: Tensor,
    edge_index: Tensor,
    *,
    chunk_nodes: int = INFERENCE_CHUNK_NODES,
    device: str | torch.device = "cpu",
) -> ModelOutput:
    """The model's outputs on a whole graph, layer by layer in chunks of target nodes.

    Args:
        model: a :class:`LayerwiseModel` (else one full forward under ``no_grad``).
        x: ``[N, F]`` node features (on the CPU; each chunk moves to ``device``).
        edge_index: ``[2, E]`` edges ``j -> i``.
        chunk_nodes: target nodes per chunk.
        device: where each chunk runs.

    Returns:
        ``ModelOutput`` on the CPU with ``logits [N, C]`` and the hidden features, equal (up to
        float rounding) to ``model(x, edge_index)`` in eval mode.
    """
    was_training = model.training
    model.eval()
    try:
        if not supports_layerwise(model):
            out = model(x.to(device), edge_index.to(device))
            return ModelOutput(
                logits=None if out.logits is None else out.logits.cpu(),
                hidden=[h.cpu() for h in out.hidden],
            )
        return _layerwise(
            cast(LayerwiseModel, model), x, edge_index, chunk_nodes, torch.device(device)
        )
    finally:
        model.train(was_training)


def _layerwise(
    model: LayerwiseModel, x: Tensor, edge_index: Tensor, chunk_nodes: int, dev: torch.device
) -> ModelOutput:
    n = x.size(0)
    csr, weight = None, None
    if model.reads_graph:
        edges, edge_weight = model.prepare(edge_index, n)
        csr = CSR.from_edge_index(edges, n)
        weight = None if edge_weight is None else edge_weight[csr.perm]
    hidden: list[Tensor] = []
    h = x
    for index in range(model.num_layers):
        out: Tensor | None = None
        for start in range(0, n, chunk_nodes):
            stop = min(start + chunk_nodes, n)
            if csr is None:
                part = model.layer(index, h[start:stop].to(dev), _NO_EDGES.to(dev))
            else:
                extra, local, entries = chunk_subgraph(csr, start, stop)
                inputs = torch.cat([h[start:stop], h[extra]]).to(dev)
                w = None if weight is None else weight[entries].to(dev)
                # Bipartite: only the chunk's own outputs are computed, not its sources'.
                part = model.layer(index, inputs, local.to(dev), w, stop - start)
            if out is None:  # allocated once its width is known: no list of chunks to concat
                out = torch.empty((n, part.shape[1]), dtype=part.dtype)
            out[start:stop] = part.cpu()
        assert out is not None, "a graph without nodes"
        h = out
        if index < model.num_layers - 1:
            hidden.append(h)
    logits = model.readout(h)
    return ModelOutput(logits=logits, hidden=hidden or [logits])


_NO_EDGES = torch.empty((2, 0), dtype=torch.long)
