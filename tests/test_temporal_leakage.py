"""No edge after the training cut reaches training: recorded mechanically (every edge_index the
teacher, the student and the distillation terms are given, full batch and sampled mini-batches)
and shown behaviourally (future edges that make the task trivial do not help the training fit),
and the generator's leak is measurable (the full graph inflates validation scores)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.utils import coalesce

import study.train as train_module
from study.data.base import NodeTask
from study.data.registry import load_task
from study.data.temporal import snapshot, synthetic_temporal, temporal_task
from study.distill import methods as methods_module
from study.models.registry import build_model
from study.train import distill_student, evaluate, train_teacher
from study.train_config import DistillConfig, TrainConfig

T1, T2 = 0.5, 0.75
#: The future pattern's edges, after every cut: only the test view holds them.
FUTURE = 0.9


def hub_graph(num_nodes: int = 240, classes: int = 4, seed: int = 0) -> Data:
    """Noise features, random past edges, and future edges (time 0.9) from every node to its
    class's hub, a node whose features name the class: with them the task is trivial, without
    them there is nothing to learn but memorised noise."""
    g = torch.Generator().manual_seed(seed)
    n = num_nodes
    y = torch.arange(n) % classes
    node_time = torch.rand(n, generator=g, dtype=torch.float64)
    x = torch.zeros(n + classes, 8 + classes)
    x[:n, :8] = torch.randn(n, 8, generator=g)
    x[n:, 8:] = 10.0 * torch.eye(classes)  # hub c: a feature only it has, large
    src = torch.randint(0, n, (3 * n,), generator=g)
    dst = torch.randint(0, n, (3 * n,), generator=g)
    past_time = torch.maximum(node_time[src], node_time[dst])
    hub_src, hub_dst = torch.arange(n), n + y
    edge_index = torch.cat(
        [torch.stack([src, dst]), torch.stack([dst, src]), torch.stack([hub_src, hub_dst])]
        + [torch.stack([hub_dst, hub_src])],
        dim=1,
    )
    future = torch.full((n,), FUTURE, dtype=torch.float64)
    edge_time = torch.cat([past_time, past_time, future, future])
    # One time per pair, its first: a repeated pair is known from then on.
    edge_index, edge_time = coalesce(edge_index, edge_time, n + classes, reduce="min")
    return Data(
        x=x,
        edge_index=edge_index,
        y=torch.cat([y, torch.arange(classes)]),
        edge_time=edge_time,
        node_time=torch.cat([node_time, torch.full((classes,), float("nan"), dtype=torch.float64)]),
    )


def leaky(task: NodeTask) -> NodeTask:
    """``task`` with every view on the full graph: what a static split of a temporal graph does."""
    full = task.test[0]
    views = [
        snapshot(full, None, getattr(task, split)[0].mask, i)
        for i, split in enumerate(("train", "val", "test"))
    ]
    return NodeTask(
        task.name, task.num_features, task.num_classes, False, [views[0]], [views[1]], [views[2]]
    )


class EdgeLog:
    """Global ``(source, target)`` pairs of every edge handed to training, with times."""

    def __init__(self, data: Data) -> None:
        n = data.num_nodes
        self.n = n
        keys = data.edge_index[0] * n + data.edge_index[1]
        self.time_of = dict(zip(keys.tolist(), data.edge_time.tolist(), strict=True))
        self.seen: list[Tensor] = []
        #: Set during a sampled step: edges then come in the subgraph's local ids.
        self.n_id: Tensor | None = None

    def add(self, edge_index: Tensor) -> None:
        ei = edge_index.detach().cpu()
        self.seen.append(ei if self.n_id is None else self.n_id.cpu()[ei])

    def max_time(self) -> float:
        """The latest time of an edge seen (self-loops, added by the layers, have none)."""
        assert self.seen, "nothing was recorded: the hooks are not wired"
        times = [-1.0]
        for ei in self.seen:
            for s, d in zip(ei[0].tolist(), ei[1].tolist(), strict=True):
                if s != d:
                    times.append(self.time_of[s * self.n + d])  # KeyError: an invented edge
        return max(times)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Patch the places edges enter training: model forwards (hooks, added by the test), every
    distillation term, sampled steps and layer-wise teacher inference."""
    state: dict[str, Any] = {"log": None, "teacher": None}

    for cls in [m for m in vars(methods_module).values() if isinstance(m, type)]:
        if not issubclass(cls, methods_module.DistillMethod):
            continue
        if "term" in vars(cls):
            original = vars(cls)["term"]

            def term(self: Any, *args: Any, _orig: Any = original, **kwargs: Any) -> Tensor:
                if kwargs.get("edge_index") is not None:
                    state["log"].add(kwargs["edge_index"])
                return _orig(self, *args, **kwargs)

            monkeypatch.setattr(cls, "term", term)
        if "precompute" in vars(cls):  # LSP's teacher structures, from the cached graph
            original_pre = vars(cls)["precompute"]

            def precompute(self: Any, teacher: Any, graph: Data, _orig: Any = original_pre) -> Any:
                state["log"].add(graph.edge_index)
                return _orig(self, teacher, graph)

            monkeypatch.setattr(cls, "precompute", precompute)

    original_step = train_module.sampled_step

    def sampled_step(model: nn.Module, graph: Data, sub: Any, *args: Any) -> Any:
        log = state["log"]
        log.n_id = sub.n_id  # the model's and the term's edges are local to this subgraph
        try:
            log.add(sub.edge_index)
            return original_step(model, graph, sub, *args)
        finally:
            log.n_id = None

    monkeypatch.setattr(train_module, "sampled_step", sampled_step)

    original_layerwise = train_module.layerwise_forward

    def layerwise_forward(model: nn.Module, x: Tensor, edge_index: Tensor, **kw: Any) -> Any:
        if model is state["teacher"]:  # the frozen teacher's outputs for sampled distillation
            state["log"].add(edge_index)
        return original_layerwise(model, x, edge_index, **kw)

    monkeypatch.setattr(train_module, "layerwise_forward", layerwise_forward)
    yield state


def hook_training_forwards(model: nn.Module, log: EdgeLog, always: bool = False) -> None:
    """Record the edges of ``model``'s forwards in training mode (``always``: every forward, for
    a frozen teacher, whose every forward in distillation feeds the training)."""

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        if (always or module.training) and len(args) > 1:
            log.add(args[1])

    model.register_forward_pre_hook(hook)


def _task(data: Data) -> NodeTask:
    return temporal_task(data, T1, T2, name="hubs")


@pytest.mark.parametrize("minibatch", [False, True], ids=["full-batch", "sampled"])
@pytest.mark.parametrize("method", ["kd", "lsp", "fitnet"])
def test_no_edge_after_t1_reaches_a_training_forward_or_term(
    recorded: dict[str, Any], method: str, minibatch: bool
) -> None:
    data = hub_graph(num_nodes=120)
    task = _task(data)
    log = EdgeLog(data)
    recorded["log"] = log
    extra = {"batch_size": 32, "num_neighbors": (4, 3)} if minibatch else {}
    cfg = TrainConfig(epochs=3, lr=0.01, **extra)
    torch.manual_seed(0)
    teacher = build_model("gcn", in_channels=task.num_features, out_channels=task.num_classes)
    hook_training_forwards(teacher, log)
    result = train_teacher(teacher, task, cfg)
    teacher_edges = len(log.seen)
    recorded["teacher"] = result.model
    hook_training_forwards(result.model, log, always=True)
    torch.manual_seed(0)
    student = build_model("gcn", in_channels=task.num_features, out_channels=task.num_classes)
    hook_training_forwards(student, log)
    distill_student(student, result.model, task, cfg, DistillConfig(method))
    assert teacher_edges > 0 and len(log.seen) > teacher_edges
    assert log.max_time() <= T1
    # The recorder can see a leak: the full graph's later edges would be caught.
    probe = EdgeLog(data)
    probe.add(data.edge_index)
    assert probe.max_time() > T2


def test_the_recorder_catches_a_leaky_task(recorded: dict[str, Any]) -> None:
    """The same recording on a static split of the graph (every view the full graph) sees the
    future edges: the assertion above is not vacuous."""
    data = hub_graph(num_nodes=120)
    task = leaky(_task(data))
    recorded["log"] = log = EdgeLog(data)
    torch.manual_seed(0)
    teacher = build_model("gcn", in_channels=task.num_features, out_channels=task.num_classes)
    hook_training_forwards(teacher, log)
    train_teacher(teacher, task, TrainConfig(epochs=1, lr=0.01))
    assert log.max_time() > T2


def test_future_edges_that_make_the_task_trivial_do_not_help_training() -> None:
    """Behaviour: with hub edges after t1, a teacher and KD / LSP students fit the training
    nodes no better than noise allows; the same runs on the leaky task fit them (nearly)
    perfectly, so the pattern is there to exploit."""
    data = hub_graph()
    cfg = TrainConfig(epochs=40, lr=0.01, seed=0)
    fits: dict[str, dict[str, float]] = {}
    # GraphSAGE: its own weights for the neighbours, so a hub edge, where seen, decides.
    sizes = {"in_channels": data.num_features, "out_channels": 4, "dropout": 0.0}
    for name, task in (("snapshot", _task(data)), ("leaky", leaky(_task(data)))):
        torch.manual_seed(0)
        teacher = build_model("sage", **sizes)
        result = train_teacher(teacher, task, cfg)
        fits[name] = {"teacher": evaluate(result.model, task, "train")["score"]}
        for method in ("kd", "lsp"):
            torch.manual_seed(0)
            student = build_model("sage", **sizes)
            run = distill_student(student, result.model, task, cfg, DistillConfig(method))
            fits[name][method] = evaluate(run.model, task, "train")["score"]
    for model in ("teacher", "kd", "lsp"):
        assert fits["leaky"][model] > 0.9, fits
        assert fits["snapshot"][model] < 0.7, fits  # 4 classes: chance 0.25, the rest memorised
        assert fits["leaky"][model] - fits["snapshot"][model] > 0.3, fits


def test_synthetic_temporal_leak_inflates_validation_scores() -> None:
    """The generator's leak is measurable: a GCN trained and validated on the full graph
    (a static split) scores far higher on validation than on the chronological snapshots."""
    task = load_task("synthetic_temporal", num_nodes=400, seed=0)
    scores = {}
    for name, t in (("snapshot", task), ("leaky", leaky(task))):
        torch.manual_seed(0)
        model = build_model("gcn", in_channels=t.num_features, out_channels=t.num_classes)
        scores[name] = train_teacher(model, t, TrainConfig(epochs=60, lr=0.01)).val_score
    assert scores["leaky"] > scores["snapshot"] + 0.08, scores


def test_no_validation_node_sees_its_revealing_edges_at_the_default_split() -> None:
    """With the default lag (0.25) above the validation window (0.2), no validation node's own
    revealing edges (at its label time + lag) are in its view; the full graph has many."""
    data = synthetic_temporal(num_nodes=400, seed=1)
    task = load_task("synthetic_temporal", num_nodes=400, seed=1)
    val, full = task.val[0], task.test[0]

    def revealing_of_val_nodes(view: Data) -> int:
        target = view.edge_index[1]
        own = view.edge_time >= data.node_time[target] + 0.25 - 1e-9
        return int((own & val.mask[target]).sum())

    assert revealing_of_val_nodes(val) == 0
    assert revealing_of_val_nodes(full) > 50


def test_a_studys_shared_teacher_outputs_come_from_the_train_snapshot(tmp_path: Any) -> None:
    """What sampled trials of a study read (computed once per machine) is the teacher on the
    train snapshot, not on a later view."""
    from study.teacher_outputs import shared_teacher_outputs

    data = hub_graph(num_nodes=80)
    task = _task(data)
    torch.manual_seed(0)
    teacher = build_model("gcn", in_channels=task.num_features, out_channels=task.num_classes)
    teacher.eval()
    out = shared_teacher_outputs(teacher, task, "k", cache_dir=tmp_path)
    with torch.no_grad():
        on_train = teacher(data.x, task.train[0].edge_index).logits
        on_full = teacher(data.x, data.edge_index).logits
    assert torch.allclose(out.logits, on_train, atol=1e-5)
    assert not torch.allclose(out.logits, on_full, atol=1e-3)
