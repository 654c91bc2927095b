"""kNN graphs of batched clouds against a brute-force Python loop over points."""

from __future__ import annotations

import pytest
import torch

from study.errors import UserInputError
from study.models.knn import knn_graph_dense, knn_indices


def _brute_force(x: torch.Tensor, k: int, include_self: bool) -> set[tuple[int, int]]:
    """Edges (neighbour, centre) by sorting exact distances point by point."""
    batch, num_points, _ = x.shape
    edges = set()
    for b in range(batch):
        for i in range(num_points):
            dists = []
            for j in range(num_points):
                if j == i and not include_self:
                    continue
                d = sum((float(x[b, i, f]) - float(x[b, j, f])) ** 2 for f in range(x.shape[2]))
                dists.append((d, j))
            for _, j in sorted(dists)[:k]:
                edges.add((b * num_points + j, b * num_points + i))
    return edges


def _cloud() -> torch.Tensor:
    # Two clouds of 12 points in 3-D; continuous random coordinates make distance ties
    # vanishingly unlikely, and the check below makes sure of it.
    x = torch.rand(2, 12, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = torch.cdist(x, x)
    off_diag = d[:, ~torch.eye(12, dtype=torch.bool)].reshape(2, 12, 11)
    gaps = off_diag.sort(dim=-1).values.diff(dim=-1)
    assert gaps.min() > 1e-6, "test cloud has near-tied distances"
    return x


@pytest.mark.parametrize("include_self", [True, False])
@pytest.mark.parametrize("k", [1, 4])
def test_knn_matches_brute_force(k: int, include_self: bool) -> None:
    x = _cloud()
    edge_index = knn_graph_dense(x, k, include_self=include_self)
    assert edge_index.shape == (2, 2 * 12 * k)
    assert edge_index.dtype == torch.long
    got = set(map(tuple, edge_index.t().tolist()))
    assert len(got) == 2 * 12 * k  # no duplicate edges
    assert got == _brute_force(x, k, include_self)


def test_knn_float32_matches_float64() -> None:
    x = _cloud()
    assert torch.equal(knn_graph_dense(x, 5), knn_graph_dense(x.float(), 5))


def test_knn_layout_and_self_first() -> None:
    x = _cloud()
    k = 3
    source, target = knn_graph_dense(x, k)
    # Grouped by centre in order, the centre itself first (DGCNN's default includes it).
    assert torch.equal(target, torch.arange(24).repeat_interleave(k))
    assert torch.equal(source[::k], torch.arange(24))
    # Neighbours never cross clouds.
    assert torch.equal(source // 12, target // 12)
    # Nearest first: distances along each centre's neighbours are non-decreasing.
    flat = x.reshape(24, 3)
    dist = (flat[source] - flat[target]).pow(2).sum(-1).view(24, k)
    assert (dist.diff(dim=-1) >= 0).all()


def test_knn_self_forced_even_with_duplicate_points() -> None:
    x = torch.zeros(1, 4, 2)
    x[0, 2:] = 1.0
    idx = knn_indices(x, 2, include_self=True)
    assert torch.equal(idx[0, :, 0], torch.arange(4))
    assert torch.equal(idx[0, :, 1], torch.tensor([1, 0, 3, 2]))
    idx = knn_indices(x, 1, include_self=False)
    assert torch.equal(idx[0, :, 0], torch.tensor([1, 0, 3, 2]))


def test_knn_rejects_bad_k() -> None:
    x = torch.rand(1, 5, 3)
    with pytest.raises(UserInputError, match="valid: 1..4"):
        knn_graph_dense(x, 5, include_self=False)
    with pytest.raises(UserInputError, match="valid: 1..5"):
        knn_graph_dense(x, 0)
    knn_graph_dense(x, 5)  # k == P is fine with the point itself included


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("block_bytes", [1, 64, 1 << 19])
def test_neighbour_max_equals_gather_then_max(
    block_bytes: int, k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The blocked CPU path (one row per block; 5 rows, so the last of 18 is short; all rows)
    gives exactly the max of the gathered neighbour rows, and so does the autograd path."""
    import study.models.knn as knn

    monkeypatch.setattr(knn, "_BLOCK_BYTES", block_bytes)
    g = torch.Generator().manual_seed(3)
    values = torch.randn(2, 9, 3, generator=g)
    idx = torch.randint(0, 9, (2, 9, k), generator=g)
    want = torch.stack([values[b][idx[b]].amax(dim=1) for b in range(2)])  # [B, P, C]
    assert torch.equal(knn.neighbour_max(values, idx), want)
    tracked = values.clone().requires_grad_()
    assert torch.equal(knn.neighbour_max(tracked, idx), want)
