"""A user's own graph as a :class:`~study.data.base.NodeTask`: from a file or from a function.

Two shapes are accepted, from ``dataset: {path: FILE}`` (a ``torch.save`` file, read with
``weights_only=True``: PyG's ``Data`` classes are allowed, nothing else is unpickled) or from
``dataset: {factory: "module:function", options: {...}}`` (what the function returns):

- one ``torch_geometric.data.Data``, a transductive graph: ``x [N, F]`` float, ``edge_index
  [2, E]`` long, ``y`` and boolean ``train_mask``, ``val_mask``, ``test_mask`` ``[N]``;
- ``{"train": [Data, ...], "val": [...], "test": [...]}``, an inductive task over several graphs
  (like PPI): every node of a graph is scored in its split; masks are not needed;
- one ``torch_geometric.data.HeteroData`` with ``dataset.target_node_type`` naming the node type
  that is classified (it carries ``y`` and the three masks): a typed graph
  (:mod:`study.data.hetero`).

A ``Data`` with ``node_time [N]`` and ``edge_time [E]`` (and no masks) is a temporal graph: it is
split chronologically by the study file's ``dataset.split`` (:mod:`study.data.temporal`), each
split a snapshot of the edges known at its cut.

The task kind follows from ``y``: 1-D integer class ids are single-label classification
(``C = max + 1`` classes), 2-D 0/1 floats are multi-label (``C`` columns). Every problem is one
line naming the source, the key and what was expected.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Data, HeteroData

from study.catalog import check_options, import_factory
from study.data.base import NodeTask, sorted_by_target
from study.data.planetoid import graph_view
from study.data.temporal import chronological_task, is_temporal
from study.errors import UserInputError, one_line, unsafe_load_reason
from study.metrics import DEFAULT_MULTILABEL, DEFAULT_SINGLE_LABEL

SPLITS = ("train", "val", "test")
MASKS = tuple(f"{s}_mask" for s in SPLITS)


def safe_globals() -> list[Any]:
    """What ``torch.load(..., weights_only=True)`` must allow to read a PyG ``Data`` or
    ``HeteroData`` (its global store pickles as a ``BaseStorage``): data containers only."""
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import BaseStorage, EdgeStorage, GlobalStorage, NodeStorage

    return [
        Data,
        HeteroData,
        DataEdgeAttr,
        DataTensorAttr,
        BaseStorage,
        GlobalStorage,
        NodeStorage,
        EdgeStorage,
    ]


def load_dataset_file(
    path: str | os.PathLike,
    metric: str | None = None,
    split: Mapping[str, Any] | None = None,
    target_node_type: str | None = None,
) -> NodeTask:
    """Read a graph file written by ``torch.save`` (see the module docstring)."""
    source = str(path)
    if not Path(path).is_file():
        raise UserInputError(f"{source}: no such dataset file", key="dataset.path")
    try:
        with torch.serialization.safe_globals(safe_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pickle protocol notes, read fine
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a foreign pickle, a truncated file, another format
        raise UserInputError(
            f"{source}: not a graph file torch.load(weights_only=True) can read "
            f"(expected a torch_geometric Data, a HeteroData or a dict of train/val/test lists; "
            f"{unsafe_load_reason(exc)})",
            key="dataset.path",
        ) from None
    return _keyed(
        "dataset.path",
        task_from_graphs,
        obj,
        source,
        Path(path).stem,
        metric,
        split,
        target_node_type,
    )


def load_dataset_factory(
    factory: str,
    options: Mapping[str, Any],
    base_dir: str | os.PathLike,
    metric: str | None,
    split: Mapping[str, Any] | None = None,
    target_node_type: str | None = None,
) -> NodeTask:
    """Call the user's ``module:function`` with ``options`` and check what it returns."""
    function = _keyed("dataset.factory", import_factory, factory, base_dir)
    check_options(function, options, "dataset.options")
    try:
        obj = function(**options)
    except Exception as exc:  # the user's code: say where it failed, in one line
        raise UserInputError(f"{factory} raised {one_line(exc)}", key="dataset.factory") from None
    source = f"what {factory} returned"
    name = factory.partition(":")[2]
    return _keyed(
        "dataset.factory", task_from_graphs, obj, source, name, metric, split, target_node_type
    )


def _keyed(key: str, function: Any, *args: Any) -> Any:
    """``function(*args)``, its :class:`UserInputError` tagged with the study-file ``key``."""
    try:
        return function(*args)
    except UserInputError as exc:
        raise UserInputError(str(exc), key=exc.key or key) from None


def task_from_graphs(
    obj: Any,
    source: str,
    name: str,
    metric: str | None,
    split: Mapping[str, Any] | None = None,
    target_node_type: str | None = None,
) -> NodeTask:
    """A :class:`NodeTask` from one ``Data`` with masks, one temporal ``Data`` (split by
    ``split``, ``dataset.split``), a dict of split lists, or a ``HeteroData`` with
    ``target_node_type`` (its node type that is classified)."""
    if isinstance(obj, HeteroData):
        if target_node_type is None:
            raise UserInputError(
                f"{source}: a HeteroData needs dataset.target_node_type, the node type to "
                f"classify (one of: {', '.join(sorted(obj.node_types))})",
                key="dataset.target_node_type",
            )
        if split is not None:
            raise UserInputError(
                f"{source}: dataset.split is for a temporal Data, not a HeteroData",
                key="dataset.split",
            )
        from study.data.hetero import hetero_task

        return hetero_task(
            obj,
            target_node_type,
            name=name,
            where=source,
            metric=_metric(metric, multilabel=False),
        )
    if target_node_type is not None:
        raise UserInputError(
            f"{source}: dataset.target_node_type is for a HeteroData, got {_describe(obj)}",
            key="dataset.target_node_type",
        )
    if isinstance(obj, Data) and is_temporal(obj):
        _check_graph(obj, source)
        node_time = obj.get("node_time")
        timed = isinstance(node_time, Tensor) and node_time.shape == (obj.num_nodes,)
        scored = ~torch.isnan(node_time.float()) if timed else None  # checked in full below
        _, num_classes = _labels(obj, source, scored)
        return chronological_task(
            obj, split, name=name, source=source, metric=metric, num_classes=num_classes
        )
    if split is not None:
        raise UserInputError(
            f"{source}: a chronological split needs one temporal Data (node_time [N], "
            f"edge_time [E]), got {_describe(obj)} without times",
            key="dataset.split",
        )
    if isinstance(obj, Data):
        return _transductive(obj, source, name, metric)
    if isinstance(obj, Mapping) and set(obj) == set(SPLITS):
        return _inductive(obj, source, name, metric)
    raise UserInputError(
        f"{source}: expected a torch_geometric Data with train/val/test masks or a dict "
        f"{{'train': [Data, ...], 'val': [...], 'test': [...]}}, got {_describe(obj)}"
    )


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        return f"a dict with keys {sorted(map(str, obj))}"
    return f"a {type(obj).__name__}"


def _labels(graph: Data, where: str, scored: Tensor | None = None) -> tuple[bool, int]:
    """(multilabel, number of classes) from ``y``, after checking it; ``scored [N]`` bool: the
    nodes that can be scored (a temporal graph's labelled ones), the only ones whose class ids
    are read (others may hold anything, e.g. -1)."""
    y = graph.get("y")
    if not isinstance(y, Tensor):
        raise UserInputError(f"{where}.y: missing (expected [N] class ids or [N, C] 0/1 labels)")
    n = graph.num_nodes
    if y.dim() == 1 and not y.is_floating_point() and y.dtype != torch.bool:
        ids = y if scored is None or y.shape[0] != n else y[scored]
        if y.shape[0] != n or (len(ids) and int(ids.min()) < 0):
            raise UserInputError(
                f"{where}.y: expected {n} class ids >= 0 (one per node"
                + ("" if scored is None else " with a node_time")
                + f"), got shape {tuple(y.shape)}"
                + (f", min {int(ids.min())}" if len(ids) else "")
            )
        return False, int(ids.max()) + 1 if len(ids) else 0
    if y.dim() == 2 and y.shape[0] == n:
        if not bool(((y == 0) | (y == 1)).all()):
            raise UserInputError(f"{where}.y: a 2-D y is multi-label and must hold only 0 and 1")
        return True, int(y.shape[1])
    raise UserInputError(
        f"{where}.y: expected a 1-D integer tensor of class ids or a 2-D 0/1 tensor [N, C], "
        f"got {y.dtype} of shape {tuple(y.shape)}"
    )


def _check_graph(graph: Any, where: str) -> Data:
    if not isinstance(graph, Data):
        raise UserInputError(f"{where}: expected a torch_geometric Data, got {_describe(graph)}")
    x, edge_index = graph.get("x"), graph.get("edge_index")
    if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else None
        raise UserInputError(f"{where}.x: expected a float tensor [N, F], got {shape}")
    if (
        not isinstance(edge_index, Tensor)
        or edge_index.dim() != 2
        or edge_index.shape[0] != 2
        or edge_index.dtype != torch.long
    ):
        shape = tuple(edge_index.shape) if isinstance(edge_index, Tensor) else None
        raise UserInputError(f"{where}.edge_index: expected a long tensor [2, E], got {shape}")
    n = x.shape[0]
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
        raise UserInputError(
            f"{where}.edge_index: node ids must lie in [0, {n}), got "
            f"[{int(edge_index.min())}, {int(edge_index.max())}]"
        )
    return graph


def _transductive(data: Data, source: str, name: str, metric: str | None) -> NodeTask:
    _check_graph(data, source)
    multilabel, num_classes = _labels(data, source)
    n = data.num_nodes
    masks = []
    for key in MASKS:
        mask = data.get(key)
        if not isinstance(mask, Tensor):
            raise UserInputError(f"{source}.{key}: missing (expected a bool tensor [{n}])")
        if mask.dtype != torch.bool or tuple(mask.shape) != (n,):
            raise UserInputError(
                f"{source}.{key}: expected a bool tensor [{n}] matching x, "
                f"got {mask.dtype} of shape {tuple(mask.shape)}"
            )
        if not bool(mask.any()):
            raise UserInputError(f"{source}.{key}: selects no node")
        masks.append(mask)
    for i, j in ((0, 1), (0, 2), (1, 2)):
        overlap = int((masks[i] & masks[j]).sum())
        if overlap:
            raise UserInputError(
                f"{source}: {MASKS[i]} and {MASKS[j]} overlap in {overlap} nodes "
                "(a node scored in two splits leaks model selection into the test)"
            )
    graph = sorted_by_target(Data(x=data.x, edge_index=data.edge_index, y=data.y))
    return NodeTask(
        name=name,
        num_features=int(data.x.shape[1]),
        num_classes=num_classes,
        multilabel=multilabel,
        train=[graph_view(graph, masks[0], 0)],
        val=[graph_view(graph, masks[1], 0)],
        test=[graph_view(graph, masks[2], 0)],
        metric=_metric(metric, multilabel),
    )


def _inductive(splits: Mapping[str, Any], source: str, name: str, metric: str | None) -> NodeTask:
    out: dict[str, list[Data]] = {}
    kinds: set[tuple[bool, int, int]] = set()
    classes = 0
    graph_id = 0
    for split in SPLITS:
        graphs = splits[split]
        if not isinstance(graphs, (list, tuple)) or not graphs:
            raise UserInputError(f"{source}.{split}: expected a non-empty list of Data")
        views = []
        for i, graph in enumerate(graphs):
            where = f"{source}.{split}[{i}]"
            _check_graph(graph, where)
            multilabel, num_classes = _labels(graph, where)
            width = int(graph.x.shape[1])
            kinds.add((multilabel, width, num_classes if multilabel else -1))
            classes = max(classes, num_classes)
            view = Data(x=graph.x, edge_index=graph.edge_index, y=graph.y)
            view.mask = torch.ones(graph.num_nodes, dtype=torch.bool)
            view.graph_id = graph_id
            graph_id += 1
            views.append(view)
        out[split] = views
    if len(kinds) != 1:
        raise UserInputError(
            f"{source}: every graph must have the same feature width and label shape, got "
            f"{sorted(kinds)} (multi-label, features, labels)"
        )
    ((multilabel, width, _),) = kinds
    return NodeTask(
        name=name,
        num_features=width,
        num_classes=classes,
        multilabel=multilabel,
        train=out["train"],
        val=out["val"],
        test=out["test"],
        metric=_metric(metric, multilabel),
    )


def _metric(metric: str | None, multilabel: bool) -> str:
    if metric is not None:
        return metric
    return DEFAULT_MULTILABEL if multilabel else DEFAULT_SINGLE_LABEL
