"""LSP against an independent per-node formula (plain Python loops, naive softmax, float64)."""

from __future__ import annotations

import itertools
from typing import get_args

import pytest
import torch
from torch import Tensor

from study.catalogs import KERNELS, Direction
from study.distill.lsp import local_structure, lsp_loss, union_edges
from study.errors import UserInputError

DIRECTIONS = get_args(Direction)
KERNEL_NAMES = KERNELS.names()

# 7 nodes, edges j -> i in no particular order. In-degrees: node 0: 2, node 1: 3, node 2: 1
# (single incoming edge), node 3: 3 (one a self-loop), node 4: 2, nodes 5 and 6: 0.
EDGES = [(0, 1), (1, 0), (5, 2), (2, 1), (0, 3), (3, 3), (4, 0), (1, 4), (6, 3), (3, 1), (2, 4)]
EDGE_INDEX = torch.tensor(EDGES, dtype=torch.long).t().contiguous()
N = 7


def _ref_k(kernel: str, a: Tensor, b: Tensor, degree=2.0, c=0.0, sigma=1.0) -> Tensor:
    if kernel == "linear":
        return torch.dot(a, b)
    if kernel == "poly":
        return (torch.dot(a, b) + c) ** degree
    if kernel == "rbf":
        return torch.exp(-torch.sum((a - b) ** 2) / (2 * sigma**2))
    if kernel == "l2":
        return -torch.sum((a - b) ** 2)
    if kernel == "l1_official":
        return torch.exp(-torch.sum(torch.abs(a - b)) / 100.0)
    raise AssertionError(kernel)


def _ref_ls(z: Tensor, kernel: str, **params) -> dict[int, Tensor]:
    """Per target node: LS over its incoming edges, in edge-list order (naive softmax)."""
    out = {}
    for i in range(N):
        sources = [j for (j, t) in EDGES if t == i]
        if not sources:
            continue
        k = torch.stack([_ref_k(kernel, z[i], z[j], **params) for j in sources])
        e = torch.exp(k)
        out[i] = e / e.sum()
    return out


def _ref_loss(z_s: Tensor, z_t: Tensor, kernel: str, direction: str, **params) -> Tensor:
    ls_s, ls_t = _ref_ls(z_s, kernel, **params), _ref_ls(z_t, kernel, **params)
    per_node = []
    for i in ls_s:
        p, q = (ls_s[i], ls_t[i]) if direction == "student_teacher" else (ls_t[i], ls_s[i])
        per_node.append(torch.sum(p * (torch.log(p) - torch.log(q))))
    return sum(per_node) / len(per_node)


def _features(f_s: int = 3, f_t: int = 5, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    z_s = (0.7 * torch.randn(N, f_s, generator=g, dtype=torch.float64)).requires_grad_()
    z_t = (0.7 * torch.randn(N, f_t, generator=g, dtype=torch.float64)).requires_grad_()
    return z_s, z_t


KERNEL_CASES = [
    ("linear", {}),
    ("poly", {}),
    ("poly", {"degree": 3.0, "c": 0.5}),
    ("rbf", {}),
    ("rbf", {"sigma": 0.5}),
    ("l2", {}),
    ("l1_official", {}),
]


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize(("kernel", "params"), KERNEL_CASES)
def test_loss_and_gradients_match_per_node_formula(kernel, params, direction) -> None:
    z_s, z_t = _features()
    got = lsp_loss(z_s, z_t, EDGE_INDEX, kernel=kernel, direction=direction, **params)
    want = _ref_loss(z_s, z_t, kernel, direction, **params)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert want.item() > 1e-6  # a non-trivial value, so the comparison can fail

    g_got = torch.autograd.grad(got, (z_s, z_t))
    g_want = torch.autograd.grad(want, (z_s, z_t))
    for a, b in zip(g_got, g_want, strict=True):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("kernel", "params"), KERNEL_CASES)
def test_local_structure_matches_reference_and_sums_to_one(kernel, params) -> None:
    z, _ = _features(f_s=4)
    log_ls = local_structure(z, EDGE_INDEX, kernel=kernel, **params)
    ref = _ref_ls(z, kernel, **params)
    targets = EDGE_INDEX[1]
    for i, probs in ref.items():
        torch.testing.assert_close(log_ls[targets == i].exp(), probs, rtol=1e-10, atol=1e-12)
    sums = torch.zeros(N, dtype=torch.float64).index_add_(0, targets, log_ls.exp())
    has_in = torch.tensor([i in ref for i in range(N)])
    torch.testing.assert_close(sums[has_in], torch.ones(int(has_in.sum()), dtype=torch.float64))
    # The single incoming edge of node 2 carries all of its mass.
    assert log_ls[targets == 2].item() == pytest.approx(0.0, abs=1e-12)


def test_gradcheck_rbf_both_directions() -> None:
    z_s, z_t = _features()
    for direction in DIRECTIONS:
        assert torch.autograd.gradcheck(
            lambda a, b, d=direction: lsp_loss(a, b, EDGE_INDEX, kernel="rbf", direction=d),
            (z_s, z_t),
        )


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_precomputed_teacher_log_ls_gives_identical_loss(kernel, direction) -> None:
    z_s, z_t = _features()
    full = lsp_loss(z_s, z_t, EDGE_INDEX, kernel=kernel, direction=direction)
    with torch.no_grad():
        log_t = local_structure(z_t, EDGE_INDEX, kernel=kernel)
    cached = lsp_loss(
        z_s, None, EDGE_INDEX, kernel=kernel, direction=direction, teacher_log_ls=log_t
    )
    assert cached.item() == full.item()
    (g_full,) = torch.autograd.grad(full, z_s)
    (g_cached,) = torch.autograd.grad(cached, z_s)
    torch.testing.assert_close(g_cached, g_full, rtol=0, atol=0)


def test_different_widths_and_isolated_nodes_excluded_from_mean() -> None:
    z_s, z_t = _features(f_s=2, f_t=9)
    base = lsp_loss(z_s, z_t, EDGE_INDEX)
    torch.testing.assert_close(base, _ref_loss(z_s, z_t, "rbf", "student_teacher"))
    # Appending nodes with no edges at all must not dilute the mean.
    pad_s = torch.cat([z_s, torch.randn(3, 2, dtype=torch.float64)])
    pad_t = torch.cat([z_t, torch.randn(3, 9, dtype=torch.float64)])
    torch.testing.assert_close(lsp_loss(pad_s, pad_t, EDGE_INDEX), base, rtol=1e-14, atol=0)


def test_identical_structure_gives_zero_and_kl_is_nonnegative() -> None:
    z_s, _ = _features()
    for direction in DIRECTIONS:
        same = lsp_loss(z_s, z_s.detach().clone(), EDGE_INDEX, direction=direction)
        assert same.abs().item() < 1e-14
    for seed in range(3):
        a, b = _features(seed=seed)
        assert lsp_loss(a, b, EDGE_INDEX, kernel="linear").item() >= 0


def test_no_edges_gives_zero_with_gradient_path() -> None:
    z_s, z_t = _features()
    loss = lsp_loss(z_s, z_t, torch.zeros(2, 0, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()  # must not raise
    assert torch.equal(z_s.grad, torch.zeros_like(z_s))


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("kernel", ["linear", "poly", "l2"])
@pytest.mark.parametrize("scale", [1e2, 1e3])
def test_large_features_stay_finite(kernel, direction, scale) -> None:
    g = torch.Generator().manual_seed(1)
    z_s = (scale * torch.randn(N, 8, generator=g)).requires_grad_()
    z_t = (scale * torch.randn(N, 6, generator=g)).requires_grad_()
    log_ls = local_structure(z_s, EDGE_INDEX, kernel=kernel)
    assert torch.isfinite(log_ls).all()
    sums = torch.zeros(N).index_add_(0, EDGE_INDEX[1], log_ls.exp())
    torch.testing.assert_close(sums[:5], torch.ones(5))
    loss = lsp_loss(z_s, z_t, EDGE_INDEX, kernel=kernel, direction=direction)
    assert torch.isfinite(loss) and loss.item() >= 0
    loss.backward()
    assert torch.isfinite(z_s.grad).all() and torch.isfinite(z_t.grad).all()


def test_union_edges_matches_set_union_sorted_by_target() -> None:
    a = torch.tensor([[0, 1, 2, 0, 3], [1, 1, 0, 1, 3]])  # (0, 1) twice
    b = torch.tensor([[2, 4, 1, 1], [0, 0, 1, 2]])  # (2, 0) shared with a
    u = union_edges(a, b, num_nodes=5)
    pairs = list(zip(u[0].tolist(), u[1].tolist(), strict=True))
    want = set(zip(a[0].tolist(), a[1].tolist(), strict=True)) | set(
        zip(b[0].tolist(), b[1].tolist(), strict=True)
    )
    assert len(pairs) == len(set(pairs))
    assert set(pairs) == want
    assert pairs == sorted(want, key=lambda e: (e[1], e[0]))
    # Without num_nodes, same result.
    assert torch.equal(union_edges(a, b), u)


def test_union_edges_random_against_sets() -> None:
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        a = torch.randint(0, 9, (2, 20), generator=g)
        b = torch.randint(0, 9, (2, 15), generator=g)
        u = union_edges(a, b, num_nodes=9)
        want = {(int(j), int(i)) for j, i in itertools.chain(a.t().tolist(), b.t().tolist())}
        assert sorted(zip(u[0].tolist(), u[1].tolist(), strict=True)) == sorted(want)
        assert u.size(1) == len(want)


def test_unknown_direction_kernel_and_parameter_raise() -> None:
    z_s, z_t = _features()
    with pytest.raises(UserInputError) as info:
        lsp_loss(z_s, z_t, EDGE_INDEX, direction="both")
    assert all(d in str(info.value) for d in DIRECTIONS)
    with pytest.raises(UserInputError) as info:
        lsp_loss(z_s, z_t, EDGE_INDEX, kernel="cosine")
    assert all(k in str(info.value) for k in KERNEL_NAMES)
    with pytest.raises(UserInputError) as info:
        lsp_loss(z_s, z_t, EDGE_INDEX, kernel="rbf", sigam=2.0)
    assert "sigam" in str(info.value) and "sigma" in str(info.value)


def test_teacher_log_ls_of_wrong_length_rejected() -> None:
    z_s, z_t = _features()
    with pytest.raises(ValueError):
        lsp_loss(z_s, z_t, EDGE_INDEX, teacher_log_ls=torch.zeros(3, dtype=torch.float64))
