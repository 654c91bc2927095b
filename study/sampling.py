"""Neighbour sampling for mini-batch training on graphs that do not fit full batch.

GraphSAGE-style (Hamilton et al. 2017): from a batch of seed nodes, each hop keeps at most
``num_neighbors[h]`` incoming edges of every node reached in the hop before, drawn uniformly
without replacement. The result is the subgraph a ``len(num_neighbors)``-layer model needs to
compute the seeds' outputs, relabelled with the seeds first.

PyG's ``NeighborLoader`` needs pyg-lib or torch-sparse, which these machines cannot install
(``STACK_FACTS.md``). :class:`NeighborSampler` uses PyG's sampler where one of them is present
and otherwise its own: plain torch over a CSR of incoming edges, vectorised per hop (a random
key per candidate edge, one sort, the first ``k`` of each node), no Python loop over nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric import typing as pyg_typing


@dataclass(frozen=True)
class CSR:
    """Incoming edges grouped by target: the sources of node ``i`` are
    ``col[rowptr[i]:rowptr[i + 1]]`` and their positions in the original ``edge_index`` are
    ``perm[rowptr[i]:rowptr[i + 1]]``.

    Attributes:
        rowptr: ``[N + 1]`` offsets (int64).
        col: ``[E]`` source node of each edge, edges sorted by target: ``edge_index[0]`` itself
            where the edges already are (no copy), else int32 where ids fit
            (see :func:`index_dtype`).
        perm: ``[E]`` original edge id of each entry of ``col`` (``col``'s dtype), or ``None``
            where ``edge_index`` is sorted by target: entry ``i`` is edge ``i``.
    """

    rowptr: Tensor
    col: Tensor
    perm: Tensor | None

    @property
    def num_nodes(self) -> int:
        return int(self.rowptr.numel() - 1)

    def edge_ids(self, entries: Tensor) -> Tensor:
        """``[M]`` int64 columns in the original ``edge_index`` of ``entries [M]`` of ``col``."""
        return entries.long() if self.perm is None else self.perm[entries].long()

    @classmethod
    def from_edge_index(cls, edge_index: Tensor, num_nodes: int) -> CSR:
        """Group ``edge_index [2, E]`` (source row 0, target row 1) by target.

        Edges already sorted by target (as the loaders store them,
        :func:`study.data.base.sorted_by_target`) cost only ``rowptr``: ``col`` is a view of
        ``edge_index[0]``. Otherwise ``col`` and ``perm`` are int32 where ids fit (half of
        int64's ``16 E`` bytes), from a counting sort in slices (:func:`_counting_sort`). Each
        target's edges keep their input order, as a stable sort would (deterministic ids).
        """
        source, target = edge_index[0], edge_index[1]
        rowptr = _rowptr(target, num_nodes)
        if is_sorted_by_target(target):
            return cls(rowptr, source, None)
        dtype = index_dtype(num_nodes, int(target.numel()))
        perm = _counting_sort(target, rowptr, dtype)
        col = torch.empty_like(perm)
        for lo in range(0, perm.numel(), CSR_BUILD_EDGES):  # gathered in slices: no [E] int64
            col[lo : lo + CSR_BUILD_EDGES] = source[perm[lo : lo + CSR_BUILD_EDGES]].to(dtype)
        return cls(rowptr, col, perm)


def _rowptr(target: Tensor, num_nodes: int) -> Tensor:
    """``[N + 1]`` int64 offsets of each target's run of edges."""
    rowptr = torch.zeros(num_nodes + 1, dtype=torch.long)
    torch.cumsum(torch.bincount(target, minlength=num_nodes), 0, out=rowptr[1:])
    return rowptr


def _counting_sort(target: Tensor, rowptr: Tensor, dtype: torch.dtype) -> Tensor:
    """``[E]`` edge ids (``dtype``) grouped by ``target [E]``, each target's in input order,
    over slices of :data:`CSR_BUILD_EDGES` edges: beyond the result one ``[N]`` cursor and one
    slice's temporaries, not a whole-graph argsort (about ``30 E`` bytes at its peak)."""
    cursor = rowptr[:-1].clone()  # the next free entry of each target
    perm = torch.empty(int(target.numel()), dtype=dtype)
    for lo in range(0, perm.numel(), CSR_BUILD_EDGES):
        part = target[lo : lo + CSR_BUILD_EDGES]
        order = torch.argsort(part, stable=True)
        sorted_part = part[order]
        rank = torch.arange(order.numel()) - first_of_runs(sorted_part)
        pos = cursor[sorted_part] + rank
        perm[pos] = (order + lo).to(dtype)
        # Each target's cursor moves past its last entry (no [N] count per slice).
        cursor.scatter_reduce_(0, sorted_part, pos + 1, reduce="amax")
    return perm


def is_sorted_by_target(target: Tensor) -> bool:
    """Whether ``target [E]`` is nondecreasing (checked in slices: no ``[E]`` temporary)."""
    step = CSR_BUILD_EDGES
    for lo in range(0, max(int(target.numel()) - 1, 0), step):
        part = target[lo : lo + step + 1]  # one past the slice: its boundary pair too
        if bool((part[1:] < part[:-1]).any()):
            return False
    return True


def target_order(edge_index: Tensor, num_nodes: int) -> Tensor | None:
    """``[E]`` permutation (int32 where ids fit) that sorts ``edge_index [2, E]`` by target,
    each target's edges in input order (a stable sort), or ``None`` where it already is."""
    target = edge_index[1]
    if is_sorted_by_target(target):
        return None
    dtype = index_dtype(num_nodes, int(target.numel()))
    return _counting_sort(target, _rowptr(target, num_nodes), dtype)


#: Edges per slice of :meth:`CSR.from_edge_index`'s counting sort: a slice's temporaries are
#: a few times 8 bytes per edge (about 10 MB here). Smaller slices leave less freed memory in
#: the allocator's heap (10M edges: peak 136 MiB beyond the graph here, 177 MiB with 1M-edge
#: slices, for 84 MiB of CSR) at some speed (8 s vs 4 s on a loaded 2-vCPU machine).
CSR_BUILD_EDGES = 1 << 18


def index_dtype(num_nodes: int, num_edges: int) -> torch.dtype:
    """int32 where every node id and edge position fits in it, else int64."""
    return torch.int32 if max(num_nodes, num_edges) < 2**31 else torch.long


@dataclass(frozen=True)
class SampledSubgraph:
    """The sampled computation graph of a batch of seeds.

    Attributes:
        n_id: ``[N_s]`` global ids of its nodes; the first ``num_seeds`` are the seeds, in order.
        edge_index: ``[2, E_s]`` sampled edges ``j -> i`` in local ids (rows of ``n_id``).
        e_id: ``[E_s]`` each sampled edge's column in the full graph's ``edge_index``.
        num_seeds: how many seeds the batch has.
        num_sampled_nodes: nodes first reached in each hop, the seeds' count first
            (``sum == N_s``; PyG's name).
    """

    n_id: Tensor
    edge_index: Tensor
    e_id: Tensor
    num_seeds: int
    num_sampled_nodes: tuple[int, ...] = ()

    def seed_edges(self) -> Tensor:
        """``[E_seed]`` positions in ``edge_index`` of the sampled edges whose target is a seed."""
        return (self.edge_index[1] < self.num_seeds).nonzero().view(-1)


#: A fan-out that keeps every incoming edge (serving's k-hop fetch, k-hop evaluation).
ALL_NEIGHBOURS = 2**62


def _check_fanouts(num_neighbors: Sequence[int]) -> list[int]:
    fanouts = [int(k) for k in num_neighbors]
    if not fanouts or min(fanouts) < 1:
        raise ValueError(f"num_neighbors must list positive integers, got {list(num_neighbors)}")
    return fanouts


def sample_hop(csr: CSR, frontier: Tensor, k: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """At most ``k`` incoming edges of each ``frontier`` node, uniformly without replacement.

    Args:
        csr: the graph's incoming edges by target.
        frontier: ``[M]`` target nodes (global ids).
        k: the fan-out.
        gen: the random generator (the sample is a function of its state).

    Returns:
        ``(entries, targets)``: ``[E_h]`` positions in ``csr.col`` of the chosen edges and their
        ``[E_h]`` target nodes, grouped by frontier node in frontier order.
    """
    start, deg = csr.rowptr[frontier], csr.rowptr[frontier + 1] - csr.rowptr[frontier]
    # Every incident edge of the frontier is a candidate: O(sum of their degrees) per hop.
    seg = torch.repeat_interleave(torch.arange(frontier.numel()), deg)
    first = torch.cumsum(deg, 0) - deg
    offset = torch.arange(seg.numel()) - first[seg]
    keep = (deg <= k)[seg]  # small neighbourhoods are taken whole, no randomness needed
    big = ~keep
    if bool(big.any()):
        # One random key per candidate; sorting by (node, key) shuffles each node's edges, and
        # the first k of every node are a uniform sample without replacement.
        key = torch.rand(int(big.sum()), generator=gen, dtype=torch.float64)
        order = torch.argsort(seg[big].to(torch.float64) + key)
        big_idx = big.nonzero().view(-1)[order]
        rank = torch.arange(big_idx.numel()) - first_of_runs(seg[big_idx])
        keep[big_idx[rank < k]] = True
    chosen = keep.nonzero().view(-1)
    return start[seg[chosen]] + offset[chosen], frontier[seg[chosen]]


def first_of_runs(sorted_ids: Tensor) -> Tensor:
    """For ``[M]`` ids in runs of equal values, the index where each element's run starts."""
    if sorted_ids.numel() == 0:
        return sorted_ids
    new = torch.ones_like(sorted_ids, dtype=torch.bool)
    new[1:] = sorted_ids[1:] != sorted_ids[:-1]
    starts = new.nonzero().view(-1)
    return starts[torch.cumsum(new.long(), 0) - 1]


class NeighborSampler:
    """Samples the ``len(num_neighbors)``-hop computation graph of seed nodes.

    Args:
        edge_index: ``[2, E]`` the full graph (source row 0, target row 1).
        num_nodes: ``N``.
        num_neighbors: fan-out per hop, the seeds' hop first (``[15, 10]``: 15 incoming edges of
            each seed, 10 of each node they reached).
        use_pyg: PyG's own sampler (``None``: where pyg-lib or torch-sparse is installed).
    """

    def __init__(
        self,
        edge_index: Tensor,
        num_nodes: int,
        num_neighbors: Sequence[int],
        *,
        use_pyg: bool | None = None,
    ) -> None:
        self.fanouts = _check_fanouts(num_neighbors)
        self.num_nodes = int(num_nodes)
        self.use_pyg = pyg_available() if use_pyg is None else use_pyg
        if self.use_pyg:
            from torch_geometric.data import Data
            from torch_geometric.sampler import NeighborSampler as PygSampler

            self._pyg = PygSampler(
                Data(edge_index=edge_index, num_nodes=self.num_nodes), self.fanouts
            )
            return
        self.csr = CSR.from_edge_index(edge_index, self.num_nodes)
        # Global -> local id map, kept between batches and reset after each: O(N) once, not
        # an O(N) allocation per batch.
        self._local = _local_ids(self.csr)

    @classmethod
    def from_csr(cls, csr: CSR, num_neighbors: Sequence[int]) -> NeighborSampler:
        """The plain-torch sampler over a CSR the caller already holds (not built again)."""
        sampler = cls.__new__(cls)
        sampler.fanouts = _check_fanouts(num_neighbors)
        sampler.num_nodes = csr.num_nodes
        sampler.use_pyg = False
        sampler.csr = csr
        sampler._local = _local_ids(csr)
        return sampler

    def csr_or_none(self) -> CSR | None:
        """The graph's CSR (``None`` when PyG's sampler holds its own)."""
        return None if self.use_pyg else self.csr

    def sample(self, seeds: Tensor, gen: torch.Generator) -> SampledSubgraph:
        """The sampled subgraph of ``seeds [B]`` (distinct global ids)."""
        if self.use_pyg:
            return self._sample_pyg(seeds)
        local = self._local
        n_id = [seeds]
        local[seeds] = torch.arange(seeds.numel(), dtype=local.dtype)
        count = seeds.numel()
        frontier = seeds
        entries, targets = [], []
        for k in self.fanouts:
            entry, target = sample_hop(self.csr, frontier, k, gen)
            entries.append(entry)
            targets.append(target)
            src = self.csr.col[entry]
            new = torch.unique(src[local[src] < 0]).long()  # sorted: deterministic local ids
            local[new] = torch.arange(count, count + new.numel(), dtype=local.dtype)
            count += new.numel()
            n_id.append(new)
            frontier = new
        entry, target = torch.cat(entries), torch.cat(targets)
        src = self.csr.col[entry]
        edge_index = torch.stack([local[src], local[target]]).long()
        nodes = torch.cat(n_id)
        local[nodes] = -1
        return SampledSubgraph(
            nodes,
            edge_index,
            self.csr.edge_ids(entry),
            int(seeds.numel()),
            tuple(int(part.numel()) for part in n_id),
        )

    def _sample_pyg(self, seeds: Tensor) -> SampledSubgraph:  # pragma: no cover - needs pyg-lib
        from torch_geometric.sampler import NodeSamplerInput

        out = self._pyg.sample_from_nodes(NodeSamplerInput(input_id=None, node=seeds))
        edge_index = torch.stack([out.row, out.col])  # as NeighborLoader's filter_data builds it
        edge = out.edge if out.edge is not None else torch.empty(0, dtype=torch.long)
        hops = tuple(int(n) for n in out.num_sampled_nodes or ())
        return SampledSubgraph(out.node, edge_index, edge, int(seeds.numel()), hops)


def _local_ids(csr: CSR) -> Tensor:
    """``[N]`` of -1: the sampler's global -> local id map (int32 where ids fit)."""
    dtype = index_dtype(csr.num_nodes, int(csr.col.numel()))
    return torch.full((csr.num_nodes,), -1, dtype=dtype)


def pyg_available() -> bool:
    """Whether PyG's ``NeighborSampler`` can run here (it needs pyg-lib or torch-sparse)."""
    return bool(pyg_typing.WITH_PYG_LIB or pyg_typing.WITH_TORCH_SPARSE)
