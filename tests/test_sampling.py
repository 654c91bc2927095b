"""The plain-torch neighbour sampler against PyG's ``k_hop_subgraph`` on small graphs."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.utils import k_hop_subgraph

from study.sampling import CSR, NeighborSampler, first_of_runs, sample_hop


def random_graph(n: int = 300, e: int = 3000, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (2, e), generator=gen)


def test_csr_groups_incoming_edges_by_target() -> None:
    edge_index = torch.tensor([[0, 2, 1, 2, 0], [1, 1, 2, 0, 2]])
    csr = CSR.from_edge_index(edge_index, 3)
    assert csr.rowptr.tolist() == [0, 1, 3, 5]
    assert csr.col.tolist() == [2, 0, 2, 1, 0]  # sources of 0, of 1, of 2 (input order kept)
    assert torch.equal(edge_index[0][csr.perm], csr.col)
    assert torch.equal(edge_index[1][csr.perm], torch.tensor([0, 1, 1, 2, 2]))


def test_first_of_runs() -> None:
    ids = torch.tensor([0, 0, 0, 3, 3, 5])
    assert first_of_runs(ids).tolist() == [0, 0, 0, 3, 3, 5]


def test_one_hop_takes_min_of_degree_and_fanout_without_replacement() -> None:
    edge_index = random_graph()
    csr = CSR.from_edge_index(edge_index, 300)
    frontier = torch.arange(0, 300, 7)
    entries, targets = sample_hop(csr, frontier, 4, torch.Generator().manual_seed(1))
    deg = torch.bincount(edge_index[1], minlength=300)
    counts = torch.bincount(targets, minlength=300)
    assert torch.equal(counts[frontier], deg[frontier].clamp(max=4))
    assert entries.unique().numel() == entries.numel()  # no edge twice
    assert torch.equal(edge_index[1][csr.perm[entries]], targets)  # each edge points at its node


@pytest.mark.parametrize("fanouts", [[3], [5, 2], [2, 2, 2]])
def test_sample_is_a_subgraph_of_the_k_hop_neighbourhood(fanouts: list[int]) -> None:
    n, edge_index = 300, random_graph()
    sampler = NeighborSampler(edge_index, n, fanouts, use_pyg=False)
    seeds = torch.tensor([5, 17, 200, 42])
    sub = sampler.sample(seeds, torch.Generator().manual_seed(0))
    assert torch.equal(sub.n_id[:4], seeds)  # seeds first, in order
    assert sub.n_id.unique().numel() == sub.n_id.numel()
    assert sum(sub.num_sampled_nodes) == sub.n_id.numel() and sub.num_sampled_nodes[0] == 4
    # Every sampled edge exists, and its id names it in the full graph.
    assert torch.equal(sub.n_id[sub.edge_index], edge_index[:, sub.e_id])
    # Every node lies in PyG's k-hop neighbourhood (edges flow source -> target into seeds).
    subset, _, _, _ = k_hop_subgraph(seeds, len(fanouts), edge_index, num_nodes=n)
    assert set(sub.n_id.tolist()) <= set(subset.tolist())
    # Fan-out per hop: a node first reached in hop h keeps min(in-degree, fanouts[h]) edges.
    deg = torch.bincount(edge_index[1], minlength=n)
    kept = torch.bincount(sub.edge_index[1], minlength=sub.n_id.numel())
    start = 0
    for hop, k in enumerate(fanouts):
        stop = start + sub.num_sampled_nodes[hop]
        assert torch.equal(kept[start:stop], deg[sub.n_id[start:stop]].clamp(max=k))
        start = stop
    assert kept[start:].sum() == 0  # the last hop's nodes are leaves
    assert sub.seed_edges().numel() == int(deg[seeds].clamp(max=fanouts[0]).sum())


def test_sampling_is_deterministic_under_a_seed() -> None:
    edge_index = random_graph()
    sampler = NeighborSampler(edge_index, 300, [4, 3], use_pyg=False)
    seeds = torch.arange(10)
    a = sampler.sample(seeds, torch.Generator().manual_seed(3))
    b = sampler.sample(seeds, torch.Generator().manual_seed(3))
    c = sampler.sample(seeds, torch.Generator().manual_seed(4))
    assert torch.equal(a.n_id, b.n_id) and torch.equal(a.e_id, b.e_id)
    assert not torch.equal(a.e_id, c.e_id)


def test_bad_fanouts_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        NeighborSampler(random_graph(), 300, [3, 0], use_pyg=False)


def test_csr_is_int32_and_equals_a_stable_argsort_across_build_slices(monkeypatch) -> None:
    import study.sampling as sampling

    edge_index = random_graph(e=3001)
    monkeypatch.setattr(sampling, "CSR_BUILD_EDGES", 128)  # 24 slices of the counting sort
    csr = CSR.from_edge_index(edge_index, 300)
    assert csr.col.dtype == csr.perm.dtype == torch.int32  # ids fit: half of int64's bytes
    perm = torch.argsort(edge_index[1], stable=True)
    assert torch.equal(csr.perm.long(), perm)
    assert torch.equal(csr.col.long(), edge_index[0][perm])
    assert csr.rowptr.tolist() == [0, *torch.bincount(edge_index[1], minlength=300).cumsum(0)]
    assert sampling.index_dtype(10, 2**31) == torch.long  # past int32: int64 ids


def test_int32_sampler_with_every_neighbour_is_the_k_hop_subgraph() -> None:
    n, edge_index = 300, random_graph()
    sampler = NeighborSampler(edge_index, n, [2**62, 2**62], use_pyg=False)
    assert sampler.csr.col.dtype == torch.int32
    seeds = torch.tensor([3, 99, 250])
    sub = sampler.sample(seeds, torch.Generator())
    assert sub.n_id.dtype == sub.edge_index.dtype == sub.e_id.dtype == torch.long
    subset, _, _, _ = k_hop_subgraph(seeds, 2, edge_index, num_nodes=n)
    assert set(sub.n_id.tolist()) == set(subset.tolist())
    # Every edge into a node within one hop of a seed, each once.
    inner = torch.zeros(n, dtype=torch.bool)
    inner[sub.n_id[: sum(sub.num_sampled_nodes[:2])]] = True
    assert sorted(sub.e_id.tolist()) == inner[edge_index[1]].nonzero().view(-1).tolist()
    again = NeighborSampler.from_csr(sampler.csr, [2**62, 2**62]).sample(seeds, torch.Generator())
    assert torch.equal(again.n_id, sub.n_id) and torch.equal(again.e_id, sub.e_id)


def test_target_sorted_edges_are_their_own_csr_and_sample_alike(monkeypatch) -> None:
    import study.sampling as sampling

    n, edge_index = 300, random_graph()
    edge_index = edge_index[:, torch.argsort(edge_index[1], stable=True)]
    csr = CSR.from_edge_index(edge_index, n)
    assert csr.perm is None  # no [E] permutation: entry i is edge i
    assert csr.col.data_ptr() == edge_index[0].data_ptr()  # a view, not a copy
    monkeypatch.setattr(sampling, "is_sorted_by_target", lambda target: False)
    copied = CSR.from_edge_index(edge_index, n)  # the counting sort's copy of the same edges
    assert copied.perm is not None and torch.equal(copied.perm.long(), torch.arange(3000))
    assert torch.equal(copied.rowptr, csr.rowptr) and torch.equal(copied.col.long(), csr.col)
    seeds = torch.tensor([5, 17, 200, 42])
    a = NeighborSampler.from_csr(csr, [4, 3]).sample(seeds, torch.Generator().manual_seed(0))
    b = NeighborSampler.from_csr(copied, [4, 3]).sample(seeds, torch.Generator().manual_seed(0))
    assert torch.equal(a.n_id, b.n_id) and torch.equal(a.edge_index, b.edge_index)
    assert torch.equal(a.e_id, b.e_id)
    assert torch.equal(a.n_id[a.edge_index], edge_index[:, a.e_id])


def test_sortedness_is_checked_across_slice_boundaries(monkeypatch) -> None:
    import study.sampling as sampling

    monkeypatch.setattr(sampling, "CSR_BUILD_EDGES", 4)
    target = torch.arange(12)
    assert sampling.is_sorted_by_target(target)
    for i in range(1, 12):  # one descent anywhere, a slice boundary included, is found
        bad = target.clone()
        bad[i] = bad[i - 1] - 1
        assert not sampling.is_sorted_by_target(bad), i
    assert sampling.is_sorted_by_target(torch.empty(0, dtype=torch.long))
    assert sampling.target_order(torch.tensor([[0, 1], [2, 2]]), 3) is None
    order = sampling.target_order(torch.tensor([[0, 1, 2], [2, 0, 2]]), 3)
    assert order is not None and order.tolist() == [1, 0, 2]
