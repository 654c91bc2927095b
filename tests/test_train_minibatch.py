"""Sampled mini-batch training: every method's term on a batch against the full-graph formula,
the teacher read and never run, layer-wise evaluation, multi-graph tasks."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from study.data.base import NodeTask
from study.distill.at import at_loss
from study.distill.kd import kd_loss
from study.distill.lsp import lsp_loss
from study.distill.methods import build_method
from study.models import build_model
from study.models.base import ModelOutput
from study.sampling import NeighborSampler
from study.train import (
    distill_student,
    evaluate,
    sampled_step,
    teacher_outputs,
    train_teacher,
    training_graph,
)
from study.train_config import DistillConfig, TrainConfig

N, F, C = 240, 10, 3


def node_task(num_graphs: int = 1) -> NodeTask:
    """Random graphs whose labels follow the features and the edges; half the nodes labelled
    for training."""
    graphs = []
    for g in range(num_graphs):
        gen = torch.Generator().manual_seed(g)
        y = torch.randint(0, C, (N,), generator=gen)
        x = torch.randn(N, F, generator=gen) + torch.nn.functional.one_hot(y, F).float()
        edge_index = torch.randint(0, N, (2, 18 * N), generator=gen)
        edge_index = edge_index[:, y[edge_index[0]] == y[edge_index[1]]]  # homophilous, ~6N
        mask = torch.zeros(N, dtype=torch.bool)
        mask[: N // 2] = True
        graphs.append(Data(x=x, edge_index=edge_index, y=y, mask=mask))
    return NodeTask("rand", F, C, False, graphs, graphs, graphs)


def random_outputs(n: int, widths: list[int], seed: int = 1) -> ModelOutput:
    gen = torch.Generator().manual_seed(seed)
    return ModelOutput(
        logits=torch.randn(n, C, generator=gen),
        hidden=[torch.randn(n, w, generator=gen) for w in widths],
    )


def batch(task: NodeTask, fanouts: list[int], seeds: Tensor):
    graph = training_graph(task)
    sampler = NeighborSampler(graph.edge_index, graph.num_nodes, fanouts, use_pyg=False)
    return graph, sampler.sample(seeds, torch.Generator().manual_seed(0))


def mlp() -> nn.Module:
    torch.manual_seed(0)  # an MLP's rows do not depend on the graph: full and batch rows agree
    return build_model("mlp", in_channels=F, out_channels=C, width=6, depth=2).eval()


@pytest.mark.parametrize("kernel", ["rbf", "linear"])
def test_sampled_lsp_is_full_lsp_restricted_to_the_sampled_edges_into_seeds(kernel: str) -> None:
    task = node_task()
    graph, sub = batch(task, [4, 3], torch.tensor([3, 50, 77, 120, 200]))
    student, teacher = mlp(), random_outputs(N, [8])
    method = build_method(DistillConfig("lsp", {"kernel": kernel}))
    _, term = sampled_step(student, graph, sub, teacher, method, None, False, torch.device("cpu"))
    # Independently: both models on the WHOLE graph, LSP over the sampled edges whose target is
    # a seed, named by their ids in the full edge_index.
    edges = graph.edge_index[:, sub.e_id[sub.seed_edges()]]
    assert edges.shape[1] > 0 and set(edges[1].tolist()) <= {3, 50, 77, 120, 200}
    z_s = student(graph.x, graph.edge_index).hidden[0]
    want = lsp_loss(z_s, teacher.hidden[0], edges, kernel=kernel)
    assert term is not None
    torch.testing.assert_close(term, want)


def test_sampled_kd_and_at_cover_the_seed_nodes() -> None:
    task = node_task()
    seeds = torch.tensor([7, 8, 9, 150, 151])
    graph, sub = batch(task, [3, 3], seeds)
    student, teacher = mlp(), random_outputs(N, [8])
    full = student(graph.x, graph.edge_index)
    dev = torch.device("cpu")
    _, kd = sampled_step(
        student, graph, sub, teacher, build_method(DistillConfig("kd")), None, False, dev
    )
    params = {"temperature": 4.0}
    want = kd_loss(full.logits[seeds], teacher.logits[seeds], **params)  # type: ignore[index]
    assert kd is not None
    torch.testing.assert_close(kd, want)
    _, at = sampled_step(
        student, graph, sub, teacher, build_method(DistillConfig("at")), None, False, dev
    )
    assert at is not None
    torch.testing.assert_close(at, at_loss(full.hidden[0][seeds], teacher.hidden[0][seeds], p=1))


def test_hard_loss_counts_labelled_seeds_only() -> None:
    task = node_task()
    graph, sub = batch(task, [2, 2], torch.tensor([200, 210, 5]))  # only node 5 is labelled
    student = mlp()
    hard, term = sampled_step(
        student,
        graph,
        sub,
        None,
        build_method(DistillConfig("none")),
        None,
        False,
        torch.device("cpu"),
    )
    logits = student(graph.x, graph.edge_index).logits
    assert term is None and logits is not None
    want = torch.nn.functional.cross_entropy(logits[[5]], graph.y[[5]])
    torch.testing.assert_close(hard, want)
    graph, sub = batch(task, [2, 2], torch.tensor([200, 210]))
    hard, _ = sampled_step(
        student,
        graph,
        sub,
        None,
        build_method(DistillConfig("none")),
        None,
        False,
        torch.device("cpu"),
    )
    assert hard.item() == 0.0 and hard.requires_grad  # no label: the term alone would teach


class NeverRun(nn.Module):
    """A teacher whose forward must not be called (its outputs are given)."""

    def forward(self, *args: object) -> ModelOutput:
        raise AssertionError("a sampled student step ran the teacher")


@pytest.mark.parametrize("method", ["kd", "fitnet", "at", "lsp"])
def test_student_steps_read_the_teacher_outputs_and_never_run_it(method: str) -> None:
    task = node_task()
    torch.manual_seed(0)
    teacher = build_model("sage", in_channels=F, out_channels=C, width=8, depth=2)
    outs = teacher_outputs(teacher, task, chunk_nodes=50)
    torch.manual_seed(0)
    student = build_model("gcn", in_channels=F, out_channels=C, width=6, depth=2)
    cfg = TrainConfig(epochs=2, lr=0.01, batch_size=64, num_neighbors=(4, 2))
    result = distill_student(
        student, NeverRun(), task, cfg, DistillConfig(method), teacher_outputs=outs
    )
    assert len(result.history) == 2
    assert all(h["distill_loss"] > 0 for h in result.history)
    assert 0.0 <= result.test_score <= 1.0


def test_minibatch_teacher_learns_and_evaluation_is_layerwise() -> None:
    task = node_task(num_graphs=2)  # two training graphs: sampled from their disjoint union
    assert training_graph(task).num_nodes == 2 * N
    torch.manual_seed(0)
    model = build_model("gat", in_channels=F, out_channels=C, width=4, depth=2, heads=2)
    cfg = TrainConfig(epochs=8, lr=0.02, batch_size=32, num_neighbors=(5, 5))
    result = train_teacher(model, task, cfg)
    assert result.val_score > 0.8  # labels follow the features: far above chance (1/3)
    full = evaluate(result.model, task, "test")
    chunked = evaluate(result.model, task, "test", chunk_nodes=17)
    assert chunked["score"] == pytest.approx(full["score"])


def test_minibatch_runs_are_reproducible_under_a_seed() -> None:
    task = node_task()
    cfg = TrainConfig(epochs=2, lr=0.01, batch_size=50, num_neighbors=(3, 3))
    losses = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("sage", in_channels=F, out_channels=C, width=8, depth=2)
        losses.append([h["train_loss"] for h in train_teacher(model, task, cfg).history])
    assert losses[0] == losses[1]


def test_one_csr_serves_sampling_teacher_outputs_and_every_evaluation(monkeypatch) -> None:
    from study.sampling import CSR

    built = []
    original = CSR.from_edge_index.__func__  # type: ignore[attr-defined]

    def counting(cls: type[CSR], edge_index: Tensor, num_nodes: int) -> CSR:
        built.append(num_nodes)
        return original(cls, edge_index, num_nodes)

    monkeypatch.setattr(CSR, "from_edge_index", classmethod(counting))
    task = node_task()
    torch.manual_seed(0)
    teacher = build_model("sage", in_channels=F, out_channels=C, width=8, depth=2)
    student = build_model("gcn", in_channels=F, out_channels=C, width=6, depth=2)
    cfg = TrainConfig(epochs=2, lr=0.01, batch_size=64, num_neighbors=(4, 3))
    result = distill_student(student, teacher, task, cfg, DistillConfig("lsp", {"lambda": 1.0}))
    assert built == [N]  # the sampler's; teacher outputs, 2 validations and the test reuse it
    full = evaluate(result.model, task, "test")  # full batch: no CSR at all
    assert built == [N]
    assert result.test_score == pytest.approx(full["score"])


def test_sampled_training_bounds_freed_memory_and_full_batch_does_not(
    bounded_allocator_calls: list[str],
) -> None:
    task = node_task()
    for sampled in (False, True):
        bounded_allocator_calls.clear()
        torch.manual_seed(0)
        model = build_model("gcn", in_channels=F, out_channels=C, width=6, depth=2)
        neighbours = (3, 2) if sampled else None
        cfg = TrainConfig(epochs=1, lr=0.01, batch_size=64, num_neighbors=neighbours)
        train_teacher(model, task, cfg)
        assert bounded_allocator_calls == (["bound"] if sampled else []), sampled
