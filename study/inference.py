"""Layer-wise inference with bounded memory: a whole graph's outputs, one layer at a time, in
chunks of target nodes, without autograd.

A full forward of an L-layer GNN on N nodes holds every layer's per-edge intermediates (GAT's
attention, messages) for all E edges at once, and with autograd keeps them all. Here layer ``l``
runs on one chunk of targets at a time, over the chunk's incoming edges and the sources they
read, so the peak beyond the ``[N, F]`` layer outputs is one chunk's edges (PyG's
``examples/reddit.py`` ``inference`` does the same with a full-neighbour loader). The result
equals the full forward: every target sees all its incoming edges.

Models opt in by exposing ``num_layers``, ``layer``, ``readout``, ``chunk_state``
and ``chunk_edges`` (the built-in GAT, GCN, GraphSAGE and MLP do; see :class:`LayerwiseModel`).
Any other model (a user's own, whose layers this code cannot see) runs one full forward under
``no_grad``: no autograd graph, but its whole-graph activations at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, cast, runtime_checkable

import torch
from torch import Tensor, nn

from study.models.base import ModelOutput
from study.sampling import ALL_NEIGHBOURS, CSR, NeighborSampler, SampledSubgraph

#: Target nodes per chunk of layer-wise inference: a chunk's edges are about this times the
#: mean in-degree (4k nodes at degree 10: 40k edges and up to 45k input rows), and k-hop
#: evaluation reads about as many rows per chunk (:func:`_khop`), near what one sampled
#: training step holds (a 1,024-seed batch with fan-out [10, 5]: ~54k nodes), so evaluation
#: does not set a mini-batch run's peak; 16k set it at 3M nodes (about 200 MiB per chunk).
INFERENCE_CHUNK_NODES = 4096


class RowStore(Protocol):
    """A layer's ``[N, F]`` output kept outside the process's memory (a file,
    :class:`study.mapped.MappedArray`): written a chunk of rows at a time, read by rows."""

    @property
    def tensor(self) -> Tensor: ...

    def rows(self, index: Tensor) -> Tensor: ...

    def write(self, start: int, values: Tensor) -> None: ...


#: Makes the :class:`RowStore` of a ``[N, F]`` output of layer-wise inference by name
#: (``hidden0``, ..., ``logits``).
Allocate = Callable[[str, tuple[int, int]], RowStore]


def _take(h: Tensor | RowStore, index: Tensor) -> Tensor:
    return h[index] if isinstance(h, Tensor) else h.rows(index)


def _chunk(h: Tensor | RowStore, start: int, stop: int) -> Tensor:
    """Rows ``start..stop-1``: a view of a tensor, one read of a store."""
    return h[start:stop] if isinstance(h, Tensor) else h.rows(torch.arange(start, stop))


@runtime_checkable
class LayerwiseModel(Protocol):
    """What :func:`layerwise_forward` needs of a model (see :class:`study.models.stack.ConvStack`).

    ``forward`` must equal: ``h = x``; for each layer ``h = layer(l, h, edge_index)``, the
    outputs of all but the last layer being the hidden features; ``logits = readout(h)``, a
    function of each row alone (it runs per chunk).
    ``chunk_state`` (from the whole graph's CSR) and ``chunk_edges`` (per chunk) give a layer
    the edges and weights it reads.
    """

    reads_graph: bool

    @property
    def num_layers(self) -> int: ...

    def layer(
        self,
        index: int,
        x: Tensor,
        edge_index: Tensor,
        edge_weight: Tensor | None = None,
        num_targets: int | None = None,
    ) -> Tensor: ...

    def readout(self, x: Tensor) -> Tensor: ...

    def chunk_state(self, rowptr: Tensor, col: Tensor) -> Tensor | None: ...

    def chunk_edges(
        self, edge_index: Tensor, node_ids: Tensor, num_targets: int, state: Tensor | None
    ) -> tuple[Tensor, Tensor | None]: ...


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
    local_src = (src - start).long()
    local_src[outside] = width + torch.searchsorted(extra, src[outside])
    return extra.long(), torch.stack([local_src, dst]), torch.arange(lo, hi)


@torch.no_grad()
def layerwise_forward(
    model: nn.Module,
    x: Tensor,
    edge_index: Tensor,
    *,
    chunk_nodes: int = INFERENCE_CHUNK_NODES,
    device: str | torch.device = "cpu",
    csr: CSR | None = None,
    keep_hidden: bool = True,
    allocate: Allocate | None = None,
) -> ModelOutput:
    """The model's outputs on a whole graph, layer by layer in chunks of target nodes.

    Args:
        model: a :class:`LayerwiseModel` (else one full forward under ``no_grad``).
        x: ``[N, F]`` node features (on the CPU; each chunk moves to ``device``).
        edge_index: ``[2, E]`` edges ``j -> i``.
        chunk_nodes: target nodes per chunk.
        device: where each chunk runs.
        csr: ``edge_index``'s :class:`CSR` when the caller already holds one (the sampler's):
            not built again.
        keep_hidden: ``False``: each hidden layer's ``[N, F_l]`` is freed once the next is
            computed (evaluation reads only the logits); ``hidden`` is then ``[logits]``.
        allocate: makes each layer's ``[N, F_l]`` output (``hidden<l>``) and the logits
            outside memory (default: tensors in memory); the next layer reads its rows back.
            Not called for a model without the layer-wise path.

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
            cast(LayerwiseModel, model),
            x,
            edge_index,
            chunk_nodes,
            torch.device(device),
            csr,
            keep_hidden,
            allocate,
        )
    finally:
        model.train(was_training)


def _layerwise(
    model: LayerwiseModel,
    x: Tensor,
    edge_index: Tensor,
    chunk_nodes: int,
    dev: torch.device,
    csr: CSR | None,
    keep_hidden: bool,
    allocate: Allocate | None,
) -> ModelOutput:
    n = x.size(0)
    state = None
    if model.reads_graph:
        # The graph's own edges, grouped once; what a layer adds (GCN's self-loops and
        # whole-graph normalisation) is made per chunk from ``state``, not as a second
        # whole-graph edge list.
        csr = csr if csr is not None else CSR.from_edge_index(edge_index, n)
        state = model.chunk_state(csr.rowptr, csr.col)
    hidden: list[Tensor] = []
    h: Tensor | RowStore = x
    last = model.num_layers - 1
    for index in range(model.num_layers):
        out: Tensor | RowStore | None = None
        for start in range(0, n, chunk_nodes):
            stop = min(start + chunk_nodes, n)
            own = _chunk(h, start, stop)
            if not model.reads_graph or csr is None:
                part = model.layer(index, own.to(dev), _NO_EDGES.to(dev))
            else:
                extra, local, _ = chunk_subgraph(csr, start, stop)
                node_ids = torch.cat([torch.arange(start, stop), extra])
                local, w = model.chunk_edges(local, node_ids, stop - start, state)
                inputs = torch.cat([own, _take(h, extra)]).to(dev)
                w = None if w is None else w.to(dev)
                # Bipartite: only the chunk's own outputs are computed, not its sources'.
                part = model.layer(index, inputs, local.to(dev), w, stop - start)
            if index == last:
                part = model.readout(part)  # row-wise: no [N, heads * F] of the last layer
            if out is None:  # allocated once its width is known: no list of chunks to concat
                shape = (n, int(part.shape[1]))
                name = "logits" if index == last else f"hidden{index}"
                out = (
                    torch.empty(shape, dtype=part.dtype)
                    if allocate is None
                    else allocate(name, shape)
                )
            if isinstance(out, Tensor):
                out[start:stop] = part.cpu()
            else:
                out.write(start, part.cpu())
        assert out is not None, "a graph without nodes"
        h = out
        if index < last and keep_hidden:
            hidden.append(_whole(h))
    return ModelOutput(logits=_whole(h), hidden=hidden or [_whole(h)])


def _whole(h: Tensor | RowStore) -> Tensor:
    return h if isinstance(h, Tensor) else h.tensor


@torch.no_grad()
def target_logits(
    model: nn.Module,
    x: Tensor,
    edge_index: Tensor,
    targets: Tensor,
    *,
    chunk_nodes: int = INFERENCE_CHUNK_NODES,
    device: str | torch.device = "cpu",
    csr: CSR | None = None,
) -> Tensor:
    """``[T, C]`` logits of ``targets [T]`` (global ids) only, in eval mode, without autograd.

    Evaluation scores a split's labelled nodes, often a few percent of the graph. When the
    targets' whole ``L``-hop neighbourhoods cost less than ``L`` layer-wise passes over every
    node (:func:`khop_is_cheaper`), each chunk of targets runs on its exact ``L``-hop subgraph
    (every incoming edge, as serving fetches it): memory is a chunk's neighbourhood, nothing
    ``[N, F]``. Otherwise :func:`layerwise_forward` runs and its rows are taken. Either way the
    result equals ``model(x, edge_index).logits[targets]`` up to float rounding.
    """
    n = x.size(0)
    if supports_layerwise(model) and targets.numel() > 0:
        layered = cast(LayerwiseModel, model)
        hops = layered.num_layers if layered.reads_graph else 0
        degree = edge_index.shape[1] / max(n, 1)
        if khop_is_cheaper(targets.numel(), n, degree, hops):
            if hops > 0 and csr is None:
                csr = CSR.from_edge_index(edge_index, n)
            was_training = model.training
            model.eval()
            try:
                return _khop(layered, x, targets, csr, hops, degree, chunk_nodes, device)
            finally:
                model.train(was_training)
    out = layerwise_forward(
        model, x, edge_index, chunk_nodes=chunk_nodes, device=device, csr=csr, keep_hidden=False
    )
    assert out.logits is not None, "a model without logits"
    return out.logits[targets]


def khop_reach(degree: float, hops: int) -> float:
    """Expected nodes in one target's ``hops``-hop neighbourhood at mean in-degree ``degree``
    (``1 + d + ... + d^hops``; an overestimate where neighbourhoods overlap)."""
    return sum(degree**h for h in range(hops + 1))


def khop_is_cheaper(num_targets: int, num_nodes: int, degree: float, hops: int) -> bool:
    """Whether per-target neighbourhoods read fewer node rows than ``hops`` layer-wise passes
    (each reading every node and its ``degree`` sources): ``T * reach <= hops * N * (1 + d)``.
    A model that reads no graph (``hops = 0``) always runs on the targets alone."""
    return num_targets * khop_reach(degree, hops) <= max(hops, 1) * num_nodes * (1.0 + degree)


def _khop(
    model: LayerwiseModel,
    x: Tensor,
    targets: Tensor,
    csr: CSR | None,
    hops: int,
    degree: float,
    chunk_nodes: int,
    device: str | torch.device,
) -> Tensor:
    dev = torch.device(device)
    if hops == 0 or csr is None:
        parts = []
        for chunk in targets.split(chunk_nodes):
            h = x[chunk].to(dev)
            for index in range(model.num_layers):
                h = model.layer(index, h, _NO_EDGES.to(dev))
            parts.append(model.readout(h).cpu())
        return torch.cat(parts)
    state = model.chunk_state(csr.rowptr, csr.col)
    sampler = NeighborSampler.from_csr(csr, [ALL_NEIGHBOURS] * hops)
    gen = torch.Generator()  # unused: every neighbour is kept
    # As many targets per chunk as make about the rows one layer-wise chunk reads.
    per_chunk = max(1, int(chunk_nodes * (1.0 + degree) / khop_reach(degree, hops)))
    parts = []
    for chunk in targets.split(per_chunk):
        sub = sampler.sample(chunk, gen)
        parts.append(subgraph_logits(model, x[sub.n_id].to(dev), sub, state, dev).cpu())
    return torch.cat(parts)


def subgraph_logits(
    model: LayerwiseModel,
    x: Tensor,
    sub: SampledSubgraph,
    state: Tensor | None,
    device: torch.device,
) -> Tensor:
    """``[B, C]`` logits of ``sub``'s seeds from its exact k-hop subgraph (sampled with every
    neighbour, k the model's layers): ``x [N_s, F]`` its nodes' features on ``device``,
    ``state`` the model's :meth:`~LayerwiseModel.chunk_state` of the whole graph."""
    hops, edges = model.num_layers, sub.edge_index
    h = x
    for index in range(hops):
        # Layer l is needed at nodes within hops - 1 - l of a seed (the first rows: the sampler
        # numbers nodes hop by hop), over every edge into them.
        keep = sum(sub.num_sampled_nodes[: hops - index])
        local, w = model.chunk_edges(edges[:, edges[1] < keep], sub.n_id, keep, state)
        w = None if w is None else w.to(device)
        h = model.layer(index, h, local.to(device), w, keep)
    return model.readout(h)


_NO_EDGES = torch.empty((2, 0), dtype=torch.long)
