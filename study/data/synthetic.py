"""Synthetic tasks for smoke runs and tests: a stochastic-block-model graph and procedural shapes.

Both are deterministic for a seed (they draw only from a private ``torch.Generator``), need no
files, and build in milliseconds at their default sizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch_geometric.data import Data

from study.data.base import NodeTask, PointCloudSet, PointCloudTask
from study.data.modelnet40 import normalize_unit_sphere
from study.data.planetoid import transductive_task
from study.errors import UserInputError

SHAPE_NAMES = ("sphere", "cube", "cylinder", "cone", "torus")


def synthetic_sbm(
    num_nodes: int = 200,
    num_classes: int = 4,
    num_features: int = 16,
    p_in: float = 0.1,
    p_out: float = 0.01,
    feature_signal: float = 0.4,
    seed: int = 0,
    train_per_class: int = 20,
    val: int = 40,
    test: int = 80,
) -> NodeTask:
    """A stochastic-block-model node-classification graph with class-dependent Gaussian features.

    Node ``i`` has class ``y_i`` (classes balanced, assigned at random); an undirected edge joins
    ``i`` and ``j`` with probability ``p_in`` if ``y_i == y_j`` else ``p_out``. Features are
    ``x_i = mu_{y_i} + eps_i`` with ``mu_c ~ N(0, feature_signal^2 I)`` and ``eps_i ~ N(0, I)``:
    with the defaults, features alone separate the classes only partly, and neighbours (mostly of
    the same class) carry the rest, so a GNN has something to learn from the graph.

    The dense ``N x N`` edge draw costs ``O(N^2)`` memory: fine up to about 10,000 nodes.

    Args:
        num_nodes: ``N``.
        num_classes: ``C``.
        num_features: ``F``.
        p_in, p_out: within-class and between-class edge probabilities.
        feature_signal: the scale of the class means relative to unit noise.
        seed: the generator seed.
        train_per_class: labelled training nodes per class (Planetoid style).
        val, test: numbers of validation and test nodes, drawn from the rest.

    Returns:
        A single-label :class:`NodeTask` named ``synthetic_sbm`` (same layout as Cora: one graph,
        three views differing in ``mask``; ``edge_index [2, E]`` holds both directions).
    """
    if num_classes < 2 or num_nodes < num_classes or num_features < 1:
        raise UserInputError(
            "synthetic_sbm needs num_classes >= 2, num_nodes >= num_classes, num_features >= 1; "
            f"got num_nodes={num_nodes}, num_classes={num_classes}, num_features={num_features}"
        )
    if not (0.0 <= p_out <= 1.0 and 0.0 <= p_in <= 1.0):
        raise UserInputError(
            f"p_in and p_out must be probabilities, got p_in={p_in}, p_out={p_out}"
        )
    smallest_class = num_nodes // num_classes
    if train_per_class > smallest_class or train_per_class * num_classes + val + test > num_nodes:
        raise UserInputError(
            f"synthetic_sbm: train_per_class={train_per_class} x {num_classes} classes "
            f"+ val={val} + test={test} does not fit in num_nodes={num_nodes}"
        )
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(num_nodes) % num_classes)[torch.randperm(num_nodes, generator=g)]

    prob = torch.where(y[:, None] == y[None, :], p_in, p_out)
    upper = torch.rand(num_nodes, num_nodes, generator=g) < prob
    upper = torch.triu(upper, diagonal=1)
    edge_index = (upper | upper.t()).nonzero().t().contiguous()

    means = feature_signal * torch.randn(num_classes, num_features, generator=g)
    x = means[y] + torch.randn(num_nodes, num_features, generator=g)

    perm = torch.randperm(num_nodes, generator=g)
    train_nodes = perm[_first_per_class(y[perm], train_per_class)]
    train_mask = torch.zeros(num_nodes, dtype=torch.bool)
    train_mask[train_nodes] = True
    rest = perm[~train_mask[perm]]
    val_mask = torch.zeros(num_nodes, dtype=torch.bool)
    val_mask[rest[:val]] = True
    test_mask = torch.zeros(num_nodes, dtype=torch.bool)
    test_mask[rest[val : val + test]] = True

    data = Data(x=x, edge_index=edge_index, y=y)
    return transductive_task("synthetic_sbm", data, train_mask, val_mask, test_mask, num_classes)


def _first_per_class(labels: Tensor, k: int) -> Tensor:
    """Positions of the first ``k`` occurrences of each label in ``labels`` (``[N]`` long)."""
    order = torch.sort(labels, stable=True).indices
    sorted_labels = labels[order]
    first = torch.searchsorted(sorted_labels, sorted_labels, right=False)
    rank = torch.arange(labels.numel()) - first
    return order[rank < k]


def synthetic_shapes(
    num_per_class: int = 32,
    num_classes: int = 5,
    num_points: int = 256,
    seed: int = 0,
    val_per_class: int | None = None,
    test_per_class: int | None = None,
    noise: float = 0.02,
) -> PointCloudTask:
    """Procedural point clouds of simple surfaces: a ModelNet40 stand-in for smoke runs.

    Classes, in order: sphere, cube (surface), cylinder (side and caps), cone (side and base),
    torus. Points are spread uniformly by area (the torus only approximately). Each shape gets a
    random rotation about the vertical axis, a random anisotropic scale in ``[0.8, 1.2]`` and
    Gaussian jitter of std ``noise``, and is then normalised into the unit sphere like ModelNet40.

    Args:
        num_per_class: training shapes per class.
        num_classes: how many of the five classes to use (2 to 5).
        num_points: points per cloud ``P``.
        seed: the generator seed.
        val_per_class, test_per_class: shapes per class in validation and test
            (default ``max(1, num_per_class // 4)`` each).
        noise: the jitter's standard deviation.

    Returns:
        A :class:`PointCloudTask` named ``synthetic_shapes``: ``points [M, P, 3]`` float32,
        ``labels [M]`` long per split, shuffled.
    """
    if not 2 <= num_classes <= len(SHAPE_NAMES):
        raise UserInputError(f"num_classes must be in 2..{len(SHAPE_NAMES)}, got {num_classes}")
    if num_per_class < 1 or num_points < 1:
        raise UserInputError(
            f"num_per_class and num_points must be >= 1, got {num_per_class}, {num_points}"
        )
    n_val = max(1, num_per_class // 4) if val_per_class is None else val_per_class
    n_test = max(1, num_per_class // 4) if test_per_class is None else test_per_class
    per_class = num_per_class + n_val + n_test
    g = torch.Generator().manual_seed(seed)

    clouds, labels = [], []
    for label, sampler in enumerate(_SAMPLERS[:num_classes]):
        pts = sampler(per_class, num_points, g)
        clouds.append(_randomise(pts, noise, g))
        labels.append(torch.full((per_class,), label, dtype=torch.long))
    points = normalize_unit_sphere(torch.cat(clouds)).view(num_classes, per_class, num_points, 3)
    labels_t = torch.stack(labels)

    def split(lo: int, hi: int) -> PointCloudSet:
        pts = points[:, lo:hi].reshape(-1, num_points, 3)
        lab = labels_t[:, lo:hi].reshape(-1)
        perm = torch.randperm(lab.numel(), generator=g)
        return PointCloudSet(pts[perm].contiguous(), lab[perm].contiguous())

    return PointCloudTask(
        name="synthetic_shapes",
        num_classes=num_classes,
        num_points=num_points,
        train=split(0, num_per_class),
        val=split(num_per_class, num_per_class + n_val),
        test=split(num_per_class + n_val, per_class),
        class_names=list(SHAPE_NAMES[:num_classes]),
        metric="accuracy",
    )


def _randomise(points: Tensor, noise: float, g: torch.Generator) -> Tensor:
    """Rotate each ``[n, P, 3]`` cloud about z, scale it per axis, and jitter every point."""
    n = points.shape[0]
    angle = 2 * math.pi * torch.rand(n, generator=g)
    cos, sin = angle.cos(), angle.sin()
    rot = torch.zeros(n, 3, 3)
    rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = cos, -sin, sin, cos
    rot[:, 2, 2] = 1.0
    scale = 0.8 + 0.4 * torch.rand(n, 1, 3, generator=g)
    out = torch.bmm(points, rot.transpose(1, 2)) * scale
    return out + noise * torch.randn(out.shape, generator=g)


def _polar(radius: Tensor, theta: Tensor, z: Tensor) -> Tensor:
    return torch.stack([radius * theta.cos(), radius * theta.sin(), z], dim=-1)


def _sphere(n: int, p: int, g: torch.Generator) -> Tensor:
    v = torch.randn(n, p, 3, generator=g)
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _cube(n: int, p: int, g: torch.Generator) -> Tensor:
    coords = 2 * torch.rand(n, p, 3, generator=g) - 1
    face = torch.randint(0, 6, (n, p, 1), generator=g)
    # Pin one coordinate (the face's axis) to +-1: a uniform point on that face.
    return coords.scatter(2, face // 2, (face % 2).float() * 2 - 1)


def _cylinder(n: int, p: int, g: torch.Generator) -> Tensor:
    theta = 2 * math.pi * torch.rand(n, p, generator=g)
    u = torch.rand(n, p, generator=g)
    on_side = torch.rand(n, p, generator=g) < 2 / 3  # side area 4 pi, caps 2 pi (r = 1, h = 2)
    side = _polar(torch.ones_like(u), theta, 2 * u - 1)
    cap = _polar(u.sqrt(), theta, torch.where(torch.rand(n, p, generator=g) < 0.5, -1.0, 1.0))
    return torch.where(on_side[..., None], side, cap)


def _cone(n: int, p: int, g: torch.Generator) -> Tensor:
    theta = 2 * math.pi * torch.rand(n, p, generator=g)
    t = torch.rand(n, p, generator=g).sqrt()  # sqrt: area grows linearly away from the apex
    on_side = torch.rand(n, p, generator=g) < math.sqrt(5) / (math.sqrt(5) + 1)
    side = _polar(t, theta, 1 - 2 * t)
    base = _polar(t, theta, -torch.ones_like(t))
    return torch.where(on_side[..., None], side, base)


def _torus(n: int, p: int, g: torch.Generator) -> Tensor:
    theta = 2 * math.pi * torch.rand(n, p, generator=g)
    phi = 2 * math.pi * torch.rand(n, p, generator=g)
    ring = 1.0 + 0.4 * phi.cos()
    return _polar(ring, theta, 0.4 * phi.sin())


_SAMPLERS: tuple[Callable[[int, int, torch.Generator], Tensor], ...] = (
    _sphere,
    _cube,
    _cylinder,
    _cone,
    _torus,
)
