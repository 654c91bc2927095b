"""Synthetic generators, point-cloud augmentation and the dataset registry (no files needed)."""

from __future__ import annotations

import pytest
import torch

from study.data import DATASETS, augment_pointcloud, load_task
from study.data.synthetic import synthetic_sbm, synthetic_shapes
from study.errors import UserInputError


def test_sbm_well_formed() -> None:
    task = synthetic_sbm(seed=0)
    d = task.train[0]
    assert task.name == "synthetic_sbm" and task.metric == "accuracy" and not task.multilabel
    assert list(d.x.shape) == [200, 16] and task.num_classes == 4 and task.num_features == 16
    assert torch.bincount(d.y).tolist() == [50] * 4
    ei = d.edge_index
    assert not (ei[0] == ei[1]).any()
    edges = set(map(tuple, ei.t().tolist()))
    assert all((j, i) in edges for i, j in edges) and len(edges) == ei.shape[1]
    masks = [task.train[0].mask, task.val[0].mask, task.test[0].mask]
    assert [int(m.sum()) for m in masks] == [80, 40, 80]
    assert torch.bincount(d.y[masks[0]], minlength=4).tolist() == [20] * 4
    assert int(sum(m.long() for m in masks).max()) == 1
    assert task.val[0].x is d.x and task.test[0].graph_id == 0
    # p_in >> p_out: most edges join nodes of one class.
    assert (d.y[ei[0]] == d.y[ei[1]]).float().mean() > 0.5


def test_sbm_deterministic_per_seed() -> None:
    a, b, c = synthetic_sbm(seed=5), synthetic_sbm(seed=5), synthetic_sbm(seed=6)
    assert torch.equal(a.train[0].x, b.train[0].x)
    assert torch.equal(a.train[0].edge_index, b.train[0].edge_index)
    assert torch.equal(a.test[0].mask, b.test[0].mask)
    assert not torch.equal(a.train[0].x, c.train[0].x)


def test_sbm_rejects_impossible_split() -> None:
    with pytest.raises(UserInputError, match="num_nodes=50"):
        synthetic_sbm(num_nodes=50, train_per_class=20)


def test_shapes_well_formed_and_deterministic() -> None:
    task = synthetic_shapes(num_per_class=8, num_classes=5, num_points=64, seed=1)
    assert task.class_names == ["sphere", "cube", "cylinder", "cone", "torus"]
    assert task.train.points.shape == (40, 64, 3) and len(task.val) == 10 and len(task.test) == 10
    assert torch.bincount(task.train.labels).tolist() == [8] * 5
    radius = task.train.points.norm(dim=2).amax(dim=1)
    assert torch.allclose(radius, torch.ones_like(radius), atol=1e-5)
    again = synthetic_shapes(num_per_class=8, num_classes=5, num_points=64, seed=1)
    other = synthetic_shapes(num_per_class=8, num_classes=5, num_points=64, seed=2)
    assert torch.equal(task.train.points, again.train.points)
    assert torch.equal(task.test.labels, again.test.labels)
    assert not torch.equal(task.train.points, other.train.points)
    with pytest.raises(UserInputError, match="num_classes"):
        synthetic_shapes(num_classes=6)


def test_shapes_classes_differ_in_geometry() -> None:
    task = synthetic_shapes(num_per_class=4, num_classes=5, num_points=512, seed=0, noise=0.0)
    pts, lab = task.train.points, task.train.labels
    # Sphere points (before the anisotropic scale) all sit on one ellipsoid; the torus has a hole:
    # few of its points lie near the cloud's vertical axis, unlike the cone/cylinder caps.
    r_xy = pts[..., :2].norm(dim=2)
    near_axis = (r_xy < 0.2).float().mean(dim=1)
    assert near_axis[lab == 4].max() < 0.01
    assert near_axis[lab == 2].min() > 0.01


def _augment_reference_check(points: torch.Tensor, out: torch.Tensor) -> None:
    """Each output cloud is a shuffled per-axis affine map of its input, within DGCNN's ranges."""
    for b in range(points.shape[0]):
        src = points[b]
        dst = out[b][out[b][:, 0].argsort()]  # x is increasing in src and scales are positive
        scale = (dst[-1] - dst[0]) / (src[-1] - src[0])
        shift = dst[0] - src[0] * scale
        assert torch.allclose(src * scale + shift, dst, atol=1e-5)
        assert ((scale >= 2 / 3 - 1e-6) & (scale <= 1.5 + 1e-6)).all()
        assert ((shift >= -0.2 - 1e-6) & (shift <= 0.2 + 1e-6)).all()


def test_augment_shape_preserving_and_seeded() -> None:
    b, p = 4, 64
    base = torch.arange(p, dtype=torch.float32)[:, None] / p
    points = torch.cat([base, base**2, -base], dim=1).expand(b, p, 3).clone()
    before = points.clone()
    out1 = augment_pointcloud(points, torch.Generator().manual_seed(0))
    out2 = augment_pointcloud(points, torch.Generator().manual_seed(0))
    out3 = augment_pointcloud(points, torch.Generator().manual_seed(1))
    assert out1.shape == points.shape and out1.dtype == points.dtype
    assert torch.equal(points, before)
    assert torch.equal(out1, out2) and not torch.equal(out1, out3)
    _augment_reference_check(points, out1)
    # Shuffled, and differently per cloud.
    order = out1[..., 0].argsort(dim=1)
    assert not torch.equal(order[0], torch.arange(p)) and not torch.equal(order[0], order[1])
    with pytest.raises(ValueError):
        augment_pointcloud(points[0], torch.Generator())


def test_registry_names_and_options() -> None:
    assert set(DATASETS.names()) == {
        "cora",
        "citeseer",
        "pubmed",
        "ppi",
        "modelnet40",
        "synthetic_sbm",
        "synthetic_hetero",
        "synthetic_shapes",
        "synthetic_temporal",
    }
    with pytest.raises(UserInputError) as err:
        load_task("corra")
    assert (
        "'corra'" in str(err.value) and "cora" in str(err.value) and "modelnet40" in str(err.value)
    )
    with pytest.raises(UserInputError) as err:
        load_task("synthetic_sbm", num_nodez=10)
    assert "'num_nodez'" in str(err.value) and "num_nodes" in str(err.value)
    assert "num_points" in DATASETS.get("modelnet40").param_names()
    assert "root" not in DATASETS.get("ppi").param_names()
    task = load_task(
        "synthetic_shapes", num_per_class=2, num_classes=2, num_points=8, root="/ignored"
    )
    assert task.train.points.shape == (4, 8, 3)
