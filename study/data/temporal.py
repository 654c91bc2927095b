"""Temporal node classification: a chronological split whose three views are three snapshots.

A temporal graph is a PyG ``Data`` with ``x [N, F]``, ``edge_index [2, E]``, ``y [N]``,
``edge_time [E]`` (when each edge appeared) and ``node_time [N]`` (when each node's label is
known; ``NaN`` marks a node that is never scored). With cuts ``t1 < t2``:

- train scores the nodes with ``node_time <= t1`` on the snapshot of edges with
  ``edge_time <= t1``;
- val scores ``t1 < node_time <= t2`` on the edges with ``edge_time <= t2``;
- test scores ``node_time > t2`` on every edge.

"<=" throughout: what happened at time t is known at time t. Each view is its own ``Data`` (own
``edge_index``, own ``graph_id``), so everything that reads ``task.train`` (teacher training, the
teacher-output cache, every distillation term, the mini-batch sampler) sees no edge after t1 by
construction, and nothing computed on one view is reused for another. Time order is never
shuffled: the views are cuts of it.

:func:`synthetic_temporal` is a generator where leaking future edges measurably inflates
scores: a node's own-class ("revealing") edges arrive ``reveal_lag`` after its label time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import coalesce

from study.catalogs import TemporalSplit
from study.data.base import NodeTask, sorted_by_target
from study.errors import UserInputError
from study.metrics import DEFAULT_SINGLE_LABEL

#: Edges of :func:`synthetic_temporal` that would appear at or after this time are not in the
#: data: it is the end of the observation window (node times lie in [0, 1)).
HORIZON = 1.0


def is_temporal(data: Data) -> bool:
    """Whether ``data`` carries times (``node_time`` or ``edge_time``): then it is split by time."""
    return "node_time" in data or "edge_time" in data


def split_times(
    node_time: Tensor, train_until: float, val_until: float, by: str = "quantile"
) -> tuple[float, float]:
    """The cuts ``(t1, t2)`` in time units.

    ``by="time"``: the values themselves. ``by="quantile"``: t1 is the label time of the node at
    rank ``round(train_until * n)`` among the ``n`` labelled nodes in time order (so about that
    fraction trains; ties at t1 all train), t2 likewise.

    Args:
        node_time: ``[N]`` label times, ``NaN`` for unlabelled nodes.
    """
    if by == "time":
        return float(train_until), float(val_until)
    times = torch.sort(node_time[~torch.isnan(node_time)].double()).values
    if times.numel() == 0:
        raise UserInputError("node_time: no labelled node (every node_time is NaN)")

    def at(q: float) -> float:
        rank = min(max(round(q * times.numel()), 1), times.numel())
        return float(times[rank - 1])

    return at(train_until), at(val_until)


def snapshot(data: Data, until: float | None, mask: Tensor, graph_id: int) -> Data:
    """A view of ``data`` with the edges of ``edge_time <= until`` (all when ``None``) and
    ``mask [N]``; ``x`` and ``y`` are shared, ``edge_index`` and ``edge_time`` are copies."""
    keep = slice(None) if until is None else data.edge_time <= until
    return Data(
        x=data.x,
        edge_index=data.edge_index[:, keep],
        edge_time=data.edge_time[keep],
        y=data.y,
        mask=mask,
        graph_id=graph_id,
    )


def temporal_task(
    data: Data,
    t1: float,
    t2: float,
    *,
    name: str = "temporal",
    num_classes: int | None = None,
    metric: str | None = None,
    source: str = "temporal graph",
) -> NodeTask:
    """The chronological :class:`NodeTask` of a temporal graph with cuts ``t1 < t2`` (times).

    Args:
        data: ``x [N, F]``, ``edge_index [2, E]``, ``y [N]`` class ids, ``edge_time [E]``,
            ``node_time [N]`` (``NaN``: unlabelled).
        t1, t2: the train and validation cuts.
        name: the task name.
        num_classes: ``C`` (default ``max(y) + 1``).
        metric: the headline score (default accuracy).
        source: names the graph in error messages.

    Raises:
        UserInputError: ``t1 >= t2`` or a split without a node (one line, key ``dataset.split``).
    """
    if not t1 < t2:
        raise UserInputError(
            f"{source}: the cuts must satisfy t1 < t2, got t1={t1:g}, t2={t2:g}",
            key="dataset.split",
        )
    node_time = data.node_time
    labelled = ~torch.isnan(node_time)
    masks = {
        "train": labelled & (node_time <= t1),
        "val": labelled & (node_time > t1) & (node_time <= t2),
        "test": labelled & (node_time > t2),
    }
    for split, mask in masks.items():
        if not bool(mask.any()):
            window = {"train": f"<= {t1:g}", "val": f"in ({t1:g}, {t2:g}]", "test": f"> {t2:g}"}
            raise UserInputError(
                f"{source}: the {split} split is empty (no labelled node with node_time "
                f"{window[split]}); move dataset.split's cuts",
                key="dataset.split",
            )
    return NodeTask(
        name=name,
        num_features=int(data.x.shape[1]),
        num_classes=int(data.y.max()) + 1 if num_classes is None else num_classes,
        multilabel=False,
        train=[snapshot(data, t1, masks["train"], 0)],
        val=[snapshot(data, t2, masks["val"], 1)],
        test=[snapshot(data, None, masks["test"], 2)],
        metric=metric or DEFAULT_SINGLE_LABEL,
    )


def check_temporal_graph(data: Data, source: str) -> None:
    """Refuse a temporal graph whose times do not fit (one line naming the key and the shape).

    ``x``, ``edge_index`` and ``y`` are checked by the caller (:mod:`study.data.user`)."""
    n, e = int(data.x.shape[0]), int(data.edge_index.shape[1])
    for key, size in (("node_time", n), ("edge_time", e)):
        value = data.get(key)
        if not isinstance(value, Tensor):
            raise UserInputError(
                f"{source}.{key}: missing (a temporal graph needs node_time [N] and edge_time "
                f"[E]; expected [{size}] times)"
            )
        if value.dim() != 1 or value.shape[0] != size or value.dtype == torch.bool:
            raise UserInputError(
                f"{source}.{key}: expected [{size}] numeric times (one per "
                f"{'node' if key == 'node_time' else 'edge'}), got {value.dtype} of shape "
                f"{tuple(value.shape)}"
            )
    edge_time = data.edge_time
    if edge_time.is_floating_point() and bool(torch.isnan(edge_time).any()):
        raise UserInputError(f"{source}.edge_time: holds NaN")
    if data.y.dim() != 1:
        raise UserInputError(
            f"{source}.y: a temporal graph takes [N] class ids (single-label), got shape "
            f"{tuple(data.y.shape)}"
        )
    for mask in ("train_mask", "val_mask", "test_mask"):
        if mask in data:
            raise UserInputError(
                f"{source}.{mask}: a temporal graph is split by node_time (dataset.split), not "
                "by masks; drop the masks"
            )


def chronological_task(
    data: Data,
    split: Mapping[str, Any] | None,
    *,
    name: str,
    source: str,
    metric: str | None = None,
    num_classes: int | None = None,
) -> NodeTask:
    """:func:`temporal_task` with the cuts of a study file's ``dataset.split`` (the
    :class:`~study.catalogs.TemporalSplit` defaults when ``None``)."""
    check_temporal_graph(data, source)
    cuts = TemporalSplit(**dict(split or {}))
    node_time = data.node_time.double()
    data = Data(
        x=data.x,
        edge_index=data.edge_index,
        y=data.y,
        edge_time=data.edge_time.double(),
        node_time=node_time,
    )
    data = sorted_by_target(data)  # each snapshot keeps the order: its CSR is its edges
    t1, t2 = split_times(node_time, cuts.train_until, cuts.val_until, cuts.by)
    return temporal_task(
        data, t1, t2, name=name, num_classes=num_classes, metric=metric, source=source
    )


def synthetic_temporal(
    num_nodes: int = 800,
    num_classes: int = 4,
    num_features: int = 16,
    feature_signal: float = 0.5,
    arrival_edges: int = 3,
    homophily: float = 0.3,
    reveal_edges: int = 5,
    reveal_lag: float = 0.25,
    seed: int = 0,
) -> Data:
    """A temporal graph where the future reveals the label: leakage is measurable.

    Node ``i`` has class ``y_i`` (balanced, random), label time ``t_i ~ U[0, 1)`` and features
    ``mu_{y_i} + eps_i`` (``mu_c ~ N(0, feature_signal^2 I)``, ``eps_i ~ N(0, I)``). Two kinds of
    undirected edge:

    - arrival edges: at ``t_i``, node ``i`` links to ``arrival_edges`` earlier nodes, each of its
      own class with probability ``homophily`` and otherwise uniform over all earlier nodes
      (weakly informative past structure);
    - revealing edges: at ``t_i + reveal_lag``, node ``i`` links to ``reveal_edges`` nodes of its
      own class that exist by then. Those after :data:`HORIZON` are not in the data.

    With the default split (0.6 / 0.8 quantiles) and lag 0.25 > 0.8 - 0.6, no validation or
    test node's revealing edges are in the view it is scored on: a model that trains or
    validates on the full graph instead sees them (the leak) and reports inflated scores.
    Memory is ``O(N + E)``; the result is deterministic for ``seed``.

    Returns:
        ``Data`` with ``x [N, F]``, ``edge_index [2, E]`` (both directions, no duplicates, no
        self-loops), ``y [N]``, ``edge_time [E]`` (a pair's earliest time) and ``node_time [N]``.
    """
    if num_classes < 2 or num_nodes < num_classes or num_features < 1:
        raise UserInputError(
            "synthetic_temporal needs num_classes >= 2, num_nodes >= num_classes, "
            f"num_features >= 1; got num_nodes={num_nodes}, num_classes={num_classes}, "
            f"num_features={num_features}"
        )
    if not 0 < reveal_lag < HORIZON:
        raise UserInputError(f"synthetic_temporal: reveal_lag must lie in (0, 1), got {reveal_lag}")
    g = torch.Generator().manual_seed(seed)
    n = num_nodes
    y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    t = torch.rand(n, generator=g, dtype=torch.float64)
    means = feature_signal * torch.randn(num_classes, num_features, generator=g)
    x = means[y] + torch.randn(n, num_features, generator=g)

    # Nodes in time order, and grouped by class (each group in time order): a draw "among the
    # first k of a group" is then one index, O(1) per edge.
    by_time = torch.argsort(t)
    rank = torch.empty(n, dtype=torch.long)
    rank[by_time] = torch.arange(n)
    key = y.double() * 4 + t  # class-major, time-minor (t + lag < 4)
    by_class = torch.argsort(key)
    class_start = torch.searchsorted(key[by_class], torch.arange(num_classes).double() * 4)
    pos_in_class = torch.empty(n, dtype=torch.long)
    pos_in_class[by_class] = torch.arange(n) - class_start[y[by_class]]

    # Arrival edges: partners among the nodes that arrived before i.
    src = torch.arange(n).repeat_interleave(arrival_edges)
    u = torch.rand(src.numel(), generator=g, dtype=torch.float64)
    same = torch.rand(src.numel(), generator=g) < homophily
    any_earlier = by_time[(u * rank[src]).long().clamp(max=n - 1)]
    own_earlier = by_class[class_start[y[src]] + (u * pos_in_class[src]).long()]
    dst = torch.where(same, own_earlier, any_earlier)
    ok = torch.where(same, pos_in_class[src] > 0, rank[src] > 0)
    arrival = (src[ok], dst[ok], t[src[ok]])

    # Revealing edges: own-class partners among the nodes that exist at t_i + lag.
    src = torch.arange(n).repeat_interleave(reveal_edges)
    when = t[src] + reveal_lag
    available = torch.searchsorted(key[by_class], y[src].double() * 4 + when) - class_start[y[src]]
    u = torch.rand(src.numel(), generator=g, dtype=torch.float64)
    dst = by_class[class_start[y[src]] + (u * available).long()]
    ok = when < HORIZON
    reveal = (src[ok], dst[ok], when[ok])

    s = torch.cat([arrival[0], reveal[0]])
    d = torch.cat([arrival[1], reveal[1]])
    times = torch.cat([arrival[2], reveal[2]])
    keep = s != d
    s, d, times = s[keep], d[keep], times[keep]
    edge_index = torch.stack([torch.cat([s, d]), torch.cat([d, s])])
    edge_index, edge_time = coalesce(edge_index, torch.cat([times, times]), n, reduce="min")
    return Data(x=x, edge_index=edge_index, y=y, edge_time=edge_time, node_time=t)
