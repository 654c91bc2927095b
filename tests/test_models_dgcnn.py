"""DGCNN teacher/student: parameter counts, EdgeConv against a per-point loop, graphs, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from study.errors import UserInputError
from study.models import DGCNN, build_dgcnn, build_model, count_parameters, knn_graph_dense
from study.models.dgcnn import dgcnn_modelnet_student, dgcnn_modelnet_teacher, edge_widths

B, P = 2, 32


def _points(seed: int = 0) -> torch.Tensor:
    return torch.rand(B, P, 3, generator=torch.Generator().manual_seed(seed))


def _tiny(**kwargs) -> DGCNN:
    torch.manual_seed(0)
    options = {"edge_channels": [8, 8, 16], "emb_dims": 16, "mlp": [12], "k": 4, "dropout": 0.5}
    return DGCNN(3, num_classes=5, **{**options, **kwargs})


def test_modelnet_teacher_parameter_count() -> None:
    count = count_parameters(dgcnn_modelnet_teacher(40))
    assert count == 1_809_320
    assert abs(count / 1.81e6 - 1) < 0.03


def test_modelnet_student_parameter_count() -> None:
    count = count_parameters(dgcnn_modelnet_student(40))
    assert count == 101_784
    assert abs(count / 0.10e6 - 1) < 0.03


def test_output_shapes() -> None:
    out = _tiny()(_points())
    assert out.logits.shape == (B, 5)
    assert [tuple(h.shape) for h in out.hidden] == [(B * P, 8), (B * P, 8), (B * P, 16)]
    assert out.edge_indices is not None
    assert [tuple(e.shape) for e in out.edge_indices] == [(2, B * P * 4)] * 3


def test_edge_indices_are_each_layers_knn_graph() -> None:
    points = _points()
    out = _tiny().eval()(points)
    inputs = [points] + [h.view(B, P, -1) for h in out.hidden[:-1]]
    for layer, (x, edges) in enumerate(zip(inputs, out.edge_indices, strict=True)):
        assert torch.equal(edges, knn_graph_dense(x, 4, include_self=True)), layer
    # The graph is dynamic: deeper layers do not just repeat the coordinate graph.
    assert not torch.equal(out.edge_indices[0], out.edge_indices[2])


def test_edge_conv_matches_per_point_loop() -> None:
    model = _tiny().eval()
    conv = model.edge_convs[2]  # 8 -> 16
    with torch.no_grad():  # non-trivial BN statistics so the check covers the affine part
        conv.bn.running_mean.uniform_(-0.5, 0.5)
        conv.bn.running_var.uniform_(0.5, 2.0)
        conv.bn.weight.uniform_(-1.0, 1.0)
        conv.bn.bias.uniform_(-0.5, 0.5)
    x = torch.randn(B, P, 8, generator=torch.Generator().manual_seed(3))
    idx = torch.randint(0, P, (B, P, 4), generator=torch.Generator().manual_seed(4))
    got = conv(x, idx)
    bn = conv.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    expected = torch.empty(B, P, 16)
    for b in range(B):
        for i in range(P):
            edge_out = []
            for j in idx[b, i].tolist():
                h = conv.lin(torch.cat([x[b, j] - x[b, i], x[b, i]]))  # DGCNN's [x_j - x_i, x_i]
                h = (h - bn.running_mean) * scale + bn.bias
                edge_out.append(F.leaky_relu(h, 0.2))
            expected[b, i] = torch.stack(edge_out).max(dim=0).values
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_parameter() -> None:
    model = _tiny(dropout=0.0).train()
    out = model(_points())
    (out.logits.square().sum() + out.hidden[0].sum()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


def test_eval_is_deterministic_and_permutation_invariant() -> None:
    model = _tiny().eval()
    points = _points()
    first, second = model(points), model(points)
    assert torch.equal(first.logits, second.logits)
    for a, b in zip(first.hidden, second.hidden, strict=True):
        assert torch.equal(a, b)
    perm = torch.randperm(P, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(model(points[:, perm]).logits, first.logits)


def test_train_mode_uses_dropout() -> None:
    model = _tiny(dropout=0.5).train()
    points = _points()
    torch.manual_seed(1)
    a = model(points).logits
    torch.manual_seed(2)
    assert not torch.equal(a, model(points).logits)


def test_build_dgcnn_width_pattern() -> None:
    assert edge_widths(64, 4) == [64, 64, 128, 256]
    assert edge_widths(8, 1) == [8]
    model = build_dgcnn(5, width=4, depth=3, k=3, emb_dims=8, mlp=[6])
    assert model.spec["edge_channels"] == [4, 4, 8]
    out = model.eval()(_points())
    assert [h.shape[1] for h in out.hidden] == [4, 4, 8]
    assert out.edge_indices[0].shape == (2, B * P * 3)
    teacher = build_dgcnn(40, width=64, depth=4, k=20, emb_dims=1024, mlp=[512, 256])
    assert count_parameters(teacher) == 1_809_320


def test_bad_options_raise() -> None:
    with pytest.raises(UserInputError, match="valid: 1..32"):
        _tiny(k=33)(_points())
    with pytest.raises(UserInputError, match="edge_channels"):
        DGCNN(3, [], 16, [8])
    with pytest.raises(UserInputError, match="depth=0"):
        build_dgcnn(5, width=4, depth=0, k=3, emb_dims=8, mlp=[6])


def test_registry_presets_and_spec_round_trip() -> None:
    student = build_model("dgcnn", in_channels=3, out_channels=40, preset="modelnet_student")
    assert count_parameters(student) == 101_784
    assert student.spec["k"] == 10 and student.spec["emb_dims"] == 88
    assert count_parameters(build_model(**student.spec)) == 101_784
    with pytest.raises(UserInputError, match="valid: modelnet_student, modelnet_teacher"):
        build_model("dgcnn", in_channels=3, out_channels=40, preset="ppi_teacher")
    model = build_model(
        "dgcnn", in_channels=3, out_channels=5, width=4, depth=2, k=3, emb_dims=8, mlp=[6]
    ).eval()
    clone = build_model(**model.spec).eval()
    assert clone.spec == model.spec
    clone.load_state_dict(model.state_dict())  # strict: same parameter names and shapes
    points = _points()
    torch.testing.assert_close(clone(points).logits, model(points).logits)


@pytest.mark.parametrize("grad", [True, False])
def test_eval_edgeconv_takes_the_max_before_batchnorm_exactly(grad: bool) -> None:
    """The eval shortcut (max over neighbours first) equals BN + LeakyReLU + max on all edges,
    with negative BN scales included; with gradients (the gathered max) and without (the
    blocked CPU max a frozen teacher runs)."""
    from study.models.dgcnn import EdgeConvDense
    from study.models.knn import knn_indices

    torch.manual_seed(0)
    conv = EdgeConvDense(5, 7)
    with torch.no_grad():
        conv.bn.running_mean.normal_()
        conv.bn.running_var.uniform_(0.5, 2.0)
        conv.bn.weight.normal_()  # some channels get a negative scale
        conv.bn.bias.normal_()
    assert (conv.bn.weight < 0).any()
    x = torch.randn(2, 16, 5)
    idx = knn_indices(x, 4)
    conv.eval()
    with torch.set_grad_enabled(grad):
        fast = conv(x, idx)
    assert fast.requires_grad == grad
    # Recompute the reference by hand: BN with running stats over every edge, then the max.
    w_diff, w_centre = conv.lin.weight.split(5, dim=1)
    neighbour, centre = x @ w_diff.t(), x @ (w_centre - w_diff).t()
    gathered = torch.stack([neighbour[b][idx[b]] for b in range(2)])  # [B, P, k, C]
    edge = gathered + centre.unsqueeze(2)
    bn = conv.bn
    normed = (edge - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    reference = torch.nn.functional.leaky_relu(normed, 0.2).amax(dim=2)
    torch.testing.assert_close(fast.detach(), reference.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("method", "logits"), [("kd", True), ("lsp", False), ("fitnet", False)])
def test_teacher_on_clouds_runs_the_head_only_for_kd(method: str, logits: bool) -> None:
    from study.distill import build_method
    from study.train import DistillConfig, teacher_on_clouds

    torch.manual_seed(0)
    teacher = DGCNN(3, [8, 8], 16, [8], num_classes=4, k=4).eval()
    points = _points()
    full = teacher(points)
    out = teacher_on_clouds(teacher, points, build_method(DistillConfig(method=method)))
    assert (out.logits is not None) == logits
    assert not any(h.requires_grad for h in out.hidden)
    for a, b in zip(out.hidden, full.hidden, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(out.edge_indices, full.edge_indices, strict=True):
        assert torch.equal(a, b)
