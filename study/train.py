"""Plain training loops: ``train_teacher``, ``distill_student``, ``evaluate``. No Ray, no MLflow.

Both loops share :func:`fit`: seeded, device-agnostic, the best-validation model kept, the test
score reported at that model. A teacher's outputs on a fixed graph are computed once under
``no_grad`` and cached (as PyG's ``examples/glnn.py`` does); on augmented point clouds the input
changes every batch, so there the frozen teacher runs per batch, still without gradients.
"""

from __future__ import annotations

import copy
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch, Data
from tqdm.auto import tqdm

from study.data.augment import augment_pointcloud
from study.data.base import NodeTask, PointCloudSet, PointCloudTask, Task
from study.distill import (
    FitNetAdapter,
    at_loss,
    fitnet_loss,
    kd_loss,
    local_structure,
    lsp_loss,
    union_edges,
)
from study.metrics import binary_auroc, macro_auroc
from study.models.base import ModelOutput
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
    return model(batch.x, batch.edge_index)


def _node_batches(
    graphs: list[Data], cfg: TrainConfig, gen: torch.Generator
) -> Iterator[list[Data]]:
    if len(graphs) == 1:
        yield graphs
        return
    order = torch.randperm(len(graphs), generator=gen).tolist()
    for start in range(0, len(order), cfg.batch_size):
        yield [graphs[i] for i in order[start : start + cfg.batch_size]]


def _collate(graphs: list[Data], device: torch.device) -> Data:
    data = graphs[0] if len(graphs) == 1 else Batch.from_data_list(graphs)
    return data.to(device)


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
) -> dict[str, float]:
    """Score ``model`` on one split of ``task``.

    Returns ``{"score": headline, ...}``: accuracy (single-label nodes; plus ``auroc`` when
    binary), micro-F1 (multi-label, logits thresholded at 0; plus macro ``auroc`` over labels), or
    overall accuracy plus ``mean_class_accuracy`` (point clouds).
    All fractions in [0, 1]. ``with_auroc=False`` leaves AUROC out: the per-epoch validation
    reads only the headline, and PPI's 121-label AUROC costs 0.4 s a call.
    """
    was_training = model.training
    model.eval()
    dev = torch.device(device)
    try:
        if isinstance(task, PointCloudTask):
            return _evaluate_clouds(model, getattr(task, split), task.num_classes, dev)
        return _evaluate_nodes(model, getattr(task, split), task.multilabel, dev, with_auroc)
    finally:
        model.train(was_training)


def _evaluate_nodes(
    model: nn.Module, graphs: list[Data], multilabel: bool, dev: torch.device, with_auroc: bool
) -> dict[str, float]:
    all_logits, targets = [], []
    for graph in graphs:
        data = graph.to(dev)
        all_logits.append(forward(model, data).logits[data.mask].cpu())
        targets.append(data.y[data.mask].cpu())
    logits, y = torch.cat(all_logits), torch.cat(targets)
    if multilabel:
        pred, y = logits > 0, y.bool()
        tp = (pred & y).sum().item()
        fp = (pred & ~y).sum().item()
        fn = (~pred & y).sum().item()
        f1 = 2 * tp / max(2 * tp + fp + fn, 1)
        metrics = {"score": f1, "micro_f1": f1}
        if with_auroc:
            metrics["auroc"] = macro_auroc(logits, y)
        return metrics
    acc = (logits.argmax(-1) == y).float().mean().item() if len(y) else float("nan")
    metrics = {"score": acc, "accuracy": acc}
    if with_auroc and logits.shape[-1] == 2:  # binary: AUROC of the positive class's margin
        metrics["auroc"] = binary_auroc(logits[:, 1] - logits[:, 0], y == 1)
    return metrics


def _evaluate_clouds(
    model: nn.Module, clouds: PointCloudSet, num_classes: int, dev: torch.device
) -> dict[str, float]:
    preds = [
        forward(model, clouds.points[i : i + 32].to(dev)).logits.argmax(-1).cpu()
        for i in range(0, len(clouds), 32)
    ]
    pred, y = torch.cat(preds), clouds.labels
    correct = (pred == y).float()
    per_class = torch.zeros(num_classes).index_add_(0, y, correct)
    counts = torch.bincount(y, minlength=num_classes).float()
    present = counts > 0
    mean_class = (per_class[present] / counts[present]).mean().item()
    acc = correct.mean().item()
    return {"score": acc, "accuracy": acc, "mean_class_accuracy": mean_class}


# ---------------------------------------------------------------- distillation terms


class TeacherCache:
    """The frozen teacher's outputs on fixed graphs, computed once per graph (keyed by graph_id)."""

    def __init__(self, teacher: nn.Module, distill: DistillConfig, device: torch.device) -> None:
        self.teacher = teacher.eval().requires_grad_(False).to(device)
        self.distill = distill
        self._outputs: dict[int, tuple[Tensor, list[Tensor], list[Tensor]]] = {}

    def _compute(self, graph: Data) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        with torch.no_grad():
            out = forward(self.teacher, graph)
            log_ls = []
            if self.distill.method == "lsp":
                log_ls = [
                    local_structure(
                        out.hidden[t],
                        graph.edge_index,
                        kernel=self.distill.kernel,
                        num_nodes=graph.num_nodes,
                        **self.distill.kernel_params,
                    )
                    for _, t in self.distill.layer_map
                ]
        return out.logits, out.hidden, log_ls

    def outputs(self, graphs: list[Data], device: torch.device) -> tuple[ModelOutput, list[Tensor]]:
        """Teacher ``ModelOutput`` and per-pair LSP log-structures for a batch of graphs."""
        parts = []
        for g in graphs:
            key = int(g.graph_id) if "graph_id" in g else id(g.x)  # no id: one graph per object
            if key not in self._outputs:
                self._outputs[key] = self._compute(g.to(device))
            parts.append(self._outputs[key])
        if len(parts) == 1:
            logits, hidden, log_ls = parts[0]
        else:
            logits = torch.cat([p[0] for p in parts])
            hidden = [torch.cat([p[1][i] for p in parts]) for i in range(len(parts[0][1]))]
            log_ls = [torch.cat([p[2][i] for p in parts]) for i in range(len(parts[0][2]))]
        return ModelOutput(logits=logits, hidden=hidden), log_ls


def teacher_on_clouds(teacher: nn.Module, points: Tensor, distill: DistillConfig) -> ModelOutput:
    """The frozen teacher's forward on one batch of clouds ``[B, P, F]``, without gradients.

    Only KD reads the teacher's logits; for the other methods the classifier is skipped.
    """
    with torch.no_grad():
        return teacher(points, with_logits=distill.method == "kd")


def distillation_term(
    distill: DistillConfig,
    student: ModelOutput,
    teacher: ModelOutput,
    *,
    edge_index: Tensor | None,
    teacher_log_ls: list[Tensor] | None,
    adapters: nn.ModuleList | None,
    multilabel: bool,
    epoch: int,
) -> Tensor | None:
    """The method's loss term for one batch (unweighted), or ``None`` when it does not apply."""
    m = distill.method
    if m == "none":
        return None
    if m == "kd":
        if student.logits is None or teacher.logits is None:
            raise ValueError("kd needs the logits of both models (a forward ran with_logits=False)")
        return kd_loss(
            student.logits, teacher.logits, temperature=distill.temperature, multilabel=multilabel
        )
    if m == "lsp" and distill.lsp_until_epoch is not None and epoch >= distill.lsp_until_epoch:
        return None
    terms = []
    for pair, (s_idx, t_idx) in enumerate(distill.layer_map):
        z_s, z_t = student.hidden[s_idx], teacher.hidden[t_idx]
        if m == "fitnet":
            assert adapters is not None
            terms.append(fitnet_loss(z_s, z_t, adapters[pair]))
        elif m == "at":
            terms.append(at_loss(z_s, z_t, p=distill.at_p))
        elif m == "lsp":
            terms.append(
                _lsp_term(
                    distill,
                    z_s,
                    z_t,
                    student,
                    teacher,
                    s_idx,
                    t_idx,
                    edge_index,
                    None if teacher_log_ls is None else teacher_log_ls[pair],
                )
            )
    return torch.stack(terms).sum()


def _lsp_term(
    distill: DistillConfig,
    z_s: Tensor,
    z_t: Tensor,
    student: ModelOutput,
    teacher: ModelOutput,
    s_idx: int,
    t_idx: int,
    edge_index: Tensor | None,
    teacher_log_ls: Tensor | None,
) -> Tensor:
    kwargs: dict[str, Any] = dict(
        kernel=distill.kernel,
        direction=distill.direction,
        num_nodes=z_s.shape[0],
        **distill.kernel_params,
    )
    if student.edge_indices is not None and teacher.edge_indices is not None:
        # Dynamic graphs (DGCNN): both sides on the union of the two kNN graphs (paper 3.5).
        edges = union_edges(
            student.edge_indices[s_idx], teacher.edge_indices[t_idx], num_nodes=z_s.shape[0]
        )
        return lsp_loss(z_s, z_t, edges, **kwargs)
    assert edge_index is not None
    return lsp_loss(z_s, z_t, edge_index, teacher_log_ls=teacher_log_ls, **kwargs)


def _distill_weight(distill: DistillConfig) -> tuple[float, float]:
    """(weight of the hard loss, weight of the distillation term)."""
    if distill.method == "kd":
        return 1.0 - distill.alpha, distill.alpha
    return 1.0, distill.lambda_


# ---------------------------------------------------------------- the loop


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
    """
    distill = distill or DistillConfig()
    if distill.method != "none" and teacher is None:
        raise ValueError(f"method {distill.method!r} needs a teacher")
    device = torch.device(cfg.device)
    seed_everything(cfg.seed)
    model.to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    multilabel = isinstance(task, NodeTask) and task.multilabel
    cache = (
        TeacherCache(teacher, distill, device)
        if teacher is not None and distill.method != "none"
        else None
    )

    adapters = (
        _make_adapters(model, task, cache, distill, device) if distill.method == "fitnet" else None
    )
    params = list(model.parameters()) + (
        list(adapters.parameters()) if adapters is not None else []
    )
    optimizer = make_optimizer(params, cfg)
    scheduler = _make_scheduler(optimizer, cfg)
    w_hard, w_distill = _distill_weight(distill)

    start_epoch, best_val, best_epoch, best_state = 0, -float("inf"), -1, None
    history: list[dict[str, float]] = []
    elapsed = 0.0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if adapters is not None:
            adapters.load_state_dict(resume["adapters"])
        if scheduler is not None:
            scheduler.load_state_dict(resume["scheduler"])
        gen.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        start_epoch, best_val, best_epoch = (
            resume["epoch"] + 1,
            resume["best_val"],
            resume["best_epoch"],
        )
        best_state, history, elapsed = (
            resume["best_state"],
            resume["history"],
            resume["train_seconds"],
        )

    def snapshot(epoch: int) -> dict[str, Any]:
        return {
            "model": copy.deepcopy(model.state_dict()),
            "optimizer": copy.deepcopy(optimizer.state_dict()),
            "adapters": None if adapters is None else copy.deepcopy(adapters.state_dict()),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "epoch": epoch,
            "best_val": best_val,
            "best_epoch": best_epoch,
            "best_state": best_state,
            "history": list(history),
            "train_seconds": elapsed,
        }

    bar = tqdm(
        range(start_epoch, cfg.epochs),
        desc=desc,
        disable=not progress,
        leave=False,
        initial=start_epoch,
        total=cfg.epochs,
        # Off a terminal (Ray workers, CI logs) every refresh is a new line: refresh rarely there.
        mininterval=0.5 if sys.stderr.isatty() else 15.0,
    )
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        losses, dlosses = [], []
        for hard, dterm in _train_steps(
            model, task, cfg, gen, device, cache, distill, adapters, multilabel, epoch
        ):
            loss = w_hard * hard + (w_distill * dterm if dterm is not None else 0.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
            dlosses.append(dterm.detach() if dterm is not None else torch.zeros(()))
        if scheduler is not None:
            scheduler.step()
        elapsed += time.perf_counter() - t0
        record = {
            "train_loss": torch.stack(losses).mean().item() if losses else float("nan"),
            "distill_loss": torch.stack(dlosses).mean().item() if dlosses else 0.0,
        }
        if (epoch + 1) % cfg.eval_every == 0 or epoch == cfg.epochs - 1:
            val = evaluate(model, task, "val", cfg.device, with_auroc=False)["score"]
            record["epoch_val_score"] = val
            if val > best_val:
                best_val, best_epoch = val, epoch
                best_state = copy.deepcopy(model.state_dict())
        history.append(record)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", val=f"{best_val:.3f}", refresh=False)
        if on_epoch is not None:
            on_epoch(epoch, record, lambda e=epoch: snapshot(e))
    bar.close()

    if best_state is not None:
        model.load_state_dict(best_state)
    test_metrics = evaluate(model, task, "test", cfg.device)
    return TrainResult(
        model=model,
        val_score=best_val,
        test_score=test_metrics["score"],
        test_metrics=test_metrics,
        best_epoch=best_epoch,
        epochs_run=len(history),
        train_seconds=elapsed,
        history=history,
    )


def _train_steps(
    model: nn.Module,
    task: Task,
    cfg: TrainConfig,
    gen: torch.Generator,
    device: torch.device,
    cache: TeacherCache | None,
    distill: DistillConfig,
    adapters: nn.ModuleList | None,
    multilabel: bool,
    epoch: int,
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Yield (hard loss, distillation term) for each batch of one epoch."""
    if isinstance(task, PointCloudTask):
        for points, labels in _cloud_batches(task.train, cfg, gen):
            points, labels = points.to(device), labels.to(device)
            out = model(points)
            dterm = None
            if cache is not None:
                t_out = teacher_on_clouds(cache.teacher, points, distill)
                dterm = distillation_term(
                    distill,
                    out,
                    t_out,
                    edge_index=None,
                    teacher_log_ls=None,
                    adapters=adapters,
                    multilabel=False,
                    epoch=epoch,
                )
            yield _hard_loss(out.logits, labels, False), dterm
        return
    for graphs in _node_batches(task.train, cfg, gen):
        data = _collate(graphs, device)
        out = forward(model, data)
        hard = _hard_loss(out.logits[data.mask], data.y[data.mask], multilabel)
        dterm = None
        if cache is not None:
            t_out, log_ls = cache.outputs(graphs, device)
            dterm = distillation_term(
                distill,
                out,
                t_out,
                edge_index=data.edge_index,
                teacher_log_ls=log_ls or None,
                adapters=adapters,
                multilabel=multilabel,
                epoch=epoch,
            )
        yield hard, dterm


def _make_adapters(
    model: nn.Module,
    task: Task,
    cache: TeacherCache | None,
    distill: DistillConfig,
    device: torch.device,
) -> nn.ModuleList:
    """FitNet adapters, one per layer pair, sized from one probe forward of each model."""
    assert cache is not None
    probe = (
        task.train.points[:2].to(device)
        if isinstance(task, PointCloudTask)
        else task.train[0].to(device)
    )
    was_training = model.training
    model.eval()
    with torch.no_grad():
        s_out, t_out = forward(model, probe), forward(cache.teacher, probe)
    model.train(was_training)
    return nn.ModuleList(
        FitNetAdapter(s_out.hidden[s].shape[-1], t_out.hidden[t].shape[-1])
        for s, t in distill.layer_map
    ).to(device)


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
