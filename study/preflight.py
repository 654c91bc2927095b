"""Everything about a study that needs torch, checked before anything starts.

:func:`study.config.load_study_spec` checks a study file's keys and values without importing
torch. What only the code and the data can tell comes here, run by ``run`` and ``validate``
before Ray, MLflow or a folder is touched: the dataset loads (a user's file has one of the two
shapes, masks that fit ``x`` and do not overlap); user modules import, their functions exist and
take the options given; the teacher's checkpoint fits its model; every ``hidden`` name is a
submodule that yields ``[N, F]`` node features; teacher and student return one logit per class.
Each problem is one line ``<study file>: <key.path>: <what was expected>``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import torch
from torch import nn
from torch_geometric.data import Data
from torch_geometric.utils import subgraph

from study.catalogs import MODELS, reads_attention, reads_types
from study.config import ModelSpec, StudySpec, fanouts_of
from study.context import load_study_task
from study.data.base import NodeTask, PointCloudTask, Task, io_channels, is_typed
from study.data.hetero import relation_names
from study.distill.typed import relation_weight_vector
from study.errors import UserInputError, one_line
from study.layer_map import PairOutOfRange, parse_layer_map, resolve_layer_map
from study.models import build_model
from study.models.attention import set_attention_recording
from study.models.base import ModelOutput, model_inputs
from study.teachers import load_teacher_weights
from study.train_config import TrainConfig

T = TypeVar("T")

#: Nodes of the probe graph a model's forward is checked on (a large graph is cut down to them).
PROBE_NODES = 256


def in_file(spec: StudySpec, role: str | None, call: Callable[..., T], *args: Any) -> T:
    """``call(*args)`` with its :class:`UserInputError` placed in the study file: the file, then
    ``<role>.<the error's key>`` (e.g. ``teacher.hidden``), then the message."""
    try:
        return call(*args)
    except UserInputError as err:
        text = str(err)
        if text.startswith(f"{spec.source}:"):
            raise
        key = err.key if role is None or err.key is None else f"{role}.{err.key}"
        key = key or role
        where = f"{spec.source}: {key}" if key else spec.source
        raise UserInputError(f"{where}: {text}") from None


def load_and_check(spec: StudySpec, data_root: str | None) -> Task:
    """The study's dataset, after every check this module makes (see the module docstring)."""
    task = in_file(spec, None, load_study_task, spec, data_root)
    check_split_classes(spec, task)
    check_typed(spec, task)
    check_models(spec, task)
    check_fits_full_batch(spec, task)
    return task


def probe_input(task: Task) -> Data | torch.Tensor:
    """A small input of the task to run a forward on: two training clouds, or the first
    training graph (its first :data:`PROBE_NODES` nodes and the edges among them)."""
    if isinstance(task, PointCloudTask):
        return task.train.points[:2]
    graph = task.train[0]
    if graph.num_nodes <= PROBE_NODES:
        return graph
    keep = torch.arange(PROBE_NODES)
    edge_index, _, kept = subgraph(
        keep, graph.edge_index, num_nodes=graph.num_nodes, return_edge_mask=True
    )
    probe = Data(x=graph.x[:PROBE_NODES], edge_index=edge_index)
    if "edge_type" in graph:  # a typed graph's probe keeps its types
        probe.edge_type = graph.edge_type[kept]
        probe.node_type = graph.node_type[:PROBE_NODES]
    return probe


def check_forward(model: nn.Module, probe: Data | torch.Tensor, task: Task) -> ModelOutput:
    """One forward of ``model`` on ``probe``: a :class:`ModelOutput` with a logit per class."""
    model.eval()
    try:
        with torch.no_grad():
            inputs = (probe,) if isinstance(probe, torch.Tensor) else model_inputs(model, probe)
            out = model(*inputs)
    except UserInputError:
        raise
    except Exception as exc:  # the user's forward: one line, not a traceback
        name = type(getattr(model, "module", model)).__name__
        raise UserInputError(
            f"{name}.forward{'(points)' if len(inputs) == 1 else '(x, edge_index)'} raised "
            f"{one_line(exc)}",
            key="factory",
        ) from None
    if not isinstance(out, ModelOutput) or out.logits is None:
        raise UserInputError(f"expected the model's output, got {type(out).__name__}")
    rows = probe.shape[0] if isinstance(probe, torch.Tensor) else probe.num_nodes
    want = (rows, task.num_classes)
    if tuple(out.logits.shape) != want:
        raise UserInputError(
            f"the model returns logits of shape {tuple(out.logits.shape)} on {rows} "
            f"{'clouds' if isinstance(probe, torch.Tensor) else 'nodes'}; the task has "
            f"{task.num_classes} classes, so expected {list(want)} (out_channels)",
            key="factory",
        )
    return out


def layer_maps(spec: StudySpec) -> list[tuple[str, str, Any]]:
    """``(method, key path, layer map)`` of every ``layer_map`` the study can use: each method's
    fixed one and each choice of a searched one."""
    found = []
    for method, values in spec.method_defaults.items():
        if "layer_map" in values:
            found.append((method, f"method_defaults.{method}.layer_map", values["layer_map"]))
    for dim in spec.search:
        if dim.method is not None and dim.key == "layer_map":
            for i, text in enumerate(dim.args):
                found.append((dim.method, f"search.{dim.name}.choice[{i}]", parse_layer_map(text)))
    return found


def model_layers(method: str, out: ModelOutput) -> tuple[int, str]:
    """How many layers ``method``'s map indexes in a model's output, and what they are called:
    attention layers for a method that reads attention, hidden layers otherwise."""
    if reads_attention(method):
        return (0 if out.attention is None else len(out.attention())), "attention"
    return len(out.hidden), "hidden"


def check_layer_maps(spec: StudySpec, teacher_out: ModelOutput, student_out: ModelOutput) -> None:
    """Every ``layer_map`` (fixed or searched) pairs existing layers of both models: one line
    naming the key otherwise (a map past the depths would fail only inside a trial)."""
    for method, path, value in layer_maps(spec):
        s_n, what = model_layers(method, student_out)
        t_n, _ = model_layers(method, teacher_out)
        for source in _teacher_sources(spec, method):
            # The teacher's gradient-based importance: one distribution, one "layer".
            t_src = 1 if source == "gradient" else t_n
            if s_n == 0 or t_src == 0:
                continue  # a model without attention is refused by check_attention
            try:
                resolve_layer_map(value, s_n, t_src)
            except PairOutOfRange as err:
                raise UserInputError(
                    f"{spec.source}: {path}[{err.index}]: expected [student layer, teacher "
                    f"layer] within the student's {s_n} and the teacher's {t_src} {what} "
                    f"layers, got {list(err.pair)}"
                ) from None


def _teacher_sources(spec: StudySpec, method: str) -> set[str]:
    """Where ``method``'s teacher side comes from in some trial: its fixed ``teacher_source``
    or every searched one (``attention`` for methods without the option)."""
    searched = spec.dimension(f"{method}.teacher_source")
    if searched is not None:
        return {str(v) for v in searched.args}
    return {str(spec.method_defaults[method].get("teacher_source", "attention"))}


def check_attention(spec: StudySpec, teacher_out: ModelOutput, student_out: ModelOutput) -> None:
    """A method that reads attention needs a student that exposes it, and a teacher that does
    unless the method computes the teacher's gradient-based importance instead."""
    for method in spec.methods:
        if not reads_attention(method):
            continue
        if student_out.attention is None:
            raise UserInputError(
                f"{spec.source}: student: method {method} matches attention over edges, but "
                f"the student {spec.student.model.label} exposes none (expected a gat student or "
                "a factory model with GATConv layers)"
            )
        searched = spec.dimension(f"{method}.teacher_source")
        if "attention" in _teacher_sources(spec, method) and teacher_out.attention is None:
            key = f"search.{method}.teacher_source" if searched else f"method_defaults.{method}"
            raise UserInputError(
                f"{spec.source}: {key}: the teacher {spec.teacher.model.label} exposes no "
                "attention; expected teacher_source: gradient (gradient-based edge importance)"
            )


def check_typed(spec: StudySpec, task: Task) -> None:
    """A typed (heterogeneous) graph trains full batch (the sampler does not carry edge types),
    and edge_attention's gradient teacher must be callable on ``(x, edge_index)``: both are
    refused here, before anything starts. (edge_attention itself works per relation.)"""
    weights = spec.method_defaults.get("lsp", {}).get("relation_weights")
    typed = isinstance(task, NodeTask) and is_typed(task.train[0])
    if weights is not None and "lsp" in spec.methods:
        where = f"{spec.source}: method_defaults.lsp.relation_weights"
        if not typed:
            raise UserInputError(f"{where}: applies to a heterogeneous dataset only; remove it")
        assert isinstance(task, NodeTask)
        try:
            relation_weight_vector(weights, relation_names(task.train[0]))
        except UserInputError as err:
            raise UserInputError(f"{where}: {err}") from None
    if not typed:
        return
    for role, train in (("teacher", spec.teacher.train), ("student", spec.student.train)):
        if train.num_neighbors is not None:
            raise UserInputError(
                f"{spec.source}: {role}.train.num_neighbors: sampled mini-batches do not carry "
                "edge types yet; a heterogeneous dataset trains full batch (remove num_neighbors "
                "and batch_size)"
            )
    for searched in ("student.batch_size", "student.num_neighbors"):
        if spec.dimension(searched) is not None:
            raise UserInputError(
                f"{spec.source}: search.{searched}: a heterogeneous dataset trains full batch "
                "(sampled mini-batches do not carry edge types yet); remove it"
            )
    teacher_arch = spec.teacher.model.arch
    if (
        "edge_attention" in spec.methods
        and "gradient" in _teacher_sources(spec, "edge_attention")
        and teacher_arch is not None
        and reads_types(teacher_arch)
    ):
        raise UserInputError(
            f"{spec.source}: method_defaults.edge_attention.teacher_source: gradient importance "
            f"calls the teacher on (x, edge_index), but {teacher_arch} reads edge and node types; "
            "use a gat teacher (teacher_source: attention) for edge_attention on this dataset"
        )


def check_split_classes(spec: StudySpec, task: Task) -> None:
    """An AUROC headline needs both classes in validation and test: with one, every score is
    NaN and the searcher optimises nothing (a small split of a rare class can lack positives)."""
    if not isinstance(task, NodeTask) or task.metric != "auroc" or task.multilabel:
        return
    for split in ("val", "test"):
        y = torch.cat([g.y[g.mask] for g in getattr(task, split)])
        present = int(torch.unique(y).numel())
        if present < 2:
            raise UserInputError(
                f"{spec.source}: dataset.metric: auroc needs at least two classes in the "
                f"{split} split, which holds {present}"
            )


def _build(model: ModelSpec, task: Task, options: dict[str, Any] | None = None) -> nn.Module:
    kwargs = model.build_kwargs()
    if options is not None:
        kwargs["options"] = options
    return build_model(model.arch, **kwargs, **io_channels(task))


def student_variants(spec: StudySpec) -> list[dict[str, Any] | None]:
    """The option sets a user student is checked with: the fixed options, then each searched
    option at each of its choices (or both ends of its range), one at a time."""
    model = spec.student.model
    if model.factory is None:
        return [None]
    base = dict(model.options)
    variants: list[dict[str, Any] | None] = [base]
    for dim in spec.search:
        if dim.name.startswith("student.options."):
            key = dim.name.removeprefix("student.options.")
            variants += [{**base, key: value} for value in dim.args]
    return variants


def check_models(spec: StudySpec, task: Task) -> None:
    """Build the teacher (with its checkpoint) and the student variants and run a forward each."""
    probe = probe_input(task)
    teacher_spec = spec.teacher.model
    if spec.teacher.checkpoint is not None:
        teacher = in_file(
            spec,
            "teacher",
            _keyed_checkpoint,
            spec.teacher.checkpoint,
            teacher_spec,
            task,
        )
    else:
        teacher = in_file(spec, "teacher", _build, teacher_spec, task)
    attention = any(reads_attention(m) for m in spec.methods)
    set_attention_recording(teacher, attention)
    teacher_out = in_file(spec, "teacher", check_forward, teacher, probe, task)
    check_fanouts(spec, "teacher", spec.teacher.train, teacher, task)
    for model, options in builtin_variants(spec) or [
        (spec.student.model, o) for o in student_variants(spec)
    ]:
        student = in_file(spec, "student", _build, model, task, options)
        set_attention_recording(student, attention)
        student_out = in_file(spec, "student", check_forward, student, probe, task)
        check_attention(spec, teacher_out, student_out)
        check_layer_maps(spec, teacher_out, student_out)
        for key, fanouts in student_fanouts(spec):
            train = replace(spec.student.train, num_neighbors=fanouts)
            check_fanouts(spec, "student", train, student, task, key=key)


def builtin_variants(spec: StudySpec) -> list[tuple[ModelSpec, dict[str, Any] | None]]:
    """A built-in student at each searched architecture and depth (both ends of a range), the
    keys that change its layers; ``[]`` for a factory student."""
    if spec.student.model.factory is not None:
        return []
    arch_dim, depth_dim = spec.dimension("student.arch"), spec.dimension("student.depth")
    archs = list(arch_dim.args) if arch_dim is not None else [str(spec.student.model.arch)]
    depths: list[Any] = list(depth_dim.args) if depth_dim is not None else [None]
    out: list[tuple[ModelSpec, dict[str, Any] | None]] = []
    for arch in archs:
        for depth in depths:
            takes = depth is not None and "depth" in MODELS.get(arch).param_names()
            overrides = {"depth": depth} if takes and spec.student.model.preset is None else {}
            out.append((spec.student.model_for(arch, overrides), None))
    return out


def student_fanouts(spec: StudySpec) -> list[tuple[str, tuple[int, ...] | None]]:
    """``(key, fan-outs)`` a student trial may train with: each choice of a searched
    ``student.num_neighbors``, else the study's ``student.train.num_neighbors``."""
    dim = next((d for d in spec.search if d.name == "student.num_neighbors"), None)
    if dim is None:
        return [("student.train.num_neighbors", spec.student.train.num_neighbors)]
    return [
        (f"search.student.num_neighbors.choice[{i}]", fanouts_of(text))
        for i, text in enumerate(dim.args)
    ]


def check_fanouts(
    spec: StudySpec,
    role: str,
    train: TrainConfig,
    model: nn.Module,
    task: Task,
    *,
    key: str | None = None,
) -> None:
    """Mini-batch mode (``<role>.train.num_neighbors``, or ``key`` that gave it): node tasks
    only, and one fan-out per layer of the model (a model whose layers are not known, a user's
    own, is not checked). A searched depth is checked at each value against every fan-out
    choice: a study that searches both needs each fan-out list to fit every depth."""
    if train.num_neighbors is None:
        return
    where = f"{spec.source}: {key or f'{role}.train.num_neighbors'}"
    if isinstance(task, PointCloudTask):
        raise UserInputError(f"{where}: sampled mini-batches apply to node tasks only; remove it")
    if role == "student" and "edge_attention" in spec.methods:
        # Its term needs the teacher's attention on each sampled edge; the teacher's outputs
        # computed once per study hold logits and hidden layers only.
        raise UserInputError(
            f"{where}: method edge_attention trains full batch only (it needs the teacher's "
            "attention on every sampled edge); remove num_neighbors or edge_attention"
        )
    depth = getattr(model, "num_layers", None)
    if depth is not None and len(train.num_neighbors) != depth:
        searched = role == "student" and any(d.name == "student.depth" for d in spec.search)
        both = (
            "; search.student.depth and this fan-out are chosen independently, so every "
            "fan-out list must fit every searched depth"
            if searched
            else ""
        )
        raise UserInputError(
            f"{where}: expected one fan-out per layer of the {role} ({depth} layers), got "
            f"{list(train.num_neighbors)} ({len(train.num_neighbors)} entries){both}"
        )


#: Peak memory of one full-batch training step per directed edge of the graph, measured on
#: random graphs (100 features, mean degree 10, peak linear in edges up to 6.4M edges; see
#: ``STACK_FACTS.md`` "Full-batch training cost" and ``benchmarks/bench_large_graph.py``):
#: a teacher's training step, and an LSP distillation step of a student.
FULL_BATCH_TEACHER_BYTES_PER_EDGE = 1100
FULL_BATCH_STUDENT_BYTES_PER_EDGE = 700


def available_memory() -> int:
    """Bytes this machine can still give (free plus reclaimable cache)."""
    import psutil

    return int(psutil.virtual_memory().available)


def full_batch_edges(task: NodeTask, train: TrainConfig) -> int:
    """Edges one full-batch step holds: the training graph, or the largest ``batch_size``
    training graphs together (PPI's steps batch graphs)."""
    sizes = sorted((int(g.edge_index.shape[1]) for g in task.train), reverse=True)
    return sum(sizes[: max(1, train.batch_size)]) if len(sizes) > 1 else sizes[0]


def check_fits_full_batch(spec: StudySpec, task: Task, available: int | None = None) -> None:
    """Refuse, before anything starts, a full-batch study whose training graph will not fit in
    this machine's memory: the estimated peak (edges times the measured bytes per edge above,
    times the trials that run at once) against ``available`` (default: what is free now)."""
    if not isinstance(task, NodeTask):
        return
    free = available_memory() if available is None else available
    concurrent = min(
        spec.num_trials,
        spec.searcher.max_concurrent or max(1, int((os.cpu_count() or 1) // spec.resources.cpu)),
    )
    roles = [("student", spec.student.train, FULL_BATCH_STUDENT_BYTES_PER_EDGE, concurrent)]
    if spec.teacher.checkpoint is None:
        roles.insert(0, ("teacher", spec.teacher.train, FULL_BATCH_TEACHER_BYTES_PER_EDGE, 1))
    for role, train, per_edge, copies in roles:
        if train.minibatch:
            continue
        edges = full_batch_edges(task, train)
        need = edges * per_edge * copies
        if need > free:
            runs = f" x {copies} trials at once" if copies > 1 else ""
            remedy = (
                "a heterogeneous graph trains full batch only (the sampler does not carry edge "
                "types yet): use a machine with more memory or fewer trials at once "
                "(searcher.max_concurrent)"
                if is_typed(task.train[0])
                else f"train on sampled mini-batches: set {role}.train.num_neighbors (one "
                f"fan-out per layer, e.g. [15, 10]) and {role}.train.batch_size (seed nodes per "
                "step, e.g. 1024)"
            )
            raise UserInputError(
                f"{spec.source}: {role}.train: full-batch training on {edges:,} edges needs "
                f"about {need / 2**30:.1f} GiB ({per_edge} bytes per edge{runs}), but "
                f"{free / 2**30:.1f} GiB is available; {remedy}"
            )


def _keyed_checkpoint(path: str, model: ModelSpec, task: Task) -> nn.Module:
    try:
        return load_teacher_weights(
            path, model.build_kwargs() | {"arch": model.arch}, **io_channels(task)
        )
    except UserInputError as err:
        raise UserInputError(str(err), key=err.key or "checkpoint") from None
