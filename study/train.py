"""Plain training loops: ``train_teacher``, ``distill_student``, ``evaluate``. No Ray, no MLflow.

Both loops share :func:`fit`: seeded, device-agnostic, the best-validation model kept, the test
score reported at that model. What a distillation method adds (its term, weight, precomputed
teacher tensors, adapters) comes from its :class:`~study.distill.methods.DistillMethod`. A
teacher's outputs on a fixed graph are computed once under ``no_grad`` and cached (as PyG's
``examples/glnn.py`` does); on augmented point clouds the input changes every batch, so there the
frozen teacher runs per batch, still without gradients.

Node tasks train full batch unless ``TrainConfig.num_neighbors`` is set: then every step takes
``batch_size`` seed nodes and their sampled neighbourhood (:mod:`study.sampling`), the teacher's
outputs on the whole training graph come from one layer-wise inference (or are given, computed
once per study) and are only read by the steps, and evaluation runs layer-wise in chunks
(:mod:`study.inference`), so no step or evaluation holds the whole graph's autograd graph.
"""

from __future__ import annotations

import copy
import functools
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch, Data
from tqdm.auto import tqdm

from study import allocator
from study.data.augment import augment_pointcloud
from study.data.base import NodeTask, PointCloudSet, PointCloudTask, Task
from study.distill.methods import DistillMethod, build_method
from study.distill.typed import graph_types
from study.inference import (
    INFERENCE_CHUNK_NODES,
    Allocate,
    layerwise_forward,
    target_logits,
)
from study.mapped import MappedOutput
from study.metrics import multiclass_auroc, node_scores
from study.models.base import ModelOutput, model_inputs
from study.sampling import CSR, NeighborSampler, SampledSubgraph
from study.train_config import DistillConfig, TrainConfig


@dataclass
class TrainResult:
    """What a training run produced. Scores are fractions in [0, 1]."""

    model: nn.Module
    val_score: float
    test_score: float
    test_metrics: dict[str, float]
    best_epoch: int
    epochs_run: int
    train_seconds: float
    history: list[dict[str, float]]


#: A training loss above this many times the first epoch's loss (or above this many, when that
#: first loss is below 1) means the run diverged: optimisation lowers a loss, and no sane
#: schedule raises it by six orders of magnitude (lr 1e6 took a GAT from 1.4 to 1.7e13 in one
#: epoch; lambda 1000 with lr 0.1 starts at 31 and falls).
DIVERGENCE_GROWTH = 1e6
#: A training loss above this, from any epoch (the first included), means the run diverged. The
#: losses here are means (cross-entropy is about ln(classes); a weighted distillation term tens
#: or hundreds), and float32 training stops working long before 1e12: Adam squares gradients of
#: that order and overflows (lambda 1e30 gave a constant 3e28 loss with frozen weights), and the
#: hard loss is far below float32's resolution of such a sum.
DIVERGENCE_CAP = 1e12


class TrainingDiverged(RuntimeError):
    """Training stopped because the loss of ``epoch`` is not finite or past the bound (see
    :data:`DIVERGENCE_GROWTH` and :data:`DIVERGENCE_CAP`); ``str()`` is a one-line reason."""

    def __init__(self, epoch: int, loss: float, bound: float) -> None:
        self.epoch, self.loss, self.bound = epoch, loss, bound
        why = "is not finite" if not math.isfinite(loss) else f"exceeds the bound {bound:.3g}"
        super().__init__(f"training diverged at epoch {epoch}: train_loss {loss:.3g} {why}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable with its fields (Ray ships errors)
        return (type(self), (self.epoch, self.loss, self.bound))


def divergence_bound(first_loss: float) -> float:
    """The largest training loss a run whose first epoch's loss was ``first_loss`` may reach."""
    return min(DIVERGENCE_CAP, DIVERGENCE_GROWTH * max(first_loss, 1.0))


def check_divergence(epoch: int, loss: float, first_loss: float | None) -> None:
    """Raise :class:`TrainingDiverged` when ``loss`` (epoch ``epoch``'s mean training loss) is not
    finite or above :func:`divergence_bound` of the first epoch's (``None``: this is the first)."""
    bound = divergence_bound(loss if first_loss is None else first_loss)
    if not math.isfinite(loss) or loss > bound:
        raise TrainingDiverged(epoch, loss, bound)


EpochCallback = Callable[[int, dict[str, float], Callable[[], dict[str, Any]]], None]
"""Called after every epoch with (epoch, record, snapshot); ``snapshot()`` returns a state dict
that ``fit(..., resume=state)`` continues from (used for Ray Tune checkpoints)."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam or SGD (with momentum) as the config says."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler | None:
    # DGCNN trains SGD with cosine annealing to lr/100 (its official schedule); Adam runs flat.
    if cfg.optimizer == "sgd":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, cfg.epochs, eta_min=cfg.lr / 100
        )
    return None


# ---------------------------------------------------------------- forward passes and batches


def forward(model: nn.Module, batch: Data | Tensor) -> ModelOutput:
    """Run a model on a node-task graph (``Data``) or a point-cloud tensor ``[B, P, 3]``."""
    if isinstance(batch, Tensor):
        return model(batch)
    return model(*model_inputs(model, batch))


def _node_batches(
    graphs: list[Data], cfg: TrainConfig, gen: torch.Generator
) -> Iterator[list[Data]]:
    if len(graphs) == 1:
        yield graphs
        return
    order = torch.randperm(len(graphs), generator=gen).tolist()
    for start in range(0, len(order), cfg.batch_size):
        yield [graphs[i] for i in order[start : start + cfg.batch_size]]


def graph_on(graph: Data, device: torch.device | str) -> Data:
    """``graph`` on ``device``, leaving ``graph`` itself where it is: PyG's ``Data.to`` moves
    the tensors in place, which would leave a task's graph on the GPU after training there (so
    a later CPU step, the serving index or an export, would get CUDA tensors). The shallow copy
    shares the tensors; on the same device nothing is copied."""
    return copy.copy(graph).to(device)


def _collate(graphs: list[Data], device: torch.device) -> Data:
    if len(graphs) == 1:
        return graph_on(graphs[0], device)
    return Batch.from_data_list(graphs).to(device)


def _cloud_batches(
    cloud_set: PointCloudSet, cfg: TrainConfig, gen: torch.Generator
) -> Iterator[tuple[Tensor, Tensor]]:
    order = torch.randperm(len(cloud_set), generator=gen)
    n, size = len(order), cfg.batch_size
    # DGCNN drops the last incomplete batch in training; BatchNorm needs more than one cloud.
    stop = n - n % size if n >= size else n
    for start in range(0, stop, size):
        idx = order[start : start + size]
        if len(idx) < 2:
            continue
        points = augment_pointcloud(cloud_set.points[idx], generator=gen)
        yield points, cloud_set.labels[idx]


def _logits(out: ModelOutput) -> Tensor:
    if out.logits is None:
        raise ValueError("the model skipped its classifier (with_logits=False)")
    return out.logits


def _hard_loss(logits: Tensor, y: Tensor, multilabel: bool) -> Tensor:
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, y.float())
    return F.cross_entropy(logits, y)


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module,
    task: Task,
    split: str = "test",
    device: str = "cpu",
    *,
    with_auroc: bool = True,
    chunk_nodes: int | None = None,
    known_csr: tuple[Tensor, CSR] | None = None,
) -> dict[str, float]:
    """Score ``model`` on one split of ``task``: :func:`split_scores` of :func:`split_logits`.

    Returns ``{"score": headline, ...}``: for node tasks the task's ``metric`` (accuracy,
    macro_f1, micro_f1 or auroc, see :func:`study.metrics.node_scores`) beside accuracy
    (single-label) or micro-F1 (multi-label) and AUROC; for point clouds overall accuracy plus
    ``mean_class_accuracy`` and one-vs-rest macro AUROC, the headline one of them.
    All fractions in [0, 1]. ``with_auroc=False`` leaves AUROC out: the per-epoch validation
    reads only the headline, and PPI's 121-label AUROC costs 0.4 s a call. ``chunk_nodes``
    runs node models layer-wise in chunks of that many nodes (bounded memory, same scores);
    ``known_csr``: ``(edge_index, its CSR)``, reused by a split graph with those very edges.
    """
    logits, y = split_logits(
        model, task, split, device, chunk_nodes=chunk_nodes, known_csr=known_csr
    )
    return split_scores(task, logits, y, with_auroc=with_auroc)


@torch.no_grad()
def split_logits(
    model: nn.Module,
    task: Task,
    split: str,
    device: str = "cpu",
    *,
    chunk_nodes: int | None = None,
    known_csr: tuple[Tensor, CSR] | None = None,
) -> tuple[Tensor, Tensor]:
    """``(logits, targets)`` of ``model`` on the scored examples of one split, on the CPU, in
    eval mode (restored after): the labelled nodes (``[N, C]``; targets ``[N]``, or ``[N, C]``
    multi-label) or every cloud (``[B, C]``, ``[B]``). ``chunk_nodes``, ``known_csr``: as
    :func:`evaluate`."""
    was_training = model.training
    model.eval()
    dev = torch.device(device)
    try:
        if isinstance(task, PointCloudTask):
            clouds = getattr(task, split)
            logits = [
                _logits(forward(model, clouds.points[i : i + 32].to(dev))).cpu()
                for i in range(0, len(clouds), 32)
            ]
            return torch.cat(logits), clouds.labels
        all_logits, targets = [], []
        for graph in getattr(task, split):
            if chunk_nodes is not None:
                # Only the scored nodes' logits, by their neighbourhoods or layer-wise.
                scored = target_logits(
                    model,
                    graph.x,
                    graph.edge_index,
                    graph.mask.nonzero().view(-1),
                    chunk_nodes=chunk_nodes,
                    device=dev,
                    csr=_same_edges_csr(graph.edge_index, known_csr),
                )
                all_logits.append(scored)
                targets.append(graph.y[graph.mask])
                continue
            data = graph_on(graph, dev)
            all_logits.append(_logits(forward(model, data))[data.mask].cpu())
            targets.append(data.y[data.mask].cpu())
        return torch.cat(all_logits), torch.cat(targets)
    finally:
        model.train(was_training)


def _same_edges_csr(edge_index: Tensor, known: tuple[Tensor, CSR] | None) -> CSR | None:
    """``known``'s CSR when ``edge_index`` is its very tensor (a transductive split: one graph)."""
    if known is None:
        return None
    edges, csr = known
    same = edges.data_ptr() == edge_index.data_ptr() and edges.shape == edge_index.shape
    return csr if same and edges.stride() == edge_index.stride() else None


def split_scores(
    task: Task, logits: Tensor, y: Tensor, *, with_auroc: bool = True
) -> dict[str, float]:
    """:func:`evaluate`'s scores from :func:`split_logits`' ``(logits, targets)``."""
    if isinstance(task, NodeTask):
        scores = node_scores(
            logits, y, multilabel=task.multilabel, metric=task.metric, with_auroc=with_auroc
        )
        return {**scores, "n": float(len(y))}  # how many examples the score counts
    pred = logits.argmax(-1)
    correct = (pred == y).float()
    per_class = torch.zeros(task.num_classes).index_add_(0, y, correct)
    counts = torch.bincount(y, minlength=task.num_classes).float()
    present = counts > 0
    mean_class = (per_class[present] / counts[present]).mean().item()
    out = {"accuracy": correct.mean().item(), "mean_class_accuracy": mean_class, "n": float(len(y))}
    if with_auroc or task.metric == "auroc":  # one-vs-rest macro over the classes present
        out["auroc"] = multiclass_auroc(logits, y)
    return {"score": out[task.metric], **out}


# ---------------------------------------------------------------- the teacher


class TeacherCache:
    """The frozen teacher's outputs on fixed graphs, and what the method precomputes from them,
    computed once per graph (keyed by ``graph_id``)."""

    def __init__(self, teacher: nn.Module, method: DistillMethod, device: torch.device) -> None:
        self.teacher = teacher.eval().requires_grad_(False).to(device)
        self.method = method
        self._outputs: dict[int, tuple[ModelOutput, list[Tensor]]] = {}

    def _compute(self, graph: Data) -> tuple[ModelOutput, list[Tensor]]:
        with torch.no_grad():
            out = forward(self.teacher, graph)
            return out, self.method.precompute(out, graph)

    def outputs(self, graphs: list[Data], device: torch.device) -> tuple[ModelOutput, list[Tensor]]:
        """Teacher ``ModelOutput`` and the method's precomputed tensors for a batch of graphs,
        each concatenated over the graphs in batch order (as ``Batch`` stacks nodes and edges)."""
        parts = []
        for g in graphs:
            key = int(g.graph_id) if "graph_id" in g else id(g.x)  # no id: one graph per object
            if key not in self._outputs:
                self._outputs[key] = self._compute(graph_on(g, device))
            parts.append(self._outputs[key])
        if len(parts) == 1:
            return parts[0]
        outs = [out for out, _ in parts]
        logits = [out.logits for out in outs if out.logits is not None]
        joined = ModelOutput(
            logits=torch.cat(logits) if len(logits) == len(outs) else None,
            hidden=[torch.cat(layer) for layer in zip(*(out.hidden for out in outs), strict=True)],
        )
        pre = [torch.cat(items) for items in zip(*(p for _, p in parts), strict=True)]
        return joined, pre


# ---------------------------------------------------------------- sampled mini-batches


def training_graph(task: NodeTask) -> Data:
    """The graph mini-batches are sampled from: the one training graph, or the training graphs
    as one disjoint union (PPI), with ``x [N, F]``, ``edge_index [2, E]``, ``y``, ``mask [N]``."""
    if len(task.train) == 1:
        return task.train[0]
    union = Batch.from_data_list(task.train)
    return Data(x=union.x, edge_index=union.edge_index, y=union.y, mask=union.mask)


def teacher_outputs(
    teacher: nn.Module,
    task: NodeTask,
    device: str = "cpu",
    *,
    chunk_nodes: int = INFERENCE_CHUNK_NODES,
    csr: CSR | None = None,
    allocate: Allocate | None = None,
) -> ModelOutput:
    """The frozen teacher's ``[N, C]`` logits and ``[N, F_l]`` hidden features on every node of
    :func:`training_graph`, by layer-wise inference without autograd (CPU tensors, or maps of
    the files ``allocate`` makes): what every
    sampled distillation step reads instead of running the teacher. ``csr``: the training
    graph's, when the caller holds it (not built again); ``allocate``: as
    :func:`~study.inference.layerwise_forward` takes it (file-backed outputs)."""
    graph = training_graph(task)
    return layerwise_forward(
        teacher,
        graph.x,
        graph.edge_index,
        chunk_nodes=chunk_nodes,
        device=device,
        csr=csr,
        allocate=allocate,
    )


@dataclass
class _Sampling:
    """What sampled mini-batch training reads: the graph, its sampler, the teacher's outputs."""

    graph: Data
    sampler: NeighborSampler
    teacher: ModelOutput | None

    def known_csr(self) -> tuple[Tensor, CSR] | None:
        """The training graph's edges and the sampler's CSR of them (evaluation reuses it)."""
        csr = self.sampler.csr_or_none()
        return None if csr is None else (self.graph.edge_index, csr)


def _rows(
    out: ModelOutput, index: Tensor | slice, device: torch.device, *, with_logits: bool = True
) -> ModelOutput:
    """``out`` restricted to ``index``'s rows (logits and every hidden layer), on ``device``;
    ``with_logits=False``: a caller that never reads them may get none from files."""
    if isinstance(out, MappedOutput) and isinstance(index, Tensor):
        # Copied from its files (none of their pages mapped); logits only where read.
        return out.rows(index, device, logits=with_logits)
    logits = None if out.logits is None else out.logits[index].to(device)
    return ModelOutput(logits=logits, hidden=[h[index].to(device) for h in out.hidden])


def sampled_step(
    model: nn.Module,
    graph: Data,
    sub: SampledSubgraph,
    teacher: ModelOutput | None,
    method: DistillMethod,
    adapters: nn.ModuleList | None,
    multilabel: bool,
    device: torch.device,
) -> tuple[Tensor, Tensor | None]:
    """(hard loss, distillation term or ``None``) of one sampled batch.

    The student runs on the sampled subgraph. The hard loss covers the seeds in
    ``graph.mask``; KD, FitNet and AT compare the seeds' rows with the teacher's; a term that
    reads edges (LSP) gets the sampled edges whose target is a seed and the rows of the seeds
    and their first hop (every node those edges join), so its local structures are
    distributions over those edges for both models.

    Args:
        graph: the training graph (``x``, ``y``, ``mask`` indexed by global node id).
        sub: the batch, seeds first.
        teacher: the teacher's outputs on every node of ``graph`` (``None``: no term).
    """
    out = model(graph.x[sub.n_id].to(device), sub.edge_index.to(device))
    seeds = sub.n_id[: sub.num_seeds]
    logits = _logits(out)[: sub.num_seeds]
    labelled = graph.mask[seeds]
    if bool(labelled.any()):
        target = graph.y[seeds[labelled]].to(device)
        hard = _hard_loss(logits[labelled.to(device)], target, multilabel)
    else:
        hard = logits.sum() * 0.0  # no labelled seed in this batch: the term alone teaches
    if teacher is None:
        return hard, None
    if method.reads_edges:
        # The seeds' sampled edges read only the seeds and their first hop (numbered first):
        # the teacher's rows of the other nodes are never gathered.
        keep = sum(sub.num_sampled_nodes[:2]) or sub.n_id.numel()
        student = _rows(out, slice(0, keep), device)
        t_out = _rows(teacher, sub.n_id[:keep], device, with_logits=method.needs_teacher_logits)
        edges: Tensor | None = sub.edge_index[:, sub.seed_edges()].to(device)
    else:
        student = _rows(out, slice(0, sub.num_seeds), device)
        t_out = _rows(teacher, seeds, device, with_logits=method.needs_teacher_logits)
        edges = None
    term = method.term(
        student,
        t_out,
        edge_index=edges,
        precomputed=[],
        adapters=adapters,
        multilabel=multilabel,
    )
    return hard, term


def _sampling(
    task: Task,
    cfg: TrainConfig,
    teacher: nn.Module | None,
    method: DistillMethod,
    given: ModelOutput | None,
) -> _Sampling | None:
    """Sampled mini-batch training's state, or ``None`` for full batch (or point clouds)."""
    if cfg.num_neighbors is None or not isinstance(task, NodeTask):
        return None
    # Peak memory, not speed, is what sampling is for; from here on in this process (see
    # bound_freed_memory for a Ray worker reused by later trials).
    allocator.bound_freed_memory()
    graph = training_graph(task)
    sampler = NeighborSampler(graph.edge_index, graph.num_nodes, cfg.num_neighbors)
    outputs = None
    if method.needs_teacher:
        if given is None:
            assert teacher is not None
            given = teacher_outputs(teacher, task, cfg.device, csr=sampler.csr_or_none())
        if given.hidden[0].shape[0] != graph.num_nodes:
            raise ValueError(
                f"teacher_outputs cover {given.hidden[0].shape[0]} nodes, the training graph "
                f"has {graph.num_nodes}"
            )
        outputs = given
    return _Sampling(graph, sampler, outputs)


def teacher_on_clouds(teacher: nn.Module, points: Tensor, method: DistillMethod) -> ModelOutput:
    """The frozen teacher's forward on one batch of clouds ``[B, P, F]``, without gradients.

    The classifier runs only for a method that reads the teacher's logits (KD).
    """
    with torch.no_grad():
        return teacher(points, with_logits=method.needs_teacher_logits)


def distillation_term(
    method: DistillMethod,
    student: ModelOutput,
    teacher: ModelOutput,
    *,
    edge_index: Tensor | None,
    precomputed: list[Tensor],
    adapters: nn.ModuleList | None,
    multilabel: bool,
    epoch: int,
) -> Tensor | None:
    """``method``'s unweighted term for one batch, or ``None`` in an epoch it is off."""
    if not method.active(epoch):
        return None
    return method.term(
        student,
        teacher,
        edge_index=edge_index,
        precomputed=precomputed,
        adapters=adapters,
        multilabel=multilabel,
    )


def _layer_widths(model: nn.Module, probe: Data | Tensor) -> list[int]:
    """The width of every hidden layer, from one forward in eval mode without gradients."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        widths = [h.shape[-1] for h in forward(model, probe).hidden]
    model.train(was_training)
    return widths


def _make_adapters(
    method: DistillMethod,
    model: nn.Module,
    teacher: nn.Module | None,
    task: Task,
    device: torch.device,
    teacher_widths: list[int] | None = None,
) -> nn.ModuleList | None:
    """The method's trainable modules (FitNet's adapters), sized by one probe of each model
    (of the student alone when ``teacher_widths`` are known from its cached outputs)."""
    if not method.needs_adapters:
        return None  # no probe: a teacher forward here would be one more than the cache's
    if teacher_widths is not None and isinstance(task, NodeTask):
        graph = task.train[0]  # a few nodes without edges: widths do not depend on the graph
        probe = Data(x=graph.x[:8], edge_index=torch.empty((2, 0), dtype=torch.long))
        widths = _layer_widths(model, probe.to(device))
        adapters = method.make_adapters(widths, teacher_widths)
        return None if adapters is None else adapters.to(device)
    assert teacher is not None
    probe = (
        task.train.points[:2].to(device)
        if isinstance(task, PointCloudTask)
        else graph_on(task.train[0], device)
    )
    adapters = method.make_adapters(_layer_widths(model, probe), _layer_widths(teacher, probe))
    return None if adapters is None else adapters.to(device)


# ---------------------------------------------------------------- the loop


@dataclass
class _Run:
    """What one :func:`fit` changes as it goes: what a snapshot saves and a resume restores."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    adapters: nn.ModuleList | None
    gen: torch.Generator
    start_epoch: int = 0
    best_val: float = -float("inf")
    best_epoch: int = -1
    best_state: dict[str, Any] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    elapsed: float = 0.0
    sampling: _Sampling | None = None

    def snapshot(self, epoch: int) -> dict[str, Any]:
        """A state :meth:`restore` continues from after ``epoch`` (keys as Ray checkpoints hold)."""
        return {
            "model": copy.deepcopy(self.model.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "adapters": None
            if self.adapters is None
            else copy.deepcopy(self.adapters.state_dict()),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "epoch": epoch,
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "history": list(self.history),
            "train_seconds": self.elapsed,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`snapshot`'s ``state``: weights, optimiser, RNGs and bookkeeping."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.adapters is not None:
            self.adapters.load_state_dict(state["adapters"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.start_epoch = state["epoch"] + 1
        self.best_val, self.best_epoch = state["best_val"], state["best_epoch"]
        self.best_state, self.history = state["best_state"], state["history"]
        self.elapsed = state["train_seconds"]

    def keep_if_best(self, val: float, epoch: int) -> None:
        """Keep a copy of the weights when ``val`` beats every earlier validation score."""
        if val > self.best_val:
            self.best_val, self.best_epoch = val, epoch
            self.best_state = copy.deepcopy(self.model.state_dict())


def fit(
    model: nn.Module,
    task: Task,
    cfg: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    distill: DistillConfig | None = None,
    progress: bool = False,
    desc: str = "train",
    on_epoch: EpochCallback | None = None,
    resume: dict[str, Any] | None = None,
    teacher_outputs: ModelOutput | None = None,
) -> TrainResult:
    """Train ``model`` on ``task`` (with a teacher when ``distill.method != "none"``).

    Args:
        model: a model returning :class:`ModelOutput` (GAT on graphs, DGCNN on ``[B, P, 3]``).
        task: a :class:`NodeTask` or :class:`PointCloudTask`.
        cfg: optimisation settings; ``cfg.seed`` seeds dropout, shuffling, augmentation and
            FitNet adapters, not ``model``'s initial weights (seed before building it).
        teacher: the frozen teacher, required by every method but ``none``.
        distill: the method and its hyperparameters (default: the student alone).
        progress: show a progress bar over epochs.
        on_epoch: called after each epoch (see :data:`EpochCallback`).
        resume: a state from ``snapshot()`` to continue from (weights, optimiser, RNG, history).
        teacher_outputs: sampled mini-batches only (``cfg.num_neighbors``): the teacher's
            :func:`teacher_outputs` on the task, computed once and shared (else computed here).

    Raises:
        TrainingDiverged: an epoch's mean training loss is not finite or past the bound of
            :func:`check_divergence`; that epoch is not recorded nor passed to ``on_epoch``.
    """
    distill = distill or DistillConfig()
    method = build_method(distill)
    if method.needs_teacher and teacher is None:
        raise ValueError(f"method {distill.method!r} needs a teacher")
    method.prepare(model, teacher)
    device = torch.device(cfg.device)
    sampling = _sampling(task, cfg, teacher, method, teacher_outputs)
    cache = (
        TeacherCache(teacher, method, device)
        if teacher is not None and method.needs_teacher and sampling is None
        else None
    )
    run = _start(model, task, cfg, method, cache, device, sampling)
    chunk = INFERENCE_CHUNK_NODES if sampling is not None else None
    known = None if sampling is None else sampling.known_csr()
    if resume is not None:
        run.restore(resume)
    multilabel = isinstance(task, NodeTask) and task.multilabel
    w_hard, w_term = method.weights()

    bar = _progress_bar(cfg, run.start_epoch, desc, progress)
    for epoch in bar:
        t0 = time.perf_counter()
        steps = _train_steps(model, task, cfg, run, device, cache, method, multilabel, epoch)
        record = _optimise(run, steps, w_hard, w_term, epoch)
        run.elapsed += time.perf_counter() - t0
        if (epoch + 1) % cfg.eval_every == 0 or epoch == cfg.epochs - 1:
            record["epoch_val_score"] = evaluate(
                model, task, "val", cfg.device, with_auroc=False, chunk_nodes=chunk, known_csr=known
            )["score"]
            run.keep_if_best(record["epoch_val_score"], epoch)
        run.history.append(record)
        bar.set_postfix(
            loss=f"{record['train_loss']:.3f}", val=f"{run.best_val:.3f}", refresh=False
        )
        if on_epoch is not None:
            on_epoch(epoch, record, functools.partial(run.snapshot, epoch))
    bar.close()
    return _finish(run, task, cfg, chunk, known)


def _start(
    model: nn.Module,
    task: Task,
    cfg: TrainConfig,
    method: DistillMethod,
    cache: TeacherCache | None,
    device: torch.device,
    sampling: _Sampling | None = None,
) -> _Run:
    """Seed, move the model, build the adapters, the optimiser and its schedule."""
    seed_everything(cfg.seed)
    model.to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    adapters = None
    if cache is not None:
        adapters = _make_adapters(method, model, cache.teacher, task, device)
    elif sampling is not None and sampling.teacher is not None:
        widths = [h.shape[-1] for h in sampling.teacher.hidden]
        adapters = _make_adapters(method, model, None, task, device, widths)
    params = list(model.parameters()) + ([] if adapters is None else list(adapters.parameters()))
    optimizer = make_optimizer(params, cfg)
    return _Run(model, optimizer, _make_scheduler(optimizer, cfg), adapters, gen, sampling=sampling)


def _progress_bar(cfg: TrainConfig, start: int, desc: str, progress: bool) -> tqdm:
    return tqdm(
        range(start, cfg.epochs),
        desc=desc,
        disable=not progress,
        leave=False,
        initial=start,
        total=cfg.epochs,
        # Off a terminal (Ray workers, CI logs) every refresh is a new line: refresh rarely there.
        mininterval=0.5 if sys.stderr.isatty() else 15.0,
    )


def _optimise(
    run: _Run,
    steps: Iterator[tuple[Tensor, Tensor | None]],
    w_hard: float,
    w_term: float,
    epoch: int,
) -> dict[str, float]:
    """One epoch of optimiser steps on ``w_hard * hard + w_term * term``; the epoch's record.

    Raises :class:`TrainingDiverged` when the epoch's mean loss is not finite or past the bound
    (an epoch without a batch has no loss and is not checked)."""
    run.model.train()
    losses, terms = [], []
    for hard, term in steps:
        loss = w_hard * hard + (w_term * term if term is not None else 0.0)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        losses.append(loss.detach())
        terms.append(term.detach() if term is not None else torch.zeros(()))
    if run.scheduler is not None:
        run.scheduler.step()
    train_loss = torch.stack(losses).mean().item() if losses else float("nan")
    if losses:
        first = next((h["train_loss"] for h in run.history if math.isfinite(h["train_loss"])), None)
        check_divergence(epoch, train_loss, first)
    return {
        "train_loss": train_loss,
        "distill_loss": torch.stack(terms).mean().item() if terms else 0.0,
    }


def _finish(
    run: _Run,
    task: Task,
    cfg: TrainConfig,
    chunk_nodes: int | None,
    known_csr: tuple[Tensor, CSR] | None = None,
) -> TrainResult:
    """Back to the best validation model, scored on the test split."""
    if run.best_state is not None:
        run.model.load_state_dict(run.best_state)
    test_metrics = evaluate(
        run.model, task, "test", cfg.device, chunk_nodes=chunk_nodes, known_csr=known_csr
    )
    return TrainResult(
        model=run.model,
        val_score=run.best_val,
        test_score=test_metrics["score"],
        test_metrics=test_metrics,
        best_epoch=run.best_epoch,
        epochs_run=len(run.history),
        train_seconds=run.elapsed,
        history=run.history,
    )


def _train_steps(
    model: nn.Module,
    task: Task,
    cfg: TrainConfig,
    run: _Run,
    device: torch.device,
    cache: TeacherCache | None,
    method: DistillMethod,
    multilabel: bool,
    epoch: int,
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Yield (hard loss, distillation term or ``None``) for each batch of one epoch."""
    if not method.active(epoch):
        cache = None  # the term is off (LSP after lsp_until_epoch): the teacher need not run
    if isinstance(task, PointCloudTask):
        for points, labels in _cloud_batches(task.train, cfg, run.gen):
            points, labels = points.to(device), labels.to(device)
            out = model(points)
            term = None
            if cache is not None:
                t_out = teacher_on_clouds(cache.teacher, points, method)
                term = method.term(
                    out,
                    t_out,
                    edge_index=None,
                    precomputed=[],
                    adapters=run.adapters,
                    multilabel=False,
                )
            yield _hard_loss(_logits(out), labels, False), term
        return
    if run.sampling is not None:
        yield from _sampled_steps(run, run.sampling, cfg, method, multilabel, device, epoch)
        return
    for graphs in _node_batches(task.train, cfg, run.gen):
        data = _collate(graphs, device)
        out = forward(model, data)
        hard = _hard_loss(_logits(out)[data.mask], data.y[data.mask], multilabel)
        term = None
        if cache is not None:
            t_out, precomputed = cache.outputs(graphs, device)
            types = graph_types(data)
            # A typed graph's terms read its types; any other graph's call is unchanged.
            typed = {} if types is None else {"types": types}
            term = method.term(
                out,
                t_out,
                edge_index=data.edge_index,
                precomputed=precomputed,
                adapters=run.adapters,
                multilabel=multilabel,
                **typed,
            )
        yield hard, term


def _sampled_steps(
    run: _Run,
    sampling: _Sampling,
    cfg: TrainConfig,
    method: DistillMethod,
    multilabel: bool,
    device: torch.device,
    epoch: int,
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """One epoch of sampled batches. With a term on, the seeds run over every node (the
    teacher is known everywhere, as the full-batch term covers every node); without one, over
    the labelled nodes only."""
    graph = sampling.graph
    teacher = sampling.teacher if method.active(epoch) else None
    if teacher is not None:  # every node: the permutation itself (no [N] pool to index)
        order = torch.randperm(graph.num_nodes, generator=run.gen)
    else:
        pool = graph.mask.nonzero().view(-1)
        order = pool[torch.randperm(pool.numel(), generator=run.gen)]
    for seeds in order.split(cfg.batch_size):
        sub = sampling.sampler.sample(seeds, run.gen)
        yield sampled_step(run.model, graph, sub, teacher, method, run.adapters, multilabel, device)


def train_teacher(
    model: nn.Module, task: Task, cfg: TrainConfig, *, progress: bool = False, **kwargs: Any
) -> TrainResult:
    """Train a teacher on ``task`` alone (cross-entropy / BCE); see :func:`fit`."""
    return fit(model, task, cfg, progress=progress, desc="teacher", **kwargs)


def distill_student(
    student: nn.Module,
    teacher: nn.Module,
    task: Task,
    cfg: TrainConfig,
    distill: DistillConfig,
    *,
    progress: bool = False,
    **kwargs: Any,
) -> TrainResult:
    """Train ``student`` on ``task`` with ``distill``'s method from the frozen ``teacher``."""
    return fit(
        student,
        task,
        cfg,
        teacher=teacher,
        distill=distill,
        progress=progress,
        desc=f"student[{distill.method}]",
        **kwargs,
    )


def with_device(cfg: TrainConfig, device: str) -> TrainConfig:
    """``cfg`` on another device (configs are frozen)."""
    return replace(cfg, device=device)
