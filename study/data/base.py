"""The shapes of a loaded dataset: node-classification graphs or point-cloud sets."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import Literal, TypedDict

import torch
from torch import Tensor
from torch_geometric.data import Data

from study.sampling import target_order

#: A headline score name (see :mod:`study.metrics`): accuracy, macro_f1, micro_f1 or auroc.
Metric = str


@dataclass
class NodeTask:
    """Node classification over one or more graphs.

    Each split is a list of graphs; every graph is a PyG ``Data`` with ``x [N, F]``,
    ``edge_index [2, E]`` (source row 0, target row 1), ``y`` (``[N]`` long, or ``[N, C]`` float
    0/1 when ``multilabel``) and ``mask [N]`` bool: the nodes this split scores. A transductive
    dataset (Cora) puts the same graph object in every split with a different mask, so teacher
    outputs can be cached per graph object.
    """

    name: str
    num_features: int
    num_classes: int
    multilabel: bool
    train: list[Data]
    val: list[Data]
    test: list[Data]
    metric: Metric = "accuracy"
    kind: Literal["node"] = field(default="node", init=False)


@dataclass
class PointCloudSet:
    """``points [M, P, 3]`` float32 clouds (P points each) and ``labels [M]`` long."""

    points: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class PointCloudTask:
    """Shape classification of point clouds (ModelNet40-like).

    The headline metric is overall accuracy; mean class accuracy is reported beside it.
    Training-time augmentation is applied by the training loop (see ``study.data.augment``).
    """

    name: str
    num_classes: int
    num_points: int
    train: PointCloudSet
    val: PointCloudSet
    test: PointCloudSet
    class_names: list[str] = field(default_factory=list)
    metric: Metric = "accuracy"
    kind: Literal["pointcloud"] = field(default="pointcloud", init=False)


Task = NodeTask | PointCloudTask


class IOChannels(TypedDict, total=False):
    """The input and output widths a model is built with; ``types`` only for a typed graph
    (:mod:`study.data.hetero`): ``{"num_node_types", "num_relations"}``, which relation-aware
    architectures are sized by and every other one ignores."""

    in_channels: int
    out_channels: int
    types: dict[str, int]


def is_typed(graph: Data) -> bool:
    """Whether ``graph`` is a typed (heterogeneous) graph of :mod:`study.data.hetero`: it
    carries ``node_type [N]`` and ``edge_type [E]``."""
    return "edge_type" in graph and "node_type" in graph


def io_channels(task: Task) -> IOChannels:
    """``{"in_channels", "out_channels"}`` a model needs for ``task`` (3 coordinates per point),
    and ``types`` for a typed (heterogeneous) graph."""
    if isinstance(task, PointCloudTask):
        return {"in_channels": 3, "out_channels": task.num_classes}
    graph = task.train[0]
    if is_typed(graph):
        types = {
            "num_node_types": len(graph.node_type_names),
            "num_relations": len(graph.edge_type_names),
        }
        return {"in_channels": task.num_features, "out_channels": task.num_classes, "types": types}
    return {"in_channels": task.num_features, "out_channels": task.num_classes}


def data_fingerprint(task: Task) -> str:
    """A short hash of the data itself (features, edges, labels, masks, split sizes).

    Two copies of the same dataset agree; a changed file, split or preprocessing does not, so a
    teacher cached by spec is never reused on other data.
    """
    digest = hashlib.sha256(f"{task.kind}:{task.name}:{task.num_classes}".encode())
    for split in ("train", "val", "test"):
        part = getattr(task, split)
        if isinstance(part, PointCloudSet):
            tensors = [part.points, part.labels]
        else:
            tensors = [t for g in part for t in (g.x, g.edge_index, g.y, g.mask)]
            # Typed graphs: the same edges under other relations are other data.
            tensors += [t for g in part if "edge_type" in g for t in (g.node_type, g.edge_type)]
        for tensor in tensors:
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def sorted_by_target(data: Data) -> Data:
    """``data`` with its edges grouped by target (each target's in their input order) and
    every per-edge attribute (``edge_type``, ``edge_time``, ...) permuted with them: a shallow
    copy, or ``data`` itself where they already are.

    The loaders store single graphs this way so that the CSR the sampler and layer-wise
    inference read is ``edge_index`` itself (:meth:`study.sampling.CSR.from_edge_index`), not
    an ``8 E``-byte copy per process. A GNN's outputs do not depend on the edges' order.
    Per-edge attributes are those PyG's ``Data.is_edge_attr`` names: where ``N == E`` only
    names containing ``edge`` count. Beyond the result, the sort holds an int32 permutation
    (``4 E`` bytes) and one slice's temporaries.
    """
    perm = target_order(data.edge_index, data.num_nodes)
    if perm is None:
        return data
    out = copy.copy(data)
    for key, value in data.items():
        if isinstance(value, Tensor) and data.is_edge_attr(key):
            dim = data.__cat_dim__(key, value)
            out[key] = torch.index_select(value, dim, perm)
    return out
