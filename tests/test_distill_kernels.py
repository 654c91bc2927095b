"""Kernels of LSP against per-edge formulas written out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from study.catalogs import KERNELS
from study.distill.kernels import edge_kernel, kernel_values, squared_distance
from study.errors import UserInputError


def _ref_kernel(name: str, a: list[float], b: list[float], degree=2.0, c=0.0, sigma=1.0) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    sq = sum((x - y) ** 2 for x, y in zip(a, b, strict=True))
    l1 = sum(abs(x - y) for x, y in zip(a, b, strict=True))
    return {
        "linear": dot,
        "poly": (dot + c) ** degree,
        "rbf": math.exp(-sq / (2 * sigma**2)),
        "l2": -sq,
        "l1_official": math.exp(-l1 / 100.0),
    }[name]


PARAMS = [
    ("linear", {}),
    ("poly", {}),
    ("poly", {"degree": 3.0, "c": 0.5}),
    ("rbf", {}),
    ("rbf", {"sigma": 0.7}),
    ("l2", {}),
    ("l1_official", {}),
]


@pytest.mark.parametrize(("name", "params"), PARAMS)
def test_kernel_values_match_per_edge_formula(name: str, params: dict) -> None:
    g = torch.Generator().manual_seed(0)
    zt = torch.randn(6, 4, generator=g, dtype=torch.float64)
    zs = torch.randn(6, 4, generator=g, dtype=torch.float64)
    zs[2] = zt[2]  # one edge joining identical features
    got = kernel_values(zt, zs, name, **params)
    want = [_ref_kernel(name, zt[e].tolist(), zs[e].tolist(), **params) for e in range(6)]
    assert got.shape == (6,)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=0)


def test_kernel_gradient_finite_at_identical_rows() -> None:
    z = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64, requires_grad=True)
    for name in KERNELS.names():
        (g,) = torch.autograd.grad(kernel_values(z, z.detach().clone(), name).sum(), z)
        assert torch.isfinite(g).all(), name


def test_edge_kernel_follows_edge_order() -> None:
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]], dtype=torch.float64)
    edge_index = torch.tensor([[0, 2, 1], [1, 1, 2]])  # 0->1, 2->1, 1->2
    got = edge_kernel(z, edge_index, "linear")
    torch.testing.assert_close(got, torch.tensor([0.0, 2.0, 2.0], dtype=torch.float64))


@pytest.mark.parametrize("needs_grad", [True, False])
def test_edge_squared_distance_in_chunks_matches_the_formula(
    needs_grad: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Edges split into many chunks (3 elements each: every edge its own chunk) give the same
    distances and gradients as the per-edge formula, with or without a backward to keep."""
    import study.distill.kernels as kernels

    monkeypatch.setattr(kernels, "_CHUNK_ELEMENTS", 3)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=needs_grad)
    source = torch.tensor([0, 2, 4, 1, 3, 3, 0])
    target = torch.tensor([1, 1, 0, 4, 2, 3, 3])
    got = kernels.edge_squared_distance(z, target, source)
    rows = z.detach().tolist()
    want = [
        sum((a - b) ** 2 for a, b in zip(rows[t], rows[s], strict=True))
        for t, s in zip(target.tolist(), source.tolist(), strict=True)
    ]
    torch.testing.assert_close(got.detach(), torch.tensor(want, dtype=torch.float64))
    if needs_grad:
        weights = torch.arange(1.0, 8.0, dtype=torch.float64)
        (grad,) = torch.autograd.grad((got * weights).sum(), z)
        # d/dz of sum_e w_e ||z_t - z_s||^2: +2 w_e (z_t - z_s) at t, the negative at s.
        expected = torch.zeros(5, 3, dtype=torch.float64)
        for e, (t, s) in enumerate(zip(target.tolist(), source.tolist(), strict=True)):
            d = 2 * weights[e] * (z.detach()[t] - z.detach()[s])
            expected[t] += d
            expected[s] -= d
        torch.testing.assert_close(grad, expected)


def test_squared_distance_exact_for_close_large_rows() -> None:
    # The expansion ||a||^2 + ||b||^2 - 2 a.b loses everything here; the direct form does not.
    a = torch.tensor([[1e8 + 1.0, 1e8]], dtype=torch.float64)
    b = torch.tensor([[1e8, 1e8]], dtype=torch.float64)
    assert squared_distance(a, b).item() == 1.0
    expanded = (a * a).sum(-1) + (b * b).sum(-1) - 2 * (a * b).sum(-1)
    assert expanded.item() != 1.0  # documents why the direct form was chosen


def test_unknown_kernel_lists_valid_names() -> None:
    z = torch.zeros(2, 3)
    with pytest.raises(UserInputError) as info:
        kernel_values(z, z, "gaussian")
    message = str(info.value)
    assert "'gaussian'" in message
    for name in KERNELS.names():
        assert name in message


@pytest.mark.parametrize(
    ("name", "params"),
    [("rbf", {"sigma": 0.0}), ("poly", {"degree": 2.5}), ("poly", {"degree": 0})],
)
def test_bad_kernel_parameters_raise(name: str, params: dict) -> None:
    z = torch.ones(2, 3)
    with pytest.raises(UserInputError):
        kernel_values(z, z, name, **params)


def test_catalog_names_every_kernel_with_its_parameters() -> None:
    assert KERNELS.names() == ("linear", "poly", "rbf", "l2", "l1_official")
    params = {entry.name: entry.defaults() for entry in KERNELS}
    assert params["poly"] == {"degree": 2.0, "c": 0.0} and params["rbf"] == {"sigma": 1.0}
    assert params["linear"] == params["l2"] == params["l1_official"] == {}


@pytest.mark.parametrize(
    ("name", "bad"), [("rbf", "degree"), ("linear", "sigma"), ("rbf", "sigam")]
)
def test_a_parameter_the_kernel_does_not_take_is_refused(name: str, bad: str) -> None:
    z = torch.ones(2, 3)
    with pytest.raises(UserInputError) as info:
        edge_kernel(z, torch.tensor([[0], [1]]), name, **{bad: 1.0})
    message = str(info.value)
    assert repr(bad) in message and repr(name) in message and "\n" not in message
    for valid in KERNELS.get(name).param_names():
        assert valid in message


def test_shape_mismatch_rejected() -> None:
    with pytest.raises(ValueError):
        kernel_values(torch.zeros(3, 2), torch.zeros(3, 4), "linear")
