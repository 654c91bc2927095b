"""An exported student as an MLflow ``python_function`` model: load it, predict, serve it.

:func:`add_pyfunc` writes MLflow's files (``MLmodel``, the environment files, the input example)
into an export folder of :mod:`study.export`, beside its weights, config and TorchScript. The
folder is then one thing: the export, and an MLflow model that ``mlflow.pyfunc.load_model`` loads
and ``mlflow models serve`` serves. ``MLmodel`` names this module as the loader
(``loader_module: study.pyfunc_model``): MLflow imports it and calls :func:`_load_pyfunc` with the
folder, which rebuilds the eager model with :func:`study.export.load` (weights read with
``torch.load(..., weights_only=True)``). Nothing is pickled and no code is copied into the model;
the environment that loads it must have this package installed (``--env-manager local``, or the
``requirements.txt`` the folder lists).

The request (JSON-serialisable; MLflow's named-tensor ``inputs`` form)::

    node models:   {"inputs": {"x": [[f_1, ..., f_F], ...],          # N node feature rows
                               "edge_index": [[src, ...], [dst, ...]],  # 2 x E, messages src -> dst
                               "nodes": [i, ...]}}                     # B target node ids (< N)
    point clouds:  {"inputs": {"points": [[[x, y, z], ...], ...]}}      # B clouds x P points

A relation-aware model of a typed graph (:mod:`study.models.rgcn`) also takes ``"edge_type"``
(``[E]``, the relation of each edge) and ``"node_type"`` (``[N]``), ids as in its training data.

The client sends the graph the model needs: the target nodes' k-hop neighbourhood (k = the
model's layers; an MLP reads ``x`` only but takes an ``edge_index``, which may be empty). The
response is ``{"predictions": [[p_1, ..., p_C], ...]}``, one row per target node (per cloud):
class probabilities (softmax), or per-label probabilities (sigmoid) for multi-label tasks.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from study.errors import UserInputError
from study.models.base import reads_types

#: What ``MLmodel`` names as the loader; MLflow imports it and calls :func:`_load_pyfunc`.
LOADER_MODULE = "study.pyfunc_model"
#: The files MLflow's ``save_model`` writes, all moved into the export folder.
MLMODEL_FILE = "MLmodel"
SERVING_EXAMPLE_FILE = "serving_input_example.json"
#: ``model_config`` keys: how logits become probabilities, and the model's input kind.
PROBABILITIES = "probabilities"  # "softmax" (single-label) or "sigmoid" (multi-label)
KIND = "kind"  # "node" or "pointcloud"
#: Cap on the nodes of a node model's input example (Cora has 1,433 features per node).
EXAMPLE_MAX_NODES = 64
EXAMPLE_MAX_TARGETS = 4


# --------------------------------------------------------------------------------------------
# The request
# --------------------------------------------------------------------------------------------
def node_request(
    x: Tensor,
    edge_index: Tensor,
    nodes: Tensor,
    edge_type: Tensor | None = None,
    node_type: Tensor | None = None,
) -> dict[str, np.ndarray]:
    """A node model's request as named arrays (``x`` float32, ``edge_index`` and ``nodes``
    int64; a typed graph's ``edge_type`` and ``node_type`` int64), as ``predict`` takes it."""
    request = {
        "x": x.detach().cpu().to(torch.float32).numpy(),
        "edge_index": edge_index.detach().cpu().to(torch.int64).numpy(),
        "nodes": nodes.detach().cpu().to(torch.int64).numpy(),
    }
    for key, types in (("edge_type", edge_type), ("node_type", node_type)):
        if types is not None:
            request[key] = types.detach().cpu().to(torch.int64).numpy()
    return request


def node_example(
    x: Tensor,
    edge_index: Tensor,
    candidates: Tensor,
    hops: int,
    *,
    max_nodes: int = EXAMPLE_MAX_NODES,
    max_targets: int = EXAMPLE_MAX_TARGETS,
    edge_type: Tensor | None = None,
    node_type: Tensor | None = None,
) -> dict[str, np.ndarray]:
    """A small request cut from a graph: a few ``candidates`` (e.g. test nodes) as targets with
    their ``hops``-hop neighbourhood, relabelled, at most ``max_nodes`` nodes when possible.

    Candidates of small neighbourhoods come first; targets are added while the neighbourhood
    fits, and when not even one fits, the one of the smallest estimate is the only target.
    """
    from torch_geometric.utils import k_hop_subgraph

    num_nodes = x.size(0)
    src, dst = edge_index
    # An upper bound of each node's neighbourhood size (itself, its in-neighbours, theirs), so
    # that few candidates need the exact (slower) k_hop_subgraph: the smallest first.
    deg = torch.bincount(dst, minlength=num_nodes)
    estimate = torch.ones(num_nodes, dtype=torch.long)
    if hops >= 1:
        estimate += deg
    if hops >= 2:
        estimate += torch.zeros(num_nodes, dtype=torch.long).index_add_(0, dst, deg[src])
    order = candidates[torch.argsort(estimate[candidates], stable=True)][:20].tolist()
    chosen: list[int] = []
    for node in order:
        size = k_hop_subgraph(chosen + [node], hops, edge_index, num_nodes=num_nodes)[0].numel()
        if size <= max_nodes:
            chosen.append(node)
            if len(chosen) == max_targets:
                break
    if not chosen:
        if not order:
            raise UserInputError("no candidate target node for the input example")
        chosen = order[:1]
    sub, sub_edges, mapping, kept = k_hop_subgraph(
        chosen, hops, edge_index, relabel_nodes=True, num_nodes=num_nodes
    )
    return node_request(
        x[sub],
        sub_edges,
        mapping,
        None if edge_type is None else edge_type[kept],
        None if node_type is None else node_type[sub],
    )


def point_example(points: Tensor, count: int = 1) -> dict[str, np.ndarray]:
    """A point-cloud request: the first ``count`` clouds ``[B, P, 3]`` as float32."""
    return {"points": points[:count].detach().cpu().to(torch.float32).numpy()}


def signature(example: Mapping[str, np.ndarray], num_outputs: int) -> Any:
    """The model signature: the request's named tensors (any number of nodes, edges, targets,
    clouds or points; fixed feature width) and ``[B, C]`` float32 probabilities."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    inputs: list[Any]
    if "points" in example:
        inputs = [TensorSpec(np.dtype("float32"), (-1, -1, example["points"].shape[2]), "points")]
    else:
        inputs = [
            TensorSpec(np.dtype("float32"), (-1, example["x"].shape[1]), "x"),
            TensorSpec(np.dtype("int64"), (2, -1), "edge_index"),
            TensorSpec(np.dtype("int64"), (-1,), "nodes"),
        ]
        inputs += [
            TensorSpec(np.dtype("int64"), (-1,), key)
            for key in ("edge_type", "node_type")
            if key in example
        ]
    outputs: list[Any] = [TensorSpec(np.dtype("float32"), (-1, num_outputs), PROBABILITIES)]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


# --------------------------------------------------------------------------------------------
# Predicting
# --------------------------------------------------------------------------------------------
def _bad_request(message: str) -> Exception:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _array(request: Mapping[str, Any], key: str, dtype: Any, ndim: int) -> np.ndarray:
    if key not in request:
        raise _bad_request(f"request: missing {key!r} (expected keys: {', '.join(request)})")
    try:
        value = np.asarray(request[key], dtype=dtype)
    except (TypeError, ValueError) as err:
        raise _bad_request(f"request: {key!r} is not a numeric array ({err})") from None
    if value.ndim != ndim and not (key == "edge_index" and value.size == 0):
        raise _bad_request(f"request: {key!r} has {value.ndim} dimensions (expected {ndim})")
    return value


def predict_probabilities(
    model: nn.Module, request: Mapping[str, Any], probabilities: str = "softmax"
) -> np.ndarray:
    """``[B, C]`` float32 probabilities of the eager ``model`` for a request (module docstring).

    Raises:
        MlflowException: a malformed request (``INVALID_PARAMETER_VALUE``: HTTP 400 when served).
    """
    with torch.inference_mode():
        if "points" in request:
            points = _array(request, "points", np.float32, 3)
            logits = model(torch.from_numpy(points)).logits
        else:
            x = _array(request, "x", np.float32, 2)
            edges = _array(request, "edge_index", np.int64, 2).reshape(2, -1)
            nodes = _array(request, "nodes", np.int64, 1)
            n = x.shape[0]
            for key, ids in (("edge_index", edges), ("nodes", nodes)):
                if ids.size and (ids.min() < 0 or ids.max() >= n):
                    raise _bad_request(f"request: {key!r} holds ids outside 0..{n - 1} (N = {n})")
            args = [torch.from_numpy(x), torch.from_numpy(edges)]
            if reads_types(model):  # a typed graph's relations and node types
                edge_type = _array(request, "edge_type", np.int64, 1)
                node_type = _array(request, "node_type", np.int64, 1)
                if edge_type.shape[0] != edges.shape[1] or node_type.shape[0] != n:
                    raise _bad_request(
                        f"request: 'edge_type' needs {edges.shape[1]} entries (one per edge) "
                        f"and 'node_type' {n} (one per node)"
                    )
                spec = getattr(model, "spec", {})
                for key, ids, count in (
                    ("edge_type", edge_type, spec.get("num_relations")),
                    ("node_type", node_type, spec.get("num_node_types")),
                ):  # a negative id would index from the end and mix relations silently
                    if count is not None and ids.size and (ids.min() < 0 or ids.max() >= count):
                        raise _bad_request(
                            f"request: {key!r} holds ids outside 0..{count - 1} (the model "
                            f"has {count})"
                        )
                args += [torch.from_numpy(edge_type), torch.from_numpy(node_type)]
            logits = model(*args).logits
            logits = logits[torch.from_numpy(nodes)]
        probs = torch.sigmoid(logits) if probabilities == "sigmoid" else logits.softmax(dim=-1)
    return probs.to(torch.float32).numpy()


class StudentModel:
    """The pyfunc of an export folder: :meth:`predict` maps a request to probabilities."""

    def __init__(self, model: nn.Module, probabilities: str = "softmax") -> None:
        self.model = model.eval()
        self.probabilities = probabilities

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        """``[B, C]`` probabilities; ``model_input`` is the request's named arrays."""
        if not isinstance(model_input, Mapping):
            raise _bad_request(
                f"request: got {type(model_input).__name__}; expected the named tensors "
                "x, edge_index, nodes (node models) or points (point clouds)"
            )
        return predict_probabilities(self.model, model_input, self.probabilities)


def _load_pyfunc(path: str, model_config: dict[str, Any] | None = None) -> StudentModel:
    """MLflow's entry point (``loader_module``): the export folder at ``path`` as a pyfunc."""
    from study.export import load

    config = model_config or {}
    return StudentModel(load(path), str(config.get(PROBABILITIES, "softmax")))


# --------------------------------------------------------------------------------------------
# Writing the MLflow model
# --------------------------------------------------------------------------------------------
def requirements() -> list[str]:
    """What a fresh serving environment installs: this package and the versions that ran here
    (given explicitly, so MLflow does not load the model to infer them)."""
    from importlib import metadata

    reqs = []
    for dist in ("graph-distill-study", "torch", "torch-geometric", "mlflow", "numpy"):
        try:
            reqs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            reqs.append(dist)
    return reqs


def add_pyfunc(
    folder: str | os.PathLike,
    example: Mapping[str, np.ndarray],
    *,
    num_outputs: int,
    multilabel: bool = False,
) -> Path:
    """Make the export ``folder`` an MLflow pyfunc model: write ``MLmodel`` (loader
    :data:`LOADER_MODULE`, signature, ``model_config``), the environment files and the input
    example (also as ``serving_input_example.json``, the body ``POST /invocations`` takes).

    Args:
        folder: a folder written by :func:`study.export.export_student`.
        example: a request (:func:`node_example` or :func:`point_example`).
        num_outputs: classes (or labels) the model predicts.
        multilabel: sigmoid per label instead of a softmax over classes.

    Returns:
        ``folder``.
    """
    import mlflow.pyfunc

    out = Path(folder)
    kind = "pointcloud" if "points" in example else "node"
    config = {PROBABILITIES: "sigmoid" if multilabel else "softmax", KIND: kind}
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.mlflow-") as tmp:
        staged = Path(tmp) / "model"
        mlflow.pyfunc.save_model(
            str(staged),
            loader_module=LOADER_MODULE,
            signature=signature(example, num_outputs),
            input_example=dict(example),
            pip_requirements=requirements(),
            model_config=config,
        )
        clash = sorted(p.name for p in staged.iterdir() if (out / p.name).exists())
        if clash:
            raise UserInputError(f"{out}: already holds {', '.join(clash)}; not overwriting")
        for item in staged.iterdir():
            shutil.move(str(item), str(out / item.name))
    return out


def task_example(task: Any, model: nn.Module) -> dict[str, np.ndarray]:
    """The input example of a model trained on ``task``: a few test nodes and their k-hop
    neighbourhood (k = the model's message-passing layers; 0 for an MLP), or one test cloud."""
    from torch_geometric.nn import MessagePassing

    from study.data.base import PointCloudTask

    if isinstance(task, PointCloudTask):
        return point_example(task.test.points)
    graph = task.test[0]
    hops = sum(isinstance(m, MessagePassing) for m in model.modules())
    hops = getattr(model, "num_layers", hops) if reads_types(model) else hops
    candidates = graph.mask.nonzero().flatten()
    if candidates.numel() == 0:
        candidates = torch.arange(graph.x.size(0))
    if reads_types(model) and "edge_type" in graph:
        return node_example(
            graph.x,
            graph.edge_index,
            candidates,
            hops,
            edge_type=graph.edge_type,
            node_type=graph.node_type,
        )
    return node_example(graph.x, graph.edge_index, candidates, hops)


def add_task_pyfunc(folder: str | os.PathLike, task: Any, model: nn.Module) -> Path:
    """:func:`add_pyfunc` for ``model`` (built by ``build_model``, so it has ``.spec``) with the
    example, outputs and probabilities of ``task``."""
    return add_pyfunc(
        folder,
        task_example(task, model),
        num_outputs=task.num_classes,
        multilabel=bool(getattr(task, "multilabel", False)),
    )
