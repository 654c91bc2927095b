"""Layer-wise chunked inference equals the full forward; models without layers run whole."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch_geometric.nn import GCNConv

from study.inference import (
    chunk_subgraph,
    khop_is_cheaper,
    layerwise_forward,
    supports_layerwise,
    target_logits,
)
from study.models import build_model
from study.models.user import HookedModel
from study.sampling import CSR


def graph(n: int = 400, e: int = 2400) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 12, generator=gen)
    edge_index = torch.randint(0, n - 20, (2, e), generator=gen)  # the last 20 nodes isolated
    return x, edge_index


@pytest.mark.parametrize(
    ("arch", "sizes"),
    [
        ("gat", {"width": 4, "depth": 3, "heads": 2}),
        ("gcn", {"width": 8, "depth": 3}),
        ("sage", {"width": 8, "depth": 2}),
        ("mlp", {"width": 8, "depth": 2}),
        ("gcn", {"width": 8, "depth": 1}),
    ],
)
def test_layerwise_equals_the_full_forward(arch: str, sizes: dict) -> None:
    x, edge_index = graph()
    torch.manual_seed(0)
    model = build_model(arch, in_channels=12, out_channels=5, **sizes).eval()
    assert supports_layerwise(model)
    with torch.no_grad():
        full = model(x, edge_index)
    chunked = layerwise_forward(model, x, edge_index, chunk_nodes=37)  # 11 uneven chunks
    assert full.logits is not None and chunked.logits is not None
    torch.testing.assert_close(chunked.logits, full.logits, rtol=1e-5, atol=1e-5)
    assert len(chunked.hidden) == len(full.hidden)
    for got, want in zip(chunked.hidden, full.hidden, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not chunked.logits.requires_grad  # no autograd graph was built


def test_layerwise_restores_training_mode() -> None:
    x, edge_index = graph()
    model = build_model("gat", in_channels=12, out_channels=5, width=4, depth=2, heads=2)
    model.train()
    layerwise_forward(model, x, edge_index, chunk_nodes=100)
    assert model.training


def test_chunk_subgraph_holds_every_incoming_edge_of_the_chunk() -> None:
    x, edge_index = graph()
    csr = CSR.from_edge_index(edge_index, 400)
    extra, local, entries = chunk_subgraph(csr, 100, 150)
    assert local.shape[1] == int(((edge_index[1] >= 100) & (edge_index[1] < 150)).sum())
    nodes = torch.cat([torch.arange(100, 150), extra])
    assert torch.equal(nodes[local], edge_index[:, csr.edge_ids(entries)])  # the same edges
    assert not ((extra >= 100) & (extra < 150)).any()


class _UserNet(nn.Module):
    def __init__(self, in_channels: int = 12) -> None:
        super().__init__()
        self.conv1, self.conv2 = GCNConv(in_channels, 8), GCNConv(8, 5)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return self.conv2(self.conv1(x, edge_index).relu(), edge_index)


def test_a_user_model_runs_whole_without_gradients() -> None:
    x, edge_index = graph()
    model = HookedModel(_UserNet(), ["conv1"], {"arch": "factory"}).eval()
    assert not supports_layerwise(model)
    out = layerwise_forward(model, x, edge_index)
    with torch.no_grad():
        want = model(x, edge_index)
    assert out.logits is not None and want.logits is not None
    torch.testing.assert_close(out.logits, want.logits)
    assert not out.logits.requires_grad


def test_gcn_chunks_normalise_by_the_whole_graph_with_self_loops_and_duplicates() -> None:
    x, edge_index = graph()
    loops = torch.arange(0, 300, 3).repeat(2, 1)  # existing self-loops: gcn_norm replaces them
    edge_index = torch.cat([edge_index, loops, loops[:, :20], edge_index[:, :50]], dim=1)
    torch.manual_seed(0)
    model = build_model("gcn", in_channels=12, out_channels=5, width=8, depth=2).eval()
    with torch.no_grad():
        full = model(x, edge_index)
    chunked = layerwise_forward(model, x, edge_index, chunk_nodes=29)
    torch.testing.assert_close(chunked.logits, full.logits, rtol=1e-5, atol=1e-5)


def test_a_given_csr_is_used_not_built_again(monkeypatch) -> None:
    x, edge_index = graph()
    csr = CSR.from_edge_index(edge_index, 400)
    model = build_model("sage", in_channels=12, out_channels=5, width=8, depth=2).eval()
    want = layerwise_forward(model, x, edge_index, chunk_nodes=50)

    def no_build(*args: object) -> None:
        raise AssertionError("CSR built again")

    monkeypatch.setattr(CSR, "from_edge_index", no_build)
    got = layerwise_forward(model, x, edge_index, chunk_nodes=50, csr=csr, keep_hidden=False)
    torch.testing.assert_close(got.logits, want.logits)
    assert len(got.hidden) == 1 and got.hidden[0] is got.logits  # hidden layers not kept


@pytest.mark.parametrize(
    ("arch", "sizes"),
    [
        ("gat", {"width": 4, "depth": 2, "heads": 2}),
        ("gcn", {"width": 8, "depth": 3}),
        ("sage", {"width": 8, "depth": 2}),
        ("mlp", {"width": 8, "depth": 2}),
    ],
)
def test_target_logits_equal_the_full_forward_rows_by_either_path(arch: str, sizes: dict) -> None:
    x, edge_index = graph()
    loops = torch.arange(0, 60, 2).repeat(2, 1)
    edge_index = torch.cat([edge_index, loops], dim=1)  # GCN's self-loop rule in the k-hop path
    torch.manual_seed(0)
    model = build_model(arch, in_channels=12, out_channels=5, **sizes).train()
    with torch.no_grad():
        full = model.eval()(x, edge_index).logits
    model.train()
    few = torch.tensor([3, 390, 7, 150])  # 4 targets: k-hop subgraphs (390 is isolated)
    many = torch.arange(400).flip(0)  # every node: layer-wise (the cheaper), rows taken
    n, degree = 400, edge_index.shape[1] / 400
    hops = sizes["depth"] if arch != "mlp" else 0
    assert khop_is_cheaper(4, n, degree, hops)
    assert khop_is_cheaper(400, n, degree, hops) == (arch == "mlp")
    for targets in (few, many):
        got = target_logits(model, x, edge_index, targets, chunk_nodes=3)
        torch.testing.assert_close(got, full[targets], rtol=1e-5, atol=1e-5)
    assert model.training  # eval mode only inside
