"""Type-aware distillation terms on tiny typed graphs, against independent formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from study.catalogs import ATParams, FitNetParams, KDParams, LSPParams
from study.distill.at import at_loss
from study.distill.fitnet import FitNetAdapter, fitnet_loss
from study.distill.kd import kd_loss
from study.distill.lsp import local_structure, lsp_loss
from study.distill.methods import (
    AttentionTransfer,
    FitNet,
    KnowledgeDistillation,
    LocalStructurePreserving,
)
from study.distill.typed import (
    GraphTypes,
    relation_local_structure,
    relation_lsp_loss,
    relation_weight_vector,
)
from study.errors import UserInputError
from study.models.base import ModelOutput

# Six nodes, three relations; node 3 has incoming edges of two relations, node 5 of one.
EDGES = torch.tensor(
    [
        [0, 1, 2, 4, 0, 1, 2, 5, 3],
        [3, 3, 3, 3, 5, 5, 4, 4, 0],
    ]
)
TYPES = torch.tensor([0, 0, 1, 1, 2, 2, 0, 2, 1])
R = 3

pytestmark = pytest.mark.usefixtures("one_thread")


def _features(seed: int, width: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, width, generator=g, dtype=torch.float64)


def _dense_relation_lsp(z_s: Tensor, z_t: Tensor, weights: list[float], sigma: float) -> Tensor:
    """The definition written out with loops: per relation, per target, an RBF softmax over
    the target's incoming edges of that relation; KL(s || t); mean over targets; weighted sum."""
    total = z_s.new_zeros(())
    for r in range(R):
        per_node = []
        for i in range(6):
            edges = zip(EDGES[0], EDGES[1], TYPES, strict=True)
            sources = [int(j) for j, t, e in edges if t == i and e == r]
            if not sources:
                continue

            def dist(z: Tensor, sources: list[int] = sources, i: int = i) -> Tensor:
                k = torch.stack(
                    [torch.exp(-((z[i] - z[j]) ** 2).sum() / (2 * sigma**2)) for j in sources]
                )
                return torch.exp(k) / torch.exp(k).sum()

            p, q = dist(z_s), dist(z_t)
            per_node.append((p * (p.log() - q.log())).sum())
        if per_node:
            total = total + weights[r] * torch.stack(per_node).mean()
    return total


@pytest.mark.parametrize("weights", [None, [0.5, 2.0, 1.0]])
def test_relation_lsp_matches_the_dense_definition_with_gradients(
    weights: list[float] | None,
) -> None:
    z_s = _features(0, 4).requires_grad_(True)
    z_t = _features(1, 5).requires_grad_(True)
    w = [1.0 / R] * R if weights is None else weights
    got = relation_lsp_loss(z_s, z_t, EDGES, TYPES, R, weights=weights, kernel="rbf", sigma=1.5)
    want = _dense_relation_lsp(z_s, z_t, w, 1.5)
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    g_got = torch.autograd.grad(got, (z_s, z_t))
    g_want = torch.autograd.grad(want, (z_s, z_t))
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_relation_lsp_is_the_weighted_sum_of_homogeneous_lsp_per_relation() -> None:
    z_s, z_t = _features(2, 3), _features(3, 3)
    weights = [0.2, 0.3, 0.5]
    got = relation_lsp_loss(z_s, z_t, EDGES, TYPES, R, weights=weights, kernel="linear")
    parts = [lsp_loss(z_s, z_t, EDGES[:, TYPES == r], kernel="linear") for r in range(R)]
    want = sum(w * p.item() for w, p in zip(weights, parts, strict=True))
    assert got.item() == pytest.approx(want)
    # With the teacher's side precomputed per (target, relation), the same value.
    log_t = relation_local_structure(z_t, EDGES, TYPES, R, kernel="linear")
    pre = relation_lsp_loss(
        z_s, None, EDGES, TYPES, R, weights=weights, teacher_log_ls=log_t, kernel="linear"
    )
    assert pre.item() == pytest.approx(got.item(), rel=1e-12)


def test_gradcheck_of_relation_lsp() -> None:
    z_s = _features(4, 3).requires_grad_(True)
    z_t = _features(5, 3).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: relation_lsp_loss(a, b, EDGES, TYPES, R, kernel="rbf"), (z_s, z_t)
    )


def test_relation_local_structure_is_each_relations_own_distribution() -> None:
    z = _features(6, 4)
    log_ls = relation_local_structure(z, EDGES, TYPES, R, kernel="rbf")
    for r in range(R):
        keep = TYPES == r
        alone = local_structure(z, EDGES[:, keep], kernel="rbf")
        torch.testing.assert_close(log_ls[keep], alone)


def test_collapsing_two_relations_changes_the_loss() -> None:
    z_s, z_t = _features(7, 4), _features(8, 4)
    typed = relation_lsp_loss(z_s, z_t, EDGES, TYPES, R, weights=[1.0, 1.0, 1.0])
    merged = torch.where(TYPES == 1, torch.zeros_like(TYPES), TYPES)  # relation 1 into 0
    collapsed = relation_lsp_loss(z_s, z_t, EDGES, merged, R, weights=[1.0, 1.0, 1.0])
    assert not math.isclose(typed.item(), collapsed.item(), rel_tol=1e-6)
    # And one relation for everything is the homogeneous loss itself.
    one = relation_lsp_loss(z_s, z_t, EDGES, torch.zeros_like(TYPES), 1)
    assert one.item() == pytest.approx(lsp_loss(z_s, z_t, EDGES).item(), rel=1e-12)


def _types(node_type: Tensor, target: int = 0) -> GraphTypes:
    return GraphTypes(node_type, TYPES, int(node_type.max()) + 1, R, target)


NODE_TYPE = torch.tensor([0, 0, 0, 1, 1, 2])


def test_lsp_method_reads_relations_only_on_a_typed_graph() -> None:
    z_s, z_t = _features(9, 4).float(), _features(10, 6).float()
    student = ModelOutput(logits=None, hidden=[z_s])
    teacher = ModelOutput(logits=None, hidden=[z_t])
    method = LocalStructurePreserving(LSPParams())
    common = dict(edge_index=EDGES, precomputed=[], adapters=None, multilabel=False)
    typed = method.term(student, teacher, types=_types(NODE_TYPE), **common)
    want = relation_lsp_loss(z_s, z_t, EDGES, TYPES, R, kernel="rbf", sigma=1.0)
    assert typed.item() == pytest.approx(want.item(), rel=1e-6)
    plain = method.term(student, teacher, **common)  # no types: the homogeneous loss, unchanged
    assert plain.item() == pytest.approx(lsp_loss(z_s, z_t, EDGES).item(), rel=1e-6)
    assert not math.isclose(plain.item(), typed.item(), rel_tol=1e-4)


def test_kd_reads_the_target_type_only() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    method = KnowledgeDistillation(KDParams(temperature=2.0))
    types = _types(NODE_TYPE, target=1)
    term = method.term(ModelOutput(s, [s]), ModelOutput(t, [t]), multilabel=False, types=types)
    keep = NODE_TYPE == 1
    assert term.item() == pytest.approx(kd_loss(s[keep], t[keep], temperature=2.0).item())
    other = s.clone()
    other[~keep] += 10.0  # other types' logits are never scored, nor taught
    again = method.term(
        ModelOutput(other, [other]), ModelOutput(t, [t]), multilabel=False, types=types
    )
    assert again.item() == pytest.approx(term.item())


def test_fitnet_and_at_average_per_node_type() -> None:
    z_s, z_t = _features(11, 4).float(), _features(12, 5).float()
    student, teacher = ModelOutput(None, [z_s]), ModelOutput(None, [z_t])
    types = _types(NODE_TYPE)
    groups = [NODE_TYPE == t for t in range(3)]

    at = AttentionTransfer(ATParams(p=2.0))
    got = at.term(student, teacher, types=types)
    want = sum(at_loss(z_s[m], z_t[m], p=2.0) for m in groups) / 3
    assert got.item() == pytest.approx(float(want.detach()), rel=1e-6)
    assert not math.isclose(got.item(), at_loss(z_s, z_t, p=2.0).item(), rel_tol=1e-3)

    fitnet = FitNet(FitNetParams())
    torch.manual_seed(0)
    adapters = torch.nn.ModuleList([FitNetAdapter(4, 5)])
    got = fitnet.term(student, teacher, adapters=adapters, types=types)
    want = sum(fitnet_loss(z_s[m], z_t[m], adapters[0]) for m in groups) / 3
    assert got.item() == pytest.approx(float(want.detach()), rel=1e-6)


def test_lsp_relation_weights_by_name() -> None:
    z_s, z_t = _features(13, 4).float(), _features(14, 4).float()
    student, teacher = ModelOutput(None, [z_s]), ModelOutput(None, [z_t])
    names = ("a__near__b", "b__far__a", "a__near__a")
    types = GraphTypes(NODE_TYPE, TYPES, 3, R, 0, names)
    method = LocalStructurePreserving(LSPParams(relation_weights={"far": 2.0, "a__near__a": 0.5}))
    common = dict(edge_index=EDGES, precomputed=[], adapters=None, multilabel=False)
    got = method.term(student, teacher, types=types, **common)
    want = relation_lsp_loss(z_s, z_t, EDGES, TYPES, R, weights=[0.0, 2.0, 0.5])
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert relation_weight_vector({"b__far__a": 1.0}, names) == [0.0, 1.0, 0.0]
    with pytest.raises(UserInputError, match=r"unknown relation 'near' \(valid: a__near__b"):
        relation_weight_vector({"near": 1.0}, names)  # two relations are called near
    with pytest.raises(UserInputError, match="heterogeneous"):
        method.term(student, teacher, **common)


def _gat_like_log_attention(seed: int, heads: int) -> Tensor:
    """``[E, H]`` log-attention as a graph-attention layer gives it: a softmax over each
    target's incoming edges of every relation together."""
    from study.models.attention import scatter_log_softmax_2d

    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(EDGES.shape[1], heads, generator=g, dtype=torch.float64)
    return scatter_log_softmax_2d(scores, EDGES[1], 6)


def _dense_relation_attention(log_s: Tensor, log_t: Tensor, weights: list[float]) -> Tensor:
    """The definition with loops: per relation and target, each side's head-averaged attention
    restricted to the target's edges of that relation and renormalised; KL(s || t); mean over
    the targets; weighted sum over relations."""
    p_s, p_t = log_s.exp().mean(-1), log_t.exp().mean(-1)  # heads averaged in probability
    total = log_s.new_zeros(())
    for r in range(R):
        per_node = []
        for i in range(6):
            idx = [e for e in range(EDGES.shape[1]) if EDGES[1, e] == i and TYPES[e] == r]
            if not idx:
                continue
            s, t = p_s[idx] / p_s[idx].sum(), p_t[idx] / p_t[idx].sum()
            per_node.append((s * (s.log() - t.log())).sum())
        if per_node:
            total = total + weights[r] * torch.stack(per_node).mean()
    return total


def test_relation_attention_matches_the_dense_definition_with_gradients() -> None:
    from study.distill.typed import relation_attention_loss

    log_s = _gat_like_log_attention(0, heads=2).requires_grad_(True)
    log_t = _gat_like_log_attention(1, heads=3)
    weights = [0.5, 0.2, 0.3]
    got = relation_attention_loss(log_s, log_t, EDGES, TYPES, R, weights=weights, num_nodes=6)
    want = _dense_relation_attention(log_s, log_t, weights)
    assert torch.allclose(got, want, atol=1e-12) and got > 0
    (g_got,) = torch.autograd.grad(got, log_s)
    (g_want,) = torch.autograd.grad(_dense_relation_attention(log_s, log_t, weights), log_s)
    assert torch.allclose(g_got, g_want, atol=1e-12)
    uniform = relation_attention_loss(log_s, log_t, EDGES, TYPES, R, num_nodes=6)
    assert torch.allclose(uniform, _dense_relation_attention(log_s, log_t, [1 / R] * R))


def test_relation_attention_differs_from_attention_over_mixed_relations() -> None:
    from study.distill.edge_attention import edge_attention_loss
    from study.distill.typed import relation_attention_loss

    log_s, log_t = _gat_like_log_attention(0, 1), _gat_like_log_attention(1, 1)
    typed = relation_attention_loss(log_s, log_t, EDGES, TYPES, R, weights=[1.0] * R)
    one = relation_attention_loss(log_s, log_t, EDGES, torch.zeros_like(TYPES), 1)
    assert torch.allclose(one, edge_attention_loss(log_s, log_t, EDGES, num_nodes=6))
    assert not torch.allclose(typed, one)
