"""Serving latency of node-task models as a user sees it (DESIGN.md section 6).

A request names B target nodes of the stored graph. The server fetches the k-hop neighbourhood
the model needs (k its number of message-passing layers: every incoming edge of every node
within k - 1 hops of a target, none for an MLP), runs the forward on that subgraph and returns
B predictions. The whole request is timed, fetch included, with the study's warm-up and repeat
rules (:func:`study.latency.measure_latency`), at B = 1 and B = 256
(:data:`study.tracking.SERVE_BATCH_SIZES`). This is GLNN's point (Zhang et al. 2022): an MLP
student fetches nothing, so its latency does not grow with the neighbourhood.

The graph's index (a CSR of incoming edges) is built once, before timing, as a serving system
keeps its graph store indexed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from study.config import StudySpec
from study.data.base import NodeTask, Task
from study.inference import LayerwiseModel, subgraph_logits, supports_layerwise
from study.latency import LatencyResult, measure_latency
from study.sampling import ALL_NEIGHBOURS, NeighborSampler
from study.tracking import SERVE_BATCH_SIZES, serve_metric

#: Targets are drawn (without replacement, seeded) from the test split's nodes.
TARGET_SEED = 0


def fetch_hops(model: nn.Module) -> int | None:
    """Hops of neighbourhood ``model`` needs per prediction: its message-passing layers (0 for
    an MLP), or ``None`` when it does not say (a user's model, whose layers are not known)."""
    if not supports_layerwise(model):
        return None
    layered = cast(LayerwiseModel, model)
    return layered.num_layers if layered.reads_graph else 0


class ServingIndex:
    """A stored graph ready to answer requests for a model: its incoming-edge index and what the
    model's layers read of the whole graph (:meth:`~study.models.stack.ConvStack.chunk_state`:
    GCN's whole-graph degrees, as a graph store keeps them), built once before any request.

    Args:
        model: a layer-wise model (:func:`study.inference.supports_layerwise`).
        graph: the stored graph, ``x [N, F]`` and ``edge_index [2, E]``.
    """

    def __init__(self, model: nn.Module, graph: Data) -> None:
        hops = fetch_hops(model)
        if hops is None:
            raise ValueError(f"{type(model).__name__} does not expose its layers")
        self.model = cast(LayerwiseModel, model)
        self.x = graph.x
        self.sampler: NeighborSampler | None = None
        self.state: Tensor | None = None
        if hops > 0:
            self.sampler = NeighborSampler(
                graph.edge_index, graph.num_nodes, [ALL_NEIGHBOURS] * hops, use_pyg=False
            )
            self.state = self.model.chunk_state(self.sampler.csr.rowptr, self.sampler.csr.col)
        self._gen = torch.Generator()  # unused when every neighbour is kept; sample() wants one

    def request(self, targets: Tensor, device: str = "cpu") -> Callable[[], Tensor]:
        """One request: ``targets [B]`` -> ``[B, C]`` logits, the k-hop fetch included (none
        for a model that reads no graph)."""
        dev = torch.device(device)
        model = self.model
        no_edges = torch.empty((2, 0), dtype=torch.long, device=dev)

        def call() -> Tensor:
            if self.sampler is None:
                h = self.x[targets].to(dev)
                for index in range(model.num_layers):
                    h = model.layer(index, h, no_edges)
                return model.readout(h)
            sub = self.sampler.sample(targets, self._gen)
            return subgraph_logits(model, self.x[sub.n_id].to(dev), sub, self.state, dev)

        return call


def serving_latency(
    model: nn.Module,
    task: Task,
    *,
    repeats: int = 30,
    warmup: int = 5,
    threads: int | None = 1,
    device: str = "cpu",
    batch_sizes: tuple[int, ...] = SERVE_BATCH_SIZES,
) -> dict[int, LatencyResult]:
    """Serving latency of ``model`` per batch size B (``{}`` for point clouds or a model whose
    hops are unknown), on the first test graph."""
    hops = fetch_hops(model)
    if not isinstance(task, NodeTask) or hops is None:
        return {}
    graph = task.test[0]
    index = ServingIndex(model, graph)
    pool = graph.mask.nonzero().view(-1) if "mask" in graph else torch.arange(graph.num_nodes)
    order = pool[torch.randperm(pool.numel(), generator=torch.Generator().manual_seed(TARGET_SEED))]
    out = {}
    for batch in batch_sizes:
        targets = order[:batch]
        request = index.request(targets, device)
        out[batch] = measure_latency(
            model,
            request,
            repeats=repeats,
            warmup=warmup,
            threads=threads,
            device=device,
            samples_per_call=int(targets.numel()),
        )
    return out


def serving_metrics(results: dict[int, LatencyResult]) -> dict[str, float]:
    """``{serve_b1_ms_p50: ..., serve_b1_ms_p90: ..., serve_b256_ms_p50: ...}`` for MLflow."""
    metrics = {}
    for batch, lat in results.items():
        metrics[serve_metric(batch, "p50")] = lat.p50_ms
        metrics[serve_metric(batch, "p90")] = lat.p90_ms
    return metrics


def study_serving_metrics(
    model: nn.Module, task: Task, spec: StudySpec, device: str
) -> dict[str, float]:
    """:func:`serving_metrics` of ``model`` with the study's latency settings (``{}`` where
    serving latency does not apply: point clouds, a user's model)."""
    results = serving_latency(
        model,
        task,
        repeats=spec.latency.repeats,
        warmup=spec.latency.warmup,
        threads=spec.latency.threads,
        device=device,
    )
    return serving_metrics(results)
