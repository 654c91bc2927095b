"""Loaders store a graph's edges sorted by target, per-edge attributes permuted alike, without
changing what a model computes."""

from __future__ import annotations

import torch
from torch_geometric.data import Data

from study.data.base import sorted_by_target
from study.data.planetoid import transductive_task
from study.models import build_model
from study.sampling import CSR, is_sorted_by_target


def typed_graph() -> Data:
    gen = torch.Generator().manual_seed(0)
    n, e = 60, 400
    edge_index = torch.randint(0, n, (2, e), generator=gen)
    return Data(
        x=torch.randn(n, 5, generator=gen),
        edge_index=edge_index,
        y=torch.randint(0, 3, (n,), generator=gen),
        edge_type=torch.randint(0, 4, (e,), generator=gen),
        edge_time=torch.rand(e, generator=gen, dtype=torch.float64),
        edge_attr=torch.randn(e, 2, generator=gen),
        node_type=torch.randint(0, 2, (n,), generator=gen),
    )


def test_edges_and_every_per_edge_attribute_move_together() -> None:
    data = typed_graph()
    before = data.edge_index.clone()
    out = sorted_by_target(data)
    assert is_sorted_by_target(out.edge_index[1])
    assert torch.equal(data.edge_index, before)  # the caller's graph is not changed

    # The same (source, target, type, time, attr) records, reordered; node attributes kept.
    def records(g: Data) -> list[tuple]:
        return sorted(
            (int(s), int(t), int(k), float(w), tuple(a.tolist()))
            for s, t, k, w, a in zip(
                g.edge_index[0], g.edge_index[1], g.edge_type, g.edge_time, g.edge_attr,
                strict=True,
            )
        )  # fmt: skip

    assert records(out) == records(data)
    assert out.node_type is data.node_type and out.x is data.x
    # Each target's edges keep their input order (a stable sort: deterministic ids).
    perm = torch.argsort(data.edge_index[1], stable=True)
    assert torch.equal(out.edge_type, data.edge_type[perm])
    assert sorted_by_target(out) is out  # already sorted: nothing copied


def test_a_model_computes_the_same_on_sorted_edges() -> None:
    data = typed_graph()
    out = sorted_by_target(data)
    for arch in ("gcn", "gat", "sage"):
        torch.manual_seed(0)
        model = build_model(arch, in_channels=5, out_channels=3, width=8, depth=2).eval()
        with torch.no_grad():
            want = model(data.x, data.edge_index).logits
            got = model(out.x, out.edge_index).logits
        assert want is not None and got is not None
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_transductive_task_holds_sorted_edges_whose_csr_is_a_view() -> None:
    data = typed_graph()
    masks = [torch.arange(60) % 3 == k for k in range(3)]
    task = transductive_task("t", data, *masks, 3)
    graph = task.train[0]
    assert task.val[0].edge_index is graph.edge_index  # one graph, three views
    csr = CSR.from_edge_index(graph.edge_index, graph.num_nodes)
    assert csr.perm is None and csr.col.data_ptr() == graph.edge_index[0].data_ptr()
