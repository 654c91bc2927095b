"""GCN, GraphSAGE and MLP students: layer formulas, outputs, gradients, registry, distillation."""

from __future__ import annotations

import math

import pytest
import torch

from study.catalogs import MODELS
from study.data.synthetic import synthetic_sbm
from study.errors import UserInputError
from study.models import GCN, MLP, GraphSAGE, build_model
from study.train import DistillConfig, TrainConfig, distill_student, train_teacher
from tests.graphs import small_graph

STUDENTS = ("gcn", "sage", "mlp")


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Fixed initial weights, whatever ran before."""
    torch.manual_seed(0)


# ------------------------------------------------------------------ one layer, by hand


def test_gcn_layer_is_the_symmetric_normalised_propagation() -> None:
    x, edge_index = small_graph()
    model = GCN(5, 3, width=4, depth=1).eval()
    conv = model.convs[0]
    n = x.shape[0]
    adj = torch.eye(n)  # A + I: every node also hears itself
    for j, i in edge_index.t().tolist():
        adj[i, j] = 1.0
    deg = adj.sum(dim=1)
    norm = adj / torch.sqrt(deg[:, None] * deg[None, :])
    expected = norm @ (x @ conv.lin.weight.t()) + conv.bias
    torch.testing.assert_close(model(x, edge_index).logits, expected)


def test_sage_layer_adds_own_features_to_the_neighbour_mean() -> None:
    x, edge_index = small_graph()
    model = GraphSAGE(5, 3, width=4, depth=1).eval()
    conv = model.convs[0]
    rows = []
    for i in range(x.shape[0]):  # per node: W_root x_i + W_neigh mean_{j -> i} x_j + b
        sources = edge_index[0, edge_index[1] == i]
        mean = x[sources].mean(dim=0) if len(sources) else torch.zeros(x.shape[1])
        rows.append(conv.lin_r(x[i]) + conv.lin_l(mean))  # lin_l carries the bias
    torch.testing.assert_close(model(x, edge_index).logits, torch.stack(rows))


def test_mlp_is_linear_relu_linear() -> None:
    x, _ = small_graph()
    model = MLP(5, 3, width=4, depth=2).eval()
    first, second = model.convs
    hidden = torch.clamp(x @ first.weight.t() + first.bias, min=0)
    out = model(x)
    torch.testing.assert_close(out.hidden[0], hidden)
    torch.testing.assert_close(out.logits, hidden @ second.weight.t() + second.bias)


# ------------------------------------------------------------------ outputs and gradients


@pytest.mark.parametrize("arch", STUDENTS)
def test_output_shapes_and_hidden_after_relu(arch: str) -> None:
    x, edge_index = small_graph()
    model = build_model(arch, in_channels=5, out_channels=3, width=4, depth=3).eval()
    out = model(x, edge_index)
    assert out.logits.shape == (7, 3)
    assert [tuple(h.shape) for h in out.hidden] == [(7, 4), (7, 4)]
    assert out.edge_indices is None
    assert all((h >= 0).all() for h in out.hidden)
    # The logits are the last layer applied to the last hidden features, with no ReLU after.
    last = (
        model.convs[-1](out.hidden[-1])
        if arch == "mlp"
        else model.convs[-1](out.hidden[-1], edge_index)
    )
    assert torch.equal(out.logits, last)


@pytest.mark.parametrize("arch", STUDENTS)
def test_depth_one_hidden_is_logits(arch: str) -> None:
    x, edge_index = small_graph()
    out = build_model(arch, in_channels=5, out_channels=3, width=4, depth=1)(x, edge_index)
    assert out.logits.shape == (7, 3)
    assert len(out.hidden) == 1 and out.hidden[0] is out.logits


@pytest.mark.parametrize("arch", STUDENTS)
def test_gradients_reach_every_parameter(arch: str) -> None:
    x, edge_index = small_graph()
    # Wide enough that no layer is dead (all-zero after ReLU) at this seed or most others.
    model = build_model(arch, in_channels=5, out_channels=3, width=16, depth=3)
    out = model(x, edge_index)
    (out.logits.square().sum() + out.hidden[0].sum()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("arch", STUDENTS)
def test_eval_is_deterministic_and_train_uses_dropout(arch: str) -> None:
    x, edge_index = small_graph()
    model = build_model(arch, in_channels=5, out_channels=3, width=4, depth=2, dropout=0.5)
    model.eval()
    assert torch.equal(model(x, edge_index).logits, model(x, edge_index).logits)
    model.train()
    torch.manual_seed(1)
    a = model(x, edge_index).logits
    torch.manual_seed(2)
    assert not torch.equal(a, model(x, edge_index).logits)


def test_mlp_ignores_thesmall_graph() -> None:
    x, edge_index = small_graph()
    model = build_model("mlp", in_channels=5, out_channels=3, width=4, depth=3).eval()
    reference = model(x, edge_index)
    other = torch.tensor([[0, 0, 6], [5, 3, 1]])
    empty = torch.empty(2, 0, dtype=torch.long)
    for edges in (other, empty, None):
        out = model(x, edges)
        assert torch.equal(out.logits, reference.logits)
        assert all(torch.equal(a, b) for a, b in zip(out.hidden, reference.hidden, strict=True))
    # The graph models do read it: the same check fails for them.
    gcn = build_model("gcn", in_channels=5, out_channels=3, width=4, depth=2).eval()
    assert not torch.equal(gcn(x, edge_index).logits, gcn(x, empty).logits)


# ------------------------------------------------------------------ registry and spec


@pytest.mark.parametrize("arch", STUDENTS)
def test_spec_rebuilds_the_same_model(arch: str) -> None:
    x, edge_index = small_graph()
    model = build_model(arch, in_channels=5, out_channels=3, width=4, depth=3, dropout=0.1)
    model.eval()
    assert model.spec == {
        "arch": arch,
        "in_channels": 5,
        "out_channels": 3,
        "width": 4,
        "depth": 3,
        "dropout": 0.1,
    }
    clone = build_model(**model.spec).eval()
    assert clone.spec == model.spec
    clone.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(clone(x, edge_index).logits, model(x, edge_index).logits)


def test_registry_lists_and_rejects() -> None:
    assert {"gcn", "sage", "mlp"} <= set(MODELS.names())
    with pytest.raises(
        UserInputError, match=r"gcn: unknown option 'heads' \(valid: depth, dropout, width\)"
    ):
        build_model("gcn", in_channels=5, out_channels=3, width=4, depth=2, heads=2)
    with pytest.raises(
        UserInputError, match=r"mlp: unknown option 'k' \(valid: depth, dropout, width\)"
    ):
        build_model("mlp", in_channels=5, out_channels=3, width=4, depth=2, k=3)
    # Sizes left out take the catalog schema's defaults (the one place they are written).
    assert build_model("sage", in_channels=5, out_channels=3, width=4).spec["depth"] == 2
    with pytest.raises(UserInputError, match="sage has no presets"):
        build_model("sage", in_channels=5, out_channels=3, preset="ppi_student")
    with pytest.raises(
        UserInputError, match=r"unknown architecture 'gin' \(valid: dgcnn, gat, gcn"
    ):
        build_model("gin", in_channels=5, out_channels=3)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"width": 4, "depth": 0}, "depth=0 must be at least 1"),
        ({"width": 0, "depth": 2}, "widths must be positive"),
        ({"width": 4, "depth": 2, "dropout": 1.0}, r"dropout=1.0 must be in \[0, 1\)"),
    ],
)
@pytest.mark.parametrize("arch", STUDENTS)
def test_bad_sizes_raise(arch: str, kwargs: dict, needle: str) -> None:
    with pytest.raises(UserInputError, match=f"{arch}: {needle}"):
        build_model(arch, in_channels=5, out_channels=3, **kwargs)


# ------------------------------------------------------------------ distillation


@pytest.fixture(scope="module")
def sbm_and_teacher():
    torch.manual_seed(0)
    task = synthetic_sbm(
        num_nodes=60, num_classes=3, num_features=8, train_per_class=5, val=15, test=15
    )
    teacher = build_model("gat", in_channels=8, out_channels=3, width=4, depth=2, heads=2)
    train_teacher(teacher, task, TrainConfig(epochs=5, lr=0.01, seed=0))
    return task, teacher.eval()


@pytest.mark.parametrize("method", ["kd", "fitnet", "at", "lsp"])
@pytest.mark.parametrize("arch", ["gcn", "mlp"])
def test_distill_from_a_gat_teacher(sbm_and_teacher, arch: str, method: str) -> None:
    task, teacher = sbm_and_teacher
    student = build_model(arch, in_channels=8, out_channels=3, width=6, depth=2)
    before = [p.detach().clone() for p in student.parameters()]
    distill = DistillConfig(method=method, params={} if method == "kd" else {"lambda": 1.0})
    result = distill_student(student, teacher, task, TrainConfig(epochs=3, lr=0.01), distill)
    assert result.epochs_run == 3 and len(result.history) == 3
    for record in result.history:
        assert math.isfinite(record["train_loss"])
        # Every method compares the student with this (different) teacher: a positive term.
        assert math.isfinite(record["distill_loss"]) and record["distill_loss"] > 0
    assert 0.0 <= result.val_score <= 1.0 and 0.0 <= result.test_score <= 1.0
    changed = [not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True)]
    assert any(changed)


# ------------------------------------------------------------------ the study file


def test_student_arch_is_a_search_dimension_on_node_data() -> None:
    from study.config import grid_configs, parse_study_spec, resolve_trial

    raw = {
        "name": "archs",
        "dataset": {"name": "synthetic_sbm"},
        "teacher": {"arch": "gat", "width": 4, "heads": 2},
        "student": {"arch": "gat", "width": 4, "heads": 2},
        "methods": ["lsp"],
        "search": {
            "student.arch": {"choice": ["gat", "gcn", "sage", "mlp"]},
            "student.heads": {"choice": [1, 2]},
            "student.depth": {"choice": [1, 3]},
        },
        "searcher": {"algorithm": "grid"},
    }
    spec = parse_study_spec(raw, "archs.yaml")
    heads = next(d for d in spec.search if d.name == "student.heads")
    assert heads.condition == ("student.arch", ("gat",))
    x, edge_index = small_graph()
    built: dict[str, set[int]] = {}
    for params in grid_configs(spec):
        plan = resolve_trial(spec, {**params, "seed": 0})
        kwargs = plan.student.build_kwargs()
        assert ("heads" in kwargs) == (plan.student.arch == "gat")
        model = build_model(plan.student.arch, in_channels=5, out_channels=3, **kwargs)
        assert model(x, edge_index).logits.shape == (7, 3)
        built.setdefault(plan.student.arch, set()).add(kwargs["depth"])
    assert built == {arch: {1, 3} for arch in ("gat", "gcn", "sage", "mlp")}

    raw["student"] = {"arch": "mlp", "heads": 2}
    raw["search"] = {}
    with pytest.raises(UserInputError, match="student.heads: applies only to arch gat"):
        parse_study_spec(raw, "archs.yaml")
    raw["student"] = {"arch": "mlp"}
    raw["dataset"] = {"name": "synthetic_shapes"}
    raw["teacher"] = {"arch": "dgcnn"}
    with pytest.raises(UserInputError, match="mlp is a node-classification model"):
        parse_study_spec(raw, "archs.yaml")
