"""edge_attention against an independent per-node formula (values and gradients, both
directions, both head modes), gradient-based importance against finite differences, the
attention GAT exposes against PyG's own, and the edge-set rules."""

from __future__ import annotations

import math

import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.explain.algorithm.utils import clear_masks, set_masks
from torch_geometric.nn import GATConv

from study.distill.edge_attention import (
    align_attention,
    edge_attention_loss,
    from_graph_layout,
    gradient_edge_importance,
    importance_log_attention,
    to_graph_layout,
)
from study.distill.methods import build_method
from study.models.attention import scatter_log_softmax_2d, set_attention_recording
from study.models.gat import build_gat
from study.models.gcn import GCN
from study.train_config import DistillConfig

# Five nodes; node 4 has no incoming edge, node 0 has three.
EDGES = torch.tensor([[1, 2, 3, 0, 2, 0, 4, 4], [0, 0, 0, 1, 1, 2, 2, 3]])
N = 5


def _scores(heads: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (
        3.0 * torch.randn(EDGES.shape[1], heads, generator=gen, dtype=torch.float64)
    ).requires_grad_()


def reference(raw_s: torch.Tensor, raw_t: torch.Tensor, direction: str, heads: str) -> torch.Tensor:
    """Per node, per head: softmax of the scores of the node's incoming edges (torch.softmax on
    a plain vector), heads averaged in probability space or paired by the uniform rule, then
    KL written out; the mean over nodes with an incoming edge."""
    hs, ht = raw_s.shape[1], raw_t.shape[1]
    per_node = []
    for i in range(N):
        into = (EDGES[1] == i).nonzero().flatten()
        if len(into) == 0:
            continue
        p = [torch.softmax(raw_s[into, h], 0) for h in range(hs)]
        q = [torch.softmax(raw_t[into, h], 0) for h in range(ht)]
        if heads == "mean":
            pairs = [(sum(p) / hs, sum(q) / ht)]
        else:  # student head h <- teacher head round((h + 1) * ht / hs) - 1, halves up
            pairs = [(p[h], q[max(0, math.floor((h + 1) * ht / hs + 0.5) - 1)]) for h in range(hs)]
        kls = []
        for a, b in pairs:
            first, second = (a, b) if direction == "student_teacher" else (b, a)
            kls.append(torch.sum(first * (torch.log(first) - torch.log(second))))
        per_node.append(sum(kls) / len(kls))
    return sum(per_node) / len(per_node)


def ours(raw_s: torch.Tensor, raw_t: torch.Tensor, direction: str, heads: str) -> torch.Tensor:
    log_s = scatter_log_softmax_2d(raw_s, EDGES[1], N)
    log_t = scatter_log_softmax_2d(raw_t, EDGES[1], N)
    return edge_attention_loss(log_s, log_t, EDGES, direction=direction, heads=heads, num_nodes=N)


@pytest.mark.parametrize("direction", ["student_teacher", "teacher_student"])
@pytest.mark.parametrize(
    ("heads", "hs", "ht"), [("mean", 2, 3), ("uniform", 2, 4), ("uniform", 3, 2)]
)
def test_loss_and_gradients_match_the_per_node_formula(
    direction: str, heads: str, hs: int, ht: int
) -> None:
    raw_s, raw_t = _scores(hs, 0), _scores(ht, 1)
    got, want = ours(raw_s, raw_t, direction, heads), reference(raw_s, raw_t, direction, heads)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    assert got.item() > 0.01  # not a trivially zero case
    g_got = torch.autograd.grad(got, (raw_s, raw_t))
    g_want = torch.autograd.grad(want, (raw_s, raw_t))
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradcheck_in_double_precision() -> None:
    raw_s, raw_t = _scores(2, 2), _scores(2, 3)
    for direction in ("student_teacher", "teacher_student"):
        assert torch.autograd.gradcheck(
            lambda a, b, d=direction: ours(a, b, d, "mean"), (raw_s, raw_t)
        )


def test_identical_attention_costs_nothing_and_large_scores_stay_finite() -> None:
    raw = _scores(2, 4)
    assert ours(raw, raw.detach(), "student_teacher", "mean").item() == pytest.approx(0, abs=1e-14)
    huge = (raw * 1e4).detach().requires_grad_()  # exp would overflow outside log space
    loss = ours(huge, raw.detach(), "student_teacher", "mean")
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(huge.grad).all()


def test_gat_exposes_pyg_attention_before_dropout_only_when_recording() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, 6, generator=gen)
    torch.manual_seed(0)
    model = build_gat(6, 3, width=4, depth=2, heads=2, dropout=0.5)
    assert model(x, EDGES).attention is None  # the normal path keeps nothing
    set_attention_recording(model, True)
    model.eval()
    layers = model(x, EDGES).attention()
    assert len(layers) == 2
    h = torch.nn.functional.elu(model.convs[0](x, EDGES))
    for conv, inputs, (edges, log_alpha) in zip(model.convs, (x, h), layers, strict=True):
        assert isinstance(conv, GATConv)
        _, (pyg_edges, alpha) = conv(inputs, EDGES, return_attention_weights=True)
        assert torch.equal(edges, pyg_edges)
        torch.testing.assert_close(log_alpha.exp(), alpha)
    # Training: PyG's alpha has dropout's zeros (and 1 / (1 - p) scaling); ours is the
    # distribution before the dropout, positive and summing to 1 per target.
    model.train()
    recorder = model.attention_recorder
    recorder.start()
    _, (_, dropped) = model.convs[0](x, EDGES, return_attention_weights=True)
    ((edges, log_alpha),) = recorder.take()()
    assert (dropped == 0).any()
    kept = dropped != 0
    torch.testing.assert_close(dropped[kept], log_alpha.exp()[kept] / 0.5)
    sums = torch.zeros(N, 2).index_add_(0, edges[1], log_alpha.exp())
    torch.testing.assert_close(sums, torch.ones(N, 2))


def test_gradient_importance_matches_finite_differences() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, 4, generator=gen, dtype=torch.float64)
    torch.manual_seed(1)
    model = GCN(4, 3, width=6, depth=2, dropout=0.0).double().eval()
    got = gradient_edge_importance(model, x, EDGES, batch=2)  # batches split the targets

    def y(weights: torch.Tensor, node: int) -> float:
        set_masks(model, weights, EDGES, apply_sigmoid=False)
        try:
            with torch.no_grad():
                return float(model(x, EDGES).logits[node].max())
        finally:
            clear_masks(model)

    step = 1e-6
    for e in range(EDGES.shape[1]):
        up, down = (
            torch.ones(EDGES.shape[1], dtype=torch.float64),
            torch.ones(EDGES.shape[1], dtype=torch.float64),
        )
        up[e] += step
        down[e] -= step
        i = int(EDGES[1, e])
        fd = abs(y(up, i) - y(down, i)) / (2 * step)
        assert got[e].item() == pytest.approx(fd, rel=1e-5, abs=1e-9)
    assert (got > 0).any()


def test_importance_is_a_floored_distribution_per_target() -> None:
    g = torch.tensor([2.0, 1.0, 1.0, 0.0, 0.0, 3.0, 0.0, 5.0], dtype=torch.float64)
    log_q = importance_log_attention(g, EDGES, N, floor=1e-3).squeeze(-1)
    q = log_q.exp()
    torch.testing.assert_close(q[:3], torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))
    torch.testing.assert_close(q[3:5], torch.full((2,), 0.5, dtype=torch.float64))  # all zero
    expected = torch.tensor([1.0, 1e-3], dtype=torch.float64)
    torch.testing.assert_close(q[5:7], expected / expected.sum())
    assert q[7].item() == pytest.approx(1.0)


def test_union_drops_one_sided_self_loops_and_floors_missing_edges() -> None:
    loops = torch.arange(N)
    student = torch.cat([EDGES, torch.stack([loops, loops])], dim=1)  # a GAT's own loops
    teacher = torch.cat([EDGES[:, 1:], torch.tensor([[3], [4]])], dim=1)  # 1->0 missing, 3->4 extra
    log_s = scatter_log_softmax_2d(
        _scores(1, 5).detach()[:1].repeat(student.shape[1], 1), student[1], N
    )
    log_t = scatter_log_softmax_2d(torch.zeros(teacher.shape[1], 1), teacher[1], N)
    edges, a_s, a_t = align_attention(student, log_s, teacher, log_t.double(), N, floor=0.01)
    assert not (edges[0] == edges[1]).any()  # loops only the student has: dropped
    keys = set(zip(edges[0].tolist(), edges[1].tolist(), strict=True))
    assert keys == set(zip(EDGES[0].tolist(), EDGES[1].tolist(), strict=True)) | {(3, 4)}
    for a in (a_s, a_t):
        sums = torch.zeros(N, 1, dtype=a.dtype).index_add_(0, edges[1], a.exp())
        torch.testing.assert_close(sums[:4], torch.ones(4, 1, dtype=a.dtype))
    at = {
        (int(j), int(i)): float(v)
        for j, i, v in zip(edges[0], edges[1], a_t.exp()[:, 0], strict=True)
    }
    # node 0: teacher has 2->0, 3->0 uniform, 1->0 floored at 0.01 then renormalised
    assert at[(1, 0)] == pytest.approx(0.01 / 1.01)
    assert at[(2, 0)] == pytest.approx(0.5 / 1.01)


def test_graph_layout_round_trip_and_batches() -> None:
    loops = torch.arange(N)
    edges = torch.cat([EDGES, torch.stack([loops, loops])], dim=1)
    values = torch.randn(edges.shape[1], 2)
    per_edge, per_node = to_graph_layout(EDGES, N, edges, values)
    back_edges, back = from_graph_layout(EDGES, N, per_edge, per_node)
    assert torch.equal(back_edges, edges) and torch.equal(back, values)
    # Two graphs in a batch: the layouts concatenate like PyG's Batch stacks edges and nodes.
    batch = Batch.from_data_list([Data(edge_index=EDGES, num_nodes=N)] * 2)
    both_edges, both = from_graph_layout(
        batch.edge_index, 2 * N, torch.cat([per_edge, per_edge]), torch.cat([per_node, per_node])
    )
    assert both_edges.shape[1] == 2 * edges.shape[1]
    gat_order = torch.cat([batch.edge_index, torch.stack([torch.arange(2 * N)] * 2)], dim=1)
    assert torch.equal(both_edges, gat_order)  # what the student's GAT attends over, same order


def test_the_method_on_a_graph_equals_the_loss_of_the_two_models() -> None:
    gen = torch.Generator().manual_seed(2)
    graph = Data(x=torch.randn(N, 6, generator=gen), edge_index=EDGES)
    torch.manual_seed(2)
    teacher = build_gat(6, 3, width=4, depth=3, heads=3, dropout=0.0).eval()
    student = build_gat(6, 3, width=2, depth=2, heads=1, dropout=0.0)
    method = build_method(DistillConfig("edge_attention", {"heads": "mean"}))
    method.prepare(student, teacher)
    with torch.no_grad():
        t_out = teacher(graph.x, graph.edge_index)
        pre = method.precompute(t_out, graph)
    s_out = student(graph.x, graph.edge_index)
    term = method.term(
        s_out, t_out, edge_index=EDGES, precomputed=pre, adapters=None, multilabel=False
    )
    s_layers, t_layers = s_out.attention(), t_out.attention()
    # uniform over attention layers: student 0 <- teacher round(1.5) - 1 = 1, student 1 <- 2
    want = sum(
        edge_attention_loss(s_layers[s][1], t_layers[t][1], s_layers[s][0], num_nodes=N)
        for s, t in ((0, 1), (1, 2))
    )
    assert term.item() == pytest.approx(float(want.detach()), rel=1e-6)
    term.backward()
    assert student.convs[0].att_src.grad is not None
    # Only training forwards of the student record: evaluation and latency keep nothing.
    assert student.eval()(graph.x, graph.edge_index).attention is None


# ---------------------------------------------------------------- refused before anything starts


def _validate(tmp_path, capsys, **overrides):  # type: ignore[no-untyped-def]
    import yaml

    from study.cli import main
    from tests.studies import tiny_study

    study = tiny_study("ea", methods=["none", "edge_attention"], search={}, **overrides)
    path = tmp_path / "ea.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    code = main(["validate", str(path)])
    captured = capsys.readouterr()
    return code, captured, str(path)


@pytest.mark.usefixtures("one_thread")
def test_students_and_teachers_without_attention_are_refused_in_one_line(
    tmp_path, capsys: pytest.CaptureFixture
) -> None:
    from tests.studies import tiny_study

    base = tiny_study("x")
    mlp = {**{k: v for k, v in base["student"].items() if k != "heads"}, "arch": "mlp"}
    code, captured, path = _validate(tmp_path, capsys, student=mlp)
    assert code == 2 and captured.out == "" and len(captured.err.splitlines()) == 1
    assert f"{path}: student.arch: method edge_attention" in captured.err
    assert "mlp has none" in captured.err

    gcn = {**{k: v for k, v in base["teacher"].items() if k != "heads"}, "arch": "gcn"}
    code, captured, path = _validate(tmp_path, capsys, teacher=gcn)
    assert code == 2 and len(captured.err.splitlines()) == 1
    assert f"{path}: method_defaults.edge_attention.teacher_source:" in captured.err
    assert "expected gradient" in captured.err

    defaults = {"edge_attention": {"teacher_source": "gradient"}}
    code, captured, _ = _validate(tmp_path, capsys, teacher=gcn, method_defaults=defaults)
    assert code == 0, captured.err


def test_prepare_refuses_models_without_attention() -> None:
    from study.errors import UserInputError
    from study.models.mlp import MLP

    gat = build_gat(6, 3, width=2, depth=2, heads=1)
    method = build_method(DistillConfig("edge_attention", {}))
    with pytest.raises(UserInputError, match="the student \\(MLP\\) has no attention"):
        method.prepare(MLP(6, 3, width=4, depth=2), gat)
    with pytest.raises(UserInputError, match="expected teacher_source: gradient"):
        method.prepare(gat, GCN(6, 3, width=4, depth=2))
    build_method(DistillConfig("edge_attention", {"teacher_source": "gradient"})).prepare(
        gat, GCN(6, 3, width=4, depth=2)
    )
