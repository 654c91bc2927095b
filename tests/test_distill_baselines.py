"""KD, FitNet and AT against independent formulas, and choosing methods and kernels by name."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from study.catalogs import KERNELS, METHODS
from study.distill import (
    FitNetAdapter,
    at_loss,
    attention_map,
    build_method,
    fitnet_loss,
    kd_loss,
)
from study.errors import UserInputError
from study.train_config import DistillConfig


def _logits(seed: int, shape=(4, 5), scale=2.0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()
    t = scale * torch.randn(*shape, generator=g, dtype=torch.float64)
    return s, t


# ---- KD ------------------------------------------------------------------------------------


def _ref_kd_single(s: Tensor, t: Tensor, T: float) -> Tensor:
    total = 0.0
    for r in range(s.size(0)):
        es, et = torch.exp(s[r] / T), torch.exp(t[r] / T)
        ps, pt = es / es.sum(), et / et.sum()
        total = total + torch.sum(pt * torch.log(pt / ps))
    return total / s.size(0) * T * T


def _ref_kd_multi_floats(s: list[list[float]], t: list[list[float]], T: float) -> float:
    total, count = 0.0, 0
    for srow, trow in zip(s, t, strict=True):
        for x, y in zip(srow, trow, strict=True):
            q, p = 1 / (1 + math.exp(-x / T)), 1 / (1 + math.exp(-y / T))
            total += p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
            count += 1
    return total / count * T * T


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_single_label_value_and_gradient(T: float) -> None:
    s, t = _logits(0)
    got = kd_loss(s, t, temperature=T)
    want = _ref_kd_single(s, t, T)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    assert want.item() > 1e-4
    (g_got,) = torch.autograd.grad(got, s)
    (g_want,) = torch.autograd.grad(want, s)
    torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_kd_multilabel_value_and_gradient(T: float) -> None:
    s, t = _logits(1, shape=(3, 6))
    got = kd_loss(s, t, temperature=T, multilabel=True)
    want = _ref_kd_multi_floats(s.tolist(), t.tolist(), T)
    assert got.item() == pytest.approx(want, rel=1e-12)
    # Gradient of the per-entry Bernoulli KL wrt s is sigmoid(s/T) - sigmoid(t/T), times T / n.
    (g,) = torch.autograd.grad(got, s)
    g_want = (torch.sigmoid(s / T) - torch.sigmoid(t / T)) * T / s.numel()
    torch.testing.assert_close(g, g_want.detach(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("multilabel", [False, True])
def test_kd_zero_for_equal_logits(multilabel: bool) -> None:
    s, _ = _logits(2)
    assert kd_loss(s, s.detach().clone(), multilabel=multilabel).abs().item() < 1e-14
    s2, t2 = _logits(3)
    assert kd_loss(s2, t2, multilabel=multilabel).item() > 0


def test_kd_multilabel_large_logits_finite() -> None:
    s = torch.tensor([[1e4, -1e4, 3e3], [-5e3, 0.0, 1e4]], requires_grad=True)
    t = torch.tensor([[-1e4, 1e4, 3e3], [-5e3, 2.0, -1e4]])
    loss = kd_loss(s, t, temperature=2.0, multilabel=True)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert torch.isfinite(s.grad).all()
    assert kd_loss(t, t, multilabel=True).item() == 0.0


def test_kd_bad_temperature_and_shapes() -> None:
    s, t = _logits(4)
    with pytest.raises(UserInputError):
        kd_loss(s, t, temperature=0.0)
    with pytest.raises(ValueError):
        kd_loss(s, t[:, :3])


# ---- FitNet --------------------------------------------------------------------------------


def test_fitnet_loss_matches_manual_mse_and_trains_adapter() -> None:
    torch.manual_seed(0)
    adapter = FitNetAdapter(3, 5).double()
    z_s = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    z_t = torch.randn(6, 5, dtype=torch.float64)
    loss = fitnet_loss(z_s, z_t, adapter)
    w, b = adapter.linear.weight, adapter.linear.bias
    manual = (
        sum(
            (sum(w[o, c] * z_s[n, c] for c in range(3)) + b[o] - z_t[n, o]) ** 2
            for n in range(6)
            for o in range(5)
        )
        / 30
    )
    torch.testing.assert_close(loss, manual, rtol=1e-12, atol=1e-14)
    loss.backward()
    assert w.grad is not None and w.grad.abs().max() > 0
    assert b.grad is not None and b.grad.abs().max() > 0
    assert z_s.grad is not None and z_s.grad.abs().max() > 0

    opt = torch.optim.SGD(adapter.parameters(), lr=0.05)
    opt.step()
    assert fitnet_loss(z_s.detach(), z_t, adapter).item() < loss.item()


def test_fitnet_wrong_adapter_width_rejected() -> None:
    with pytest.raises(ValueError):
        fitnet_loss(torch.randn(4, 3), torch.randn(4, 5), FitNetAdapter(3, 4))


# ---- AT ------------------------------------------------------------------------------------


def _ref_at(z_s: Tensor, z_t: Tensor, p: float, graphs: list[list[int]]) -> Tensor:
    def amap(z: Tensor) -> list[Tensor]:
        a = [torch.sum(torch.abs(z[i]) ** p) for i in range(z.size(0))]
        out = [None] * len(a)
        for nodes in graphs:
            norm = torch.sqrt(sum(a[i] ** 2 for i in nodes))
            for i in nodes:
                out[i] = a[i] / norm
        return out

    a_s, a_t = amap(z_s), amap(z_t)
    return sum((x - y) ** 2 for x, y in zip(a_s, a_t, strict=True)) / len(a_s)


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_at_value_and_gradient(p: float) -> None:
    g = torch.Generator().manual_seed(5)
    z_s = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    z_t = torch.randn(6, 7, generator=g, dtype=torch.float64)
    got = at_loss(z_s, z_t, p)
    want = _ref_at(z_s, z_t, p, [list(range(6))])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    assert want.item() > 1e-6
    (g_got,) = torch.autograd.grad(got, z_s)
    (g_want,) = torch.autograd.grad(want, z_s)
    torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-14)


def test_at_per_graph_normalisation() -> None:
    g = torch.Generator().manual_seed(6)
    z_s = torch.randn(5, 3, generator=g, dtype=torch.float64)
    z_t = torch.randn(5, 4, generator=g, dtype=torch.float64)
    batch = torch.tensor([0, 0, 1, 1, 1])
    got = at_loss(z_s, z_t, batch=batch)
    torch.testing.assert_close(got, _ref_at(z_s, z_t, 1.0, [[0, 1], [2, 3, 4]]))
    a = attention_map(z_s, batch=batch)
    torch.testing.assert_close(a[:2].norm(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(a[2:].norm(), torch.tensor(1.0, dtype=torch.float64))


def test_attention_map_unit_norm_and_zero_safe() -> None:
    z = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(attention_map(z).norm(), torch.tensor(1.0, dtype=torch.float64))
    zero = torch.zeros(4, 3, requires_grad=True)
    loss = at_loss(zero, torch.randn(4, 2))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zero.grad).all()
    with pytest.raises(UserInputError):
        attention_map(z, p=0.0)


# ---- names -------------------------------------------------------------------------------


def test_catalog_names() -> None:
    assert METHODS.names() == ("none", "kd", "fitnet", "at", "lsp", "edge_attention")
    assert all(entry.description for entry in METHODS)
    assert METHODS.get("lsp").name == "lsp"
    assert KERNELS.get("rbf").name == "rbf"
    method = build_method(DistillConfig("lsp", {"direction": "teacher_student"}))
    assert method.direction == "teacher_student"  # type: ignore[attr-defined]


def _lsp_with_direction(name: str) -> None:
    build_method(DistillConfig("lsp", {"direction": name}))


@pytest.mark.parametrize(
    ("check", "bad", "valid"),
    [
        (METHODS.get, "kdd", METHODS.names()),
        (KERNELS.get, "gauss", KERNELS.names()),
        (_lsp_with_direction, "reverse", ("student_teacher", "teacher_student")),
    ],
)
def test_unknown_names_list_valid_ones(check, bad, valid) -> None:
    with pytest.raises(UserInputError) as info:
        check(bad)
    message = str(info.value)
    assert repr(bad) in message and "\n" not in message
    for name in valid:
        assert name in message
