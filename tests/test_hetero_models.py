"""The relation-aware RGCN: shapes, separate weights per relation, PyG's RGCNConv's maths, the
catalog and spec round trip, export; the MLP student on a typed task."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch_geometric.nn import RGCNConv

from study import export
from study.data.base import io_channels
from study.data.hetero import synthetic_hetero
from study.models import build_model
from study.models.base import model_inputs
from study.models.rgcn import RGCN, RelationalConv
from study.train import distill_student, seed_everything, train_teacher
from study.train_config import DistillConfig, TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def task():
    return synthetic_hetero(num_users=120, num_merchants=12, num_devices=20, val=30, test=40)


def _graph(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(10, 4, generator=g)
    edges = torch.randint(0, 10, (2, 40), generator=g)
    types = torch.randint(0, 3, (40,), generator=g)
    node_type = torch.randint(0, 2, (10,), generator=g)
    return x, edges, types, node_type


def test_relational_conv_is_pygs_rgcnconv_with_mean() -> None:
    x, edges, types, _ = _graph()
    torch.manual_seed(0)
    ours, pyg = RelationalConv(4, 5, 3), RGCNConv(4, 5, 3, aggr="mean")
    with torch.no_grad():
        ours.weight.copy_(pyg.weight)
        ours.root.weight.copy_(pyg.root.t())
        ours.root.bias.copy_(pyg.bias)
    torch.testing.assert_close(ours(x, edges, types), pyg(x, edges, types), rtol=1e-5, atol=1e-5)


def test_rgcn_shapes_and_separate_relation_weights() -> None:
    x, edges, types, node_type = _graph()
    torch.manual_seed(0)
    model = RGCN(4, 3, width=8, depth=3, num_node_types=2, num_relations=3).eval()
    out = model(x, edges, types, node_type)
    assert out.logits is not None and out.logits.shape == (10, 3)
    assert [tuple(h.shape) for h in out.hidden] == [(10, 8), (10, 8)]
    assert all(tuple(c.weight.shape[:1]) == (3,) for c in model.convs)
    # Relations are not interchangeable: relabelling edges changes the output; changing one
    # relation's weights changes only the targets of that relation's edges.
    other = model(x, edges, (types + 1) % 3, node_type).logits
    assert not torch.allclose(out.logits, other)
    one = RGCN(4, 3, width=8, depth=1, num_node_types=2, num_relations=3).eval()
    before = one(x, edges, types, node_type).logits
    with torch.no_grad():
        one.convs[0].weight[2] += 1.0
    after = one(x, edges, types, node_type).logits
    touched = torch.zeros(10, dtype=torch.bool)
    touched[edges[1, types == 2]] = True
    changed = (after - before).abs().sum(-1) > 1e-6
    assert changed.tolist() == touched.tolist()
    # Node types have their own input projection.
    flipped = model(x, edges, types, 1 - node_type).logits
    assert not torch.allclose(out.logits, flipped)


def test_rgcn_from_the_catalog_rebuilds_from_its_spec(task) -> None:
    model = build_model("rgcn", width=16, depth=2, **io_channels(task))
    assert model.spec["num_relations"] == 8 and model.spec["num_node_types"] == 3
    again = build_model(**model.spec)
    assert again.spec == model.spec
    assert len(model_inputs(model, task.train[0])) == 4
    # Homogeneous architectures ignore the types and see the relations collapsed.
    gcn = build_model("gcn", width=16, depth=2, **io_channels(task))
    assert len(model_inputs(gcn, task.train[0])) == 2


def test_export_and_reload_of_an_rgcn(task, tmp_path: Path) -> None:
    model = build_model("rgcn", width=8, depth=2, **io_channels(task)).eval()
    inputs = model_inputs(model, task.test[0])
    folder = export.export_student(model, tmp_path / "student", metadata={}, example_inputs=inputs)
    loaded = export.load(folder)
    torch.testing.assert_close(loaded(*inputs).logits, model(*inputs).logits)
    config = export.read_config(folder)
    assert config["torchscript"]["inputs"] == ["x", "edge_index", "edge_type", "node_type"]


def test_mlp_and_rgcn_students_learn_from_an_rgcn_teacher(task) -> None:
    cfg = TrainConfig(epochs=30, lr=0.02, seed=0)
    seed_everything(0)
    teacher = build_model("rgcn", width=16, depth=2, **io_channels(task))
    t = train_teacher(teacher, task, cfg)
    short = TrainConfig(epochs=3, lr=0.02, seed=0)
    for arch, method in (("mlp", "kd"), ("mlp", "at"), ("rgcn", "fitnet"), ("mlp", "lsp")):
        seed_everything(0)
        student = build_model(arch, width=8, depth=2, **io_channels(task))
        r = distill_student(student, t.model, task, short, DistillConfig(method=method))
        assert all(h["distill_loss"] > 0.0 for h in r.history), (arch, method)
    # The relation-aware student beats chance (two balanced classes) by a wide margin.
    seed_everything(0)
    student = build_model("rgcn", width=8, depth=2, **io_channels(task))
    r = distill_student(student, t.model, task, cfg, DistillConfig(method="lsp"))
    assert r.test_score > 0.75


def test_pyfunc_request_of_an_rgcn_carries_the_types(task) -> None:
    from mlflow.exceptions import MlflowException

    from study.pyfunc_model import node_request, predict_probabilities, task_example

    model = build_model("rgcn", width=8, depth=2, **io_channels(task)).eval()
    g = task.test[0]
    nodes = g.mask.nonzero().flatten()[:5]
    request = node_request(g.x, g.edge_index, nodes, g.edge_type, g.node_type)
    got = predict_probabilities(model, request)
    want = model(*model_inputs(model, g)).logits[nodes].softmax(-1).detach().numpy()
    assert abs(got - want).max() < 1e-5
    plain = {k: v for k, v in request.items() if k not in ("edge_type", "node_type")}
    with pytest.raises(MlflowException, match="missing 'edge_type'"):
        predict_probabilities(model, plain)
    for key, bad in (("edge_type", -1), ("edge_type", 99), ("node_type", 3)):
        wrong = dict(request)
        wrong[key] = request[key].copy()
        wrong[key][0] = bad
        with pytest.raises(MlflowException, match=f"'{key}' holds ids outside"):
            predict_probabilities(model, wrong)
    example = task_example(task, model)
    assert {"edge_type", "node_type"} <= set(example)
    assert example["edge_type"].shape[0] == example["edge_index"].shape[1]


def test_gat_student_learns_each_relations_attention_from_a_gat_teacher(task) -> None:
    # edge_attention on a typed graph: the GATs attend over every incoming edge; the term
    # compares their attention renormalised within each relation (study.distill.typed).
    from study.distill.methods import build_method
    from study.distill.typed import graph_types, relation_attention_loss
    from study.models.attention import set_attention_recording

    cfg = TrainConfig(epochs=3, lr=0.02, seed=0)
    seed_everything(0)
    teacher = build_model("gat", width=8, depth=2, heads=2, **io_channels(task))
    t = train_teacher(teacher, task, cfg)
    student = build_model("gat", width=4, depth=2, heads=1, **io_channels(task))
    r = distill_student(student, t.model, task, cfg, DistillConfig(method="edge_attention"))
    assert all(h["distill_loss"] > 0.0 for h in r.history)
    # The method's term on the typed graph is the per-relation loss of the two layers' attention.
    graph, method = task.train[0], build_method(DistillConfig(method="edge_attention"))
    method.prepare(r.model, t.model)
    set_attention_recording(r.model, True)
    with torch.no_grad():
        out_t, out_s = t.model(graph.x, graph.edge_index), r.model(graph.x, graph.edge_index)
    types = graph_types(graph)
    assert types is not None
    term = method.term(
        out_s, out_t, edge_index=graph.edge_index, precomputed=method.precompute(out_t, graph),
        types=types,
    )  # fmt: skip
    from study.distill.edge_attention import to_graph_layout

    n, want = graph.num_nodes, torch.zeros(())
    # The default layer_map "uniform" pairs the two attention layers of each side in order.
    layers = zip(out_s.attention(), out_t.attention(), strict=True)
    for (edges_s, log_s), (edges_t, log_t) in layers:
        per_s = to_graph_layout(graph.edge_index, n, edges_s, log_s)[0]
        per_t = to_graph_layout(graph.edge_index, n, edges_t, log_t)[0]
        known = ~(per_s.isnan().any(-1) | per_t.isnan().any(-1))
        want = want + relation_attention_loss(
            per_s[known], per_t[known], graph.edge_index[:, known], types.edge_type[known],
            types.num_relations, num_nodes=n,
        )  # fmt: skip
    assert torch.allclose(term, want) and term > 0
