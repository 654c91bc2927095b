"""Heterogeneous node classification as a *typed graph* inside the homogeneous machinery.

A ``torch_geometric.data.HeteroData`` (several node types, several relations ``(src type, edge
type, dst type)``) becomes one ``Data`` through PyG's ``HeteroData.to_homogeneous()``: node types
are stacked in ``data.node_types`` order, relations in ``data.edge_types`` order, and

- ``x [N, F_max]``: every type's features, zero-padded on the right to the widest type (a type
  without features gets zeros: a relation-aware model's per-type projection bias stands in);
- ``edge_index [2, E]`` in stacked node ids; ``node_type [N]`` and ``edge_type [E]`` long;
- ``node_type_names`` (list of str), ``edge_type_names`` (list of ``(src, rel, dst)``) and
  ``target_type`` (int): what models and losses read to know the types;
- ``y [N]`` the target type's labels (0 elsewhere: never read, see the masks), and the split
  masks set on target-type nodes only, so no other node is ever scored.

Every split holds the same graph object (transductive, like Cora), so teacher outputs are
cached once. Relation-aware models (:mod:`study.models.rgcn`) read ``edge_type`` and
``node_type``; homogeneous models see an ordinary ``(x, edge_index)`` graph with every relation
collapsed into one, which is what the type-aware study compares them against.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import Data, HeteroData

from study.data.base import NodeTask
from study.data.planetoid import transductive_task
from study.data.synthetic import _first_per_class
from study.errors import UserInputError

MASKS = ("train_mask", "val_mask", "test_mask")


def relation_names(graph: Data) -> list[str]:
    """How study files name the relations of a typed graph: ``src__rel__dst`` per edge type."""
    return ["__".join(triple) for triple in graph.edge_type_names]


def typed_graph(data: HeteroData, target: str, *, where: str = "HeteroData") -> Data:
    """``data`` as one typed ``Data`` (see the module docstring), the masks of ``target`` kept.

    Args:
        data: node types with ``x [N_t, F_t]`` (optional) and ``num_nodes``; ``target`` also with
            ``y [N_t]`` class ids and optional ``train_mask``/``val_mask``/``test_mask`` ``[N_t]``;
            every relation with ``edge_index [2, E_r]``.
        target: the node type that is classified.
        where: the source, to start error messages with.

    Returns:
        The typed ``Data``; masks, when ``target`` has them, as ``train_mask`` etc. ``[N]``.
    """
    if target not in data.node_types:
        raise UserInputError(
            f"{where}: unknown target node type {target!r} "
            f"(valid: {', '.join(sorted(data.node_types))})",
            key="dataset.target_node_type",
        )
    if not data.edge_types:
        raise UserInputError(f"{where}: has no relation (expected at least one edge_index)")
    y = data[target].get("y")
    if not isinstance(y, Tensor) or y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool:
        shape = tuple(y.shape) if isinstance(y, Tensor) else None
        raise UserInputError(
            f"{where}: node type {target!r} has no y of class ids (expected a 1-D integer "
            f"tensor [N_{target}], got {shape})",
            key="dataset.target_node_type",
        )
    widths = []
    for t in data.node_types:
        x = data[t].get("x")
        if x is not None and (
            not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point()
        ):
            raise UserInputError(f"{where}: {t}.x: expected a float tensor [N_{t}, F]")
        widths.append(0 if x is None else int(x.shape[1]))
    width = max(max(widths), 1)
    # A shallow copy holding only what is stacked: to_homogeneous merges every attribute of one
    # shape, and x of differing widths would not stack (hence the padding here, to F_max).
    flat = HeteroData()
    for t in data.node_types:
        n = data[t].num_nodes
        if n is None:
            raise UserInputError(f"{where}: node type {t!r} has neither x nor num_nodes")
        x = data[t].get("x")
        padded = torch.zeros(n, width)
        if x is not None:
            padded[:, : x.shape[1]] = x.float()
        flat[t].x = padded
    for rel in data.edge_types:
        edge_index = data[rel].get("edge_index")
        src, _, dst = rel
        if (
            not isinstance(edge_index, Tensor)
            or edge_index.dim() != 2
            or edge_index.shape[0] != 2
            or edge_index.dtype != torch.long
        ):
            raise UserInputError(f"{where}: {rel}.edge_index: expected a long tensor [2, E]")
        if edge_index.numel() and (
            int(edge_index.min()) < 0
            or int(edge_index[0].max()) >= flat[src].num_nodes
            or int(edge_index[1].max()) >= flat[dst].num_nodes
        ):
            raise UserInputError(f"{where}: {rel}.edge_index: node ids out of range")
        flat[rel].edge_index = edge_index
    out = flat.to_homogeneous(node_attrs=["x"], edge_attrs=[])
    tid = data.node_types.index(target)
    is_target = out.node_type == tid
    n_target = int(is_target.sum())
    if y.shape[0] != n_target or (n_target and int(y.min()) < 0):
        raise UserInputError(f"{where}: {target}.y: expected {n_target} class ids >= 0")
    full_y = torch.zeros(out.num_nodes, dtype=torch.long)
    full_y[is_target] = y  # to_homogeneous keeps each type's node order
    graph = Data(
        x=out.x,
        edge_index=out.edge_index,
        y=full_y,
        node_type=out.node_type,
        edge_type=out.edge_type,
    )
    graph.node_type_names = list(data.node_types)
    graph.edge_type_names = [tuple(rel) for rel in data.edge_types]
    graph.target_type = tid
    for key in MASKS:
        mask = data[target].get(key)
        if mask is None:
            continue
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != (n_target,):
            raise UserInputError(f"{where}: {target}.{key}: expected a bool tensor [{n_target}]")
        full = torch.zeros(out.num_nodes, dtype=torch.bool)
        full[is_target] = mask
        graph[key] = full
    return graph


def hetero_task(
    data: HeteroData,
    target: str,
    *,
    name: str = "hetero",
    where: str = "HeteroData",
    metric: str = "accuracy",
) -> NodeTask:
    """A single-label :class:`NodeTask` over the typed graph of ``data``; ``target`` must carry
    ``y`` and ``train_mask``, ``val_mask``, ``test_mask`` (disjoint, none empty)."""
    graph = typed_graph(data, target, where=where)
    masks = []
    for key in MASKS:
        if key not in graph:
            raise UserInputError(f"{where}: {target}.{key}: missing (expected a bool tensor)")
        if not bool(graph[key].any()):
            raise UserInputError(f"{where}: {target}.{key}: selects no node")
        masks.append(graph[key])
        del graph[key]
    for i, j in ((0, 1), (0, 2), (1, 2)):
        if bool((masks[i] & masks[j]).any()):
            raise UserInputError(f"{where}: {target}.{MASKS[i]} and {MASKS[j]} overlap")
    num_classes = int(graph.y[graph.node_type == graph.target_type].max()) + 1
    task = transductive_task(name, graph, masks[0], masks[1], masks[2], num_classes)
    task.metric = metric
    return task


def _pick(
    labels_wanted: Tensor, buckets: Tensor, offsets: Tensor, counts: Tensor, g: torch.Generator
) -> Tensor:
    """One uniformly drawn member of class ``labels_wanted[k]`` for every ``k`` (O(k))."""
    u = torch.rand(labels_wanted.numel(), generator=g)
    idx = offsets[labels_wanted] + (u * counts[labels_wanted]).long()
    return buckets[idx]


def synthetic_hetero(
    num_users: int = 600,
    num_merchants: int = 60,
    num_devices: int = 200,
    num_classes: int = 2,
    user_features: int = 16,
    merchant_features: int = 8,
    device_features: int = 4,
    friends: int = 5,
    disputes: int = 4,
    purchases: int = 3,
    homophily: float = 0.9,
    item_homophily: float = 0.3,
    feature_signal: float = 0.3,
    seed: int = 0,
    train_per_class: int = 20,
    val: int = 100,
    test: int = 200,
) -> NodeTask:
    """A user / merchant / device graph where the relation of an edge carries the signal.

    Users (the target type) have ``num_classes`` classes and weak class-dependent features
    ``mu_y + eps`` (scale ``feature_signal``). Relations, each with its reverse:

    - ``user -friend-> user``: ``friends`` per user, to a user of the SAME class with
      probability ``homophily`` (else any class): homophilous;
    - ``user -disputes-> user``: ``disputes`` per user, to a user of ANOTHER class with
      probability ``homophily``: anti-correlated with the label;
    - ``user -buys-> merchant``: ``purchases`` per user, to a merchant of the user's class with
      probability ``item_homophily`` (else any); merchants have class-dependent features;
    - ``user -uses-> device``: one device per user, of the user's class with probability
      ``item_homophily``; devices have noise features only.

    A model that averages every relation together sees friends and disputes as one neighbour
    set: with the defaults (2 classes, 5 friends at homophily 0.9, 4 disputes) a user's own class
    makes up half of that set in expectation, so the mix says nothing; a model with per-relation
    weights reads friends as "same" and disputes as "other".
    Memory and time are ``O(E)``: no dense matrix is drawn.

    Returns:
        A single-label typed :class:`NodeTask` named ``synthetic_hetero`` (see
        :func:`hetero_task`), target type ``user``.
    """
    if num_classes < 2 or num_users < num_classes * 2:
        raise UserInputError(
            f"synthetic_hetero needs num_classes >= 2 and num_users >= 2 * num_classes; got "
            f"num_users={num_users}, num_classes={num_classes}"
        )
    if min(num_merchants, num_devices) < num_classes:
        raise UserInputError(
            f"synthetic_hetero needs num_merchants and num_devices >= num_classes={num_classes}"
        )
    if not (0.0 <= homophily <= 1.0 and 0.0 <= item_homophily <= 1.0):
        raise UserInputError(
            f"synthetic_hetero: homophily={homophily} and item_homophily={item_homophily} "
            "must be in [0, 1]"
        )
    if train_per_class * num_classes + val + test > num_users or (
        train_per_class > num_users // num_classes
    ):
        raise UserInputError(
            f"synthetic_hetero: train_per_class={train_per_class} x {num_classes} classes + "
            f"val={val} + test={test} does not fit in num_users={num_users}"
        )
    g = torch.Generator().manual_seed(seed)
    c = num_classes
    y = (torch.arange(num_users) % c)[torch.randperm(num_users, generator=g)]
    order = torch.sort(y, stable=True).indices
    counts = torch.bincount(y, minlength=c)
    offsets = torch.cumsum(counts, 0) - counts

    def other_class(labels: Tensor, keep_same: Tensor) -> Tensor:
        # Same class where keep_same, else a uniformly drawn different class.
        shift = torch.randint(1, c, labels.shape, generator=g)
        return torch.where(keep_same, labels, (labels + shift) % c)

    def user_edges(per_user: int, same: bool) -> Tensor:
        src = torch.arange(num_users).repeat_interleave(per_user)
        agree = torch.rand(src.numel(), generator=g) < homophily
        wanted = other_class(y[src], agree if same else ~agree)
        dst = _pick(wanted, order, offsets, counts, g)
        keep = src != dst
        return torch.stack([src[keep], dst[keep]])

    def typed_items(num: int) -> Tensor:
        return torch.arange(num) % c  # item classes, balanced

    def item_edges(per_user: int, item_class: Tensor) -> Tensor:
        item_order = torch.sort(item_class, stable=True).indices
        item_counts = torch.bincount(item_class, minlength=c)
        item_offsets = torch.cumsum(item_counts, 0) - item_counts
        src = torch.arange(num_users).repeat_interleave(per_user)
        agree = torch.rand(src.numel(), generator=g) < item_homophily
        wanted = torch.where(agree, y[src], torch.randint(0, c, src.shape, generator=g))
        return torch.stack([src, _pick(wanted, item_order, item_offsets, item_counts, g)])

    user_means = feature_signal * torch.randn(c, user_features, generator=g)
    merchant_class = typed_items(num_merchants)
    merchant_means = torch.randn(c, merchant_features, generator=g)
    data = HeteroData()
    data["user"].x = user_means[y] + torch.randn(num_users, user_features, generator=g)
    data["user"].y = y
    data["merchant"].x = merchant_means[merchant_class] + 0.5 * torch.randn(
        num_merchants, merchant_features, generator=g
    )
    data["device"].x = torch.randn(num_devices, device_features, generator=g)
    relations = {
        ("user", "friend", "user"): user_edges(friends, same=True),
        ("user", "disputes", "user"): user_edges(disputes, same=False),
        ("user", "buys", "merchant"): item_edges(purchases, merchant_class),
        ("user", "uses", "device"): item_edges(1, typed_items(num_devices)),
    }
    for (src, rel, dst), edges in relations.items():
        data[src, rel, dst].edge_index = edges
        data[dst, f"rev_{rel}", src].edge_index = edges.flip(0)

    perm = torch.randperm(num_users, generator=g)
    train_nodes = perm[_first_per_class(y[perm], train_per_class)]
    masks = {k: torch.zeros(num_users, dtype=torch.bool) for k in MASKS}
    masks["train_mask"][train_nodes] = True
    rest = perm[~masks["train_mask"][perm]]
    masks["val_mask"][rest[:val]] = True
    masks["test_mask"][rest[val : val + test]] = True
    for key, mask in masks.items():
        data["user"][key] = mask
    return hetero_task(data, "user", name="synthetic_hetero", where="synthetic_hetero")
