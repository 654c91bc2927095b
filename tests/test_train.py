"""The training loops: determinism, every method end to end, loss weights, the teacher cache,
resuming from a snapshot, and the metrics of ``evaluate`` against hand computations."""

from __future__ import annotations

import copy
import io
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data

from study.data import load_task
from study.data.base import NodeTask, PointCloudSet, PointCloudTask
from study.data.synthetic import synthetic_sbm, synthetic_shapes
from study.distill import build_method, lsp_loss
from study.models import build_model
from study.models.base import ModelOutput
from study.train import (
    DIVERGENCE_CAP,
    DIVERGENCE_GROWTH,
    TrainingDiverged,
    check_divergence,
    distill_student,
    distillation_term,
    evaluate,
    fit,
    train_teacher,
)
from study.train_config import DistillConfig, TrainConfig

METHODS = ("none", "kd", "fitnet", "at", "lsp")


pytestmark = pytest.mark.usefixtures("one_thread")  # two cores shared with other runs


@pytest.fixture(scope="module")
def sbm() -> NodeTask:
    return synthetic_sbm(
        num_nodes=60, num_classes=3, num_features=8, train_per_class=5, val=15, test=20, seed=1
    )


def _gat(task: NodeTask, seed: int, width: int = 8, heads: int = 2, dropout: float = 0.0):
    torch.manual_seed(seed)
    return build_model(
        "gat",
        in_channels=task.num_features,
        out_channels=task.num_classes,
        width=width,
        depth=2,
        heads=heads,
        dropout=dropout,
    )


@pytest.fixture(scope="module")
def sbm_teacher(sbm: NodeTask) -> nn.Module:
    teacher = _gat(sbm, seed=100, width=8, heads=2)
    train_teacher(teacher, sbm, TrainConfig(epochs=3, seed=100))
    return teacher


def _same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class CountingTeacher(nn.Module):
    """Wraps a model and counts its forward calls."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, *args: Tensor) -> ModelOutput:
        self.calls += 1
        return self.inner(*args)


# ---------------------------------------------------------------- determinism


def test_same_seed_same_run_other_seed_differs(sbm: NodeTask) -> None:
    def run(seed: int):
        model = _gat(sbm, seed=0, dropout=0.3)  # same initial weights every time
        result = fit(model, sbm, TrainConfig(epochs=3, seed=seed))
        return result.history, copy.deepcopy(result.model.state_dict())

    h1, s1 = run(5)
    h2, s2 = run(5)
    h3, s3 = run(6)
    assert h1 == h2
    assert _same_state(s1, s2)
    # Only dropout draws from the seed here (one full-batch graph): it must change the run.
    assert h1 != h3
    assert not _same_state(s1, s3)


def test_same_seed_same_run_with_shuffled_graphs(tiny_ppi_root: Path) -> None:
    task = load_task("ppi", root=tiny_ppi_root)

    def run(seed: int):
        model = _gat(task, seed=0, width=4, heads=1)
        cfg = TrainConfig(epochs=2, seed=seed, batch_size=1)
        return fit(model, task, cfg).history

    # Dropout 0: the seed acts through the order of the shuffled training graphs only
    # (seeds 3 and 4 happen to draw the same orders of 3 graphs; 3 and 0 do not).
    h1, h2, h3 = run(3), run(3), run(0)
    assert h1 == h2
    assert [r["train_loss"] for r in h1] != [r["train_loss"] for r in h3]


# ---------------------------------------------------------------- every method


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_a_gat_student(
    sbm: NodeTask, sbm_teacher: nn.Module, method: str
) -> None:
    student = _gat(sbm, seed=1, width=4, heads=1)
    before = copy.deepcopy(student.state_dict())
    result = distill_student(
        student, sbm_teacher, sbm, TrainConfig(epochs=3, seed=0), DistillConfig(method=method)
    )
    assert result.epochs_run == len(result.history) == 3
    for record in result.history:
        assert np.isfinite(record["train_loss"])
        assert np.isfinite(record["distill_loss"])
        if method == "none":
            assert record["distill_loss"] == 0.0
        else:
            assert record["distill_loss"] > 0.0
    assert 0.0 <= result.val_score <= 1.0
    assert 0.0 <= result.test_score <= 1.0
    assert result.test_metrics["score"] == result.test_score
    assert not _same_state(before, result.model.state_dict())  # it did learn something


def test_distillation_without_teacher_is_refused(sbm: NodeTask) -> None:
    with pytest.raises(ValueError, match="needs a teacher"):
        fit(_gat(sbm, 0), sbm, TrainConfig(epochs=1), distill=DistillConfig(method="lsp"))


def test_lsp_until_epoch_stops_the_term(sbm: NodeTask, sbm_teacher: nn.Module) -> None:
    distill = DistillConfig(method="lsp", params={"lsp_until_epoch": 2, "lambda": 10.0})
    result = distill_student(
        _gat(sbm, 1, width=4, heads=1), sbm_teacher, sbm, TrainConfig(epochs=4), distill
    )
    d = [r["distill_loss"] for r in result.history]
    assert d[0] > 0 and d[1] > 0
    assert d[2] == 0.0 and d[3] == 0.0


# ---------------------------------------------------------------- the teacher cache


def test_teacher_runs_once_per_fixed_graph(sbm: NodeTask, sbm_teacher: nn.Module) -> None:
    counting = CountingTeacher(copy.deepcopy(sbm_teacher))
    distill_student(
        _gat(sbm, 1, width=4, heads=1),
        counting,
        sbm,
        TrainConfig(epochs=5),
        DistillConfig(method="lsp"),
    )
    assert counting.calls == 1


def test_teacher_runs_once_per_training_graph_on_ppi(tiny_ppi_root: Path) -> None:
    task = load_task("ppi", root=tiny_ppi_root)
    teacher = CountingTeacher(_gat(task, seed=7, width=8, heads=2))
    result = distill_student(
        _gat(task, seed=1, width=4, heads=1),
        teacher,
        task,
        TrainConfig(epochs=4, batch_size=2),
        DistillConfig(method="lsp"),
    )
    assert len(task.train) == 3
    assert teacher.calls == len(task.train)
    assert all(r["distill_loss"] > 0 for r in result.history)


def test_graphs_without_graph_id_are_not_confused(sbm: NodeTask) -> None:
    """A hand-built task whose graphs carry no ``graph_id``: each graph still gets its own teacher
    outputs (two graphs of equal size, so a mix-up would not even fail on shapes)."""
    g = torch.Generator().manual_seed(0)
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 0]])
    graphs = [
        Data(
            x=torch.randn(6, 4, generator=g),
            edge_index=edge_index,
            y=torch.tensor([0, 1, 0, 1, 0, 1]),
            mask=torch.ones(6, dtype=torch.bool),
        )
        for _ in range(2)
    ]
    task = NodeTask("two", 4, 2, False, train=graphs, val=graphs[:1], test=graphs[:1])
    teacher = CountingTeacher(_gat(task, seed=3, width=4, heads=1))
    distill_student(
        _gat(task, seed=1, width=2, heads=1),
        teacher,
        task,
        TrainConfig(epochs=2, batch_size=1),
        DistillConfig(method="kd"),
    )
    assert teacher.calls == 2


def test_cached_teacher_outputs_match_a_batch_of_graphs(tiny_ppi_root: Path) -> None:
    """With batches of several graphs the cached per-graph outputs must line up with the batch: the
    loss the loop records equals LSP computed from scratch on the same collated batch."""
    from torch_geometric.data import Batch

    task = load_task("ppi", root=tiny_ppi_root)
    teacher = _gat(task, seed=7, width=8, heads=2).eval()
    student = _gat(task, seed=1, width=4, heads=1)
    initial = copy.deepcopy(student)
    records: list[dict[str, float]] = []
    # One epoch, one batch of all 3 graphs: the recorded term is at the initial weights.
    distill_student(
        student,
        teacher,
        task,
        TrainConfig(epochs=1, batch_size=3),
        DistillConfig(method="lsp"),
        on_epoch=lambda e, r, s: records.append(r),
    )
    batch = Batch.from_data_list(task.train)  # any order gives the same mean over nodes
    with torch.no_grad():
        z_s = initial.train()(batch.x, batch.edge_index).hidden[-1]
        z_t = teacher(batch.x, batch.edge_index).hidden[-1]
    expected = lsp_loss(z_s, z_t, batch.edge_index, kernel="rbf")
    assert records[0]["distill_loss"] == pytest.approx(expected.item(), rel=1e-5)


# ---------------------------------------------------------------- loss weights


def _hard_loss_at_init(model: nn.Module, task: NodeTask) -> float:
    g = task.train[0]
    with torch.no_grad():
        logits = copy.deepcopy(model).train()(g.x, g.edge_index).logits
    return F.cross_entropy(logits[g.mask], g.y[g.mask]).item()


def test_kd_alpha_one_leaves_only_the_soft_loss(sbm: NodeTask, sbm_teacher: nn.Module) -> None:
    distill = DistillConfig(method="kd", params={"alpha": 1.0, "temperature": 2.0})
    result = distill_student(
        _gat(sbm, 1, width=4, heads=1), sbm_teacher, sbm, TrainConfig(epochs=3), distill
    )
    for r in result.history:
        assert r["train_loss"] == pytest.approx(r["distill_loss"], rel=1e-6, abs=1e-7)


@pytest.mark.parametrize(
    ("distill", "w_hard", "w_soft"),
    [
        (DistillConfig(method="kd", params={"alpha": 0.3}), 0.7, 0.3),
        (DistillConfig(method="lsp", params={"lambda": 3.0}), 1.0, 3.0),
        (DistillConfig(method="at", params={"lambda": 5.0}), 1.0, 5.0),
    ],
)
def test_loss_is_the_weighted_sum(
    sbm: NodeTask, sbm_teacher: nn.Module, distill: DistillConfig, w_hard: float, w_soft: float
) -> None:
    student = _gat(sbm, 1, width=4, heads=1)
    hard0 = _hard_loss_at_init(student, sbm)  # dropout 0: the loop's first forward is this one
    result = distill_student(student, sbm_teacher, sbm, TrainConfig(epochs=1), distill)
    r = result.history[0]
    assert r["train_loss"] == pytest.approx(w_hard * hard0 + w_soft * r["distill_loss"], rel=1e-5)


def test_lsp_with_lambda_zero_equals_the_student_alone(
    sbm: NodeTask, sbm_teacher: nn.Module
) -> None:
    cfg = TrainConfig(epochs=3, seed=2)
    alone = fit(_gat(sbm, 1, width=4, heads=1, dropout=0.2), sbm, cfg)
    zero = distill_student(
        _gat(sbm, 1, width=4, heads=1, dropout=0.2),
        sbm_teacher,
        sbm,
        cfg,
        DistillConfig(method="lsp", params={"lambda": 0.0}),
    )
    assert all(r["distill_loss"] > 0 for r in zero.history)  # computed, but weighted 0
    assert _same_state(alone.model.state_dict(), zero.model.state_dict())
    assert [r["train_loss"] for r in alone.history] == [r["train_loss"] for r in zero.history]


# ---------------------------------------------------------------- divergence


def test_divergence_bound_nan_growth_and_cap() -> None:
    check_divergence(0, 2.5, None)  # a first epoch under the cap
    check_divergence(7, 2.5 * DIVERGENCE_GROWTH, 2.5)  # at the bound: still training
    check_divergence(3, 0.5 * DIVERGENCE_GROWTH, 0.01)  # a tiny first loss: bound 1e6, not 1e4
    for epoch, loss, first in [
        (4, math.nan, 1.0),
        (4, math.inf, 1.0),
        (0, math.nan, None),
        (5, 2.5 * DIVERGENCE_GROWTH * 1.01, 2.5),  # grew past a million times the first
        (0, DIVERGENCE_CAP * 3, None),  # huge from the start (lambda 1e30)
        (9, DIVERGENCE_CAP * 3, DIVERGENCE_CAP),  # the cap holds whatever the first was
    ]:
        with pytest.raises(TrainingDiverged) as info:
            check_divergence(epoch, loss, first)
        err = info.value
        assert err.epoch == epoch and (err.loss == loss or math.isnan(err.loss))
        assert f"epoch {epoch}" in str(err) and "\n" not in str(err)
    restored = pickle.loads(pickle.dumps(err))  # Ray ships exceptions between processes
    assert str(restored) == str(err) and restored.epoch == err.epoch


@pytest.mark.parametrize(
    ("lr", "distill", "reason"),
    [
        (1e6, DistillConfig(), "exceeds the bound"),  # 1.4 -> ~1e13: past a million times
        (0.01, DistillConfig(method="lsp", params={"lambda": 1e30}), r"exceeds the bound 1e\+12"),
    ],
)
def test_fit_stops_a_diverging_run(
    sbm: NodeTask, sbm_teacher: nn.Module, lr: float, distill: DistillConfig, reason: str
) -> None:
    seen: list[int] = []
    with pytest.raises(TrainingDiverged, match=reason) as info:
        distill_student(
            _gat(sbm, 0, width=4, heads=1),
            sbm_teacher,
            sbm,
            TrainConfig(epochs=6, lr=lr, seed=0),
            distill,
            on_epoch=lambda epoch, record, snapshot: seen.append(epoch),
        )
    assert seen == list(range(info.value.epoch))  # the diverged epoch is not passed on


def test_nan_loss_stops_training(sbm: NodeTask) -> None:
    model = _gat(sbm, 0, width=4, heads=1)
    with torch.no_grad():
        next(model.parameters()).fill_(math.nan)
    with pytest.raises(TrainingDiverged, match="at epoch 0: train_loss nan is not finite"):
        fit(model, sbm, TrainConfig(epochs=3, seed=0))


# ---------------------------------------------------------------- resume


@pytest.mark.parametrize("method", ["none", "fitnet", "lsp"])
def test_resume_from_a_snapshot_matches_an_uninterrupted_run(
    sbm: NodeTask, sbm_teacher: nn.Module, method: str
) -> None:
    cfg = TrainConfig(epochs=4, seed=3)
    distill = DistillConfig(method=method)
    teacher = None if method == "none" else sbm_teacher
    snaps: dict[int, dict] = {}

    def on_epoch(epoch: int, record: dict[str, float], snapshot) -> None:
        if epoch == 1:
            snaps[epoch] = snapshot()

    # Dropout on: the resumed run must also restore the torch RNG to draw the same masks.
    full = fit(
        _gat(sbm, 1, width=4, heads=1, dropout=0.4),
        sbm,
        cfg,
        teacher=teacher,
        distill=distill,
        on_epoch=on_epoch,
    )
    # The snapshot goes through disk the way a Ray Tune checkpoint does (weights_only load).
    buf = io.BytesIO()
    torch.save(snaps[1], buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    torch.manual_seed(12345)  # a process with other RNG history, other initial weights
    fresh = _gat(sbm, 99, width=4, heads=1, dropout=0.4)
    resumed = fit(fresh, sbm, cfg, teacher=teacher, distill=distill, resume=state)

    assert resumed.epochs_run == 4
    assert resumed.history == full.history
    assert resumed.best_epoch == full.best_epoch
    assert _same_state(resumed.model.state_dict(), full.model.state_dict())


def test_resume_restores_the_shuffling_generator(tiny_ppi_root: Path) -> None:
    task = load_task("ppi", root=tiny_ppi_root)
    cfg = TrainConfig(epochs=3, seed=1, batch_size=1)
    snaps = []
    full = fit(
        _gat(task, 0, width=4, heads=1),
        task,
        cfg,
        on_epoch=lambda e, r, s: snaps.append(s()) if e == 0 else None,
    )
    resumed = fit(_gat(task, 50, width=4, heads=1), task, cfg, resume=snaps[0])
    assert resumed.history == full.history
    assert _same_state(resumed.model.state_dict(), full.model.state_dict())


# ---------------------------------------------------------------- evaluate


class FixedLogits(nn.Module):
    """Returns a fixed logit row per node (graphs: row ``x[:, 0]``) or per cloud (row
    ``points[:, 0, 0]``): a model whose predictions the test chooses."""

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, x: Tensor, edge_index: Tensor | None = None) -> ModelOutput:
        rows = x[:, 0].long() if x.dim() == 2 else x[:, 0, 0].long()
        logits = self.table[rows]
        return ModelOutput(logits=logits, hidden=[logits])


def _graph(ids: list[int], y: Tensor, mask: list[bool]) -> Data:
    n = len(ids)
    x = torch.tensor(ids, dtype=torch.float).view(-1, 1)
    edge_index = torch.tensor([list(range(n)), list(range(1, n)) + [0]])
    return Data(x=x, edge_index=edge_index, y=y, mask=torch.tensor(mask))


def test_evaluate_micro_f1_against_manual_counts() -> None:
    rng = np.random.default_rng(0)
    n1, n2, c = 7, 5, 4
    table = torch.tensor(rng.normal(size=(n1 + n2, c)), dtype=torch.float)
    labels = rng.integers(0, 2, size=(n1 + n2, c))
    mask1 = [True, False, True, True, True, False, True]
    mask2 = [True, True, False, True, True]
    g1 = _graph(list(range(n1)), torch.tensor(labels[:n1], dtype=torch.float), mask1)
    g2 = _graph(list(range(n1, n1 + n2)), torch.tensor(labels[n1:], dtype=torch.float), mask2)
    task = NodeTask("toy", 1, c, True, train=[g1], val=[g1], test=[g1, g2], metric="micro_f1")

    tp = fp = fn = 0
    for node, scored in enumerate(mask1 + mask2):
        if not scored:
            continue
        for label in range(c):
            pred = table[node, label].item() > 0
            true = labels[node, label] == 1
            tp += pred and true
            fp += pred and not true
            fn += (not pred) and true
    expected = 2 * tp / (2 * tp + fp + fn)

    got = evaluate(FixedLogits(table), task, "test")
    assert got["score"] == pytest.approx(expected)
    assert got["micro_f1"] == pytest.approx(expected)
    assert 0 < expected < 1  # the case is not degenerate


def test_evaluate_accuracy_counts_only_the_mask() -> None:
    n, c = 10, 3
    table = torch.zeros(n, c)
    pred = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    table[torch.arange(n), torch.tensor(pred)] = 1.0
    y = torch.tensor([0, 1, 1, 1, 1, 2, 2, 1, 0, 0])
    mask = [True, True, True, False, False, True, True, False, True, False]
    g = _graph(list(range(n)), y, mask)
    task = NodeTask("toy", 1, c, False, train=[g], val=[g], test=[g])
    hits = [pred[i] == int(y[i]) for i in range(n) if mask[i]]
    expected = sum(hits) / len(hits)  # 3 of 6: the unmasked nodes would change it
    got = evaluate(FixedLogits(table), task, "val")
    assert got["score"] == pytest.approx(expected)
    assert got["accuracy"] == pytest.approx(expected)
    assert expected == pytest.approx(0.5)


def test_evaluate_point_clouds_overall_and_mean_class_accuracy() -> None:
    # 40 clouds (more than one evaluation batch of 32), 5 classes, class 4 absent from the split.
    m, c = 40, 5
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, size=m)
    pred = np.where(rng.random(m) < 0.6, y, rng.integers(0, 4, size=m))
    table = torch.zeros(m, c)
    table[torch.arange(m), torch.tensor(pred)] = 1.0
    points = torch.zeros(m, 8, 3)
    points[:, :, 0] = torch.arange(m, dtype=torch.float).view(-1, 1)
    clouds = PointCloudSet(points, torch.tensor(y))
    task = PointCloudTask("toy", c, 8, train=clouds, val=clouds, test=clouds)

    per_class = []
    for k in range(c):
        members = [i for i in range(m) if y[i] == k]
        if members:
            per_class.append(sum(pred[i] == k for i in members) / len(members))
    overall = sum(pred[i] == y[i] for i in range(m)) / m

    model = FixedLogits(table).train()
    got = evaluate(model, task, "test")
    assert got["score"] == pytest.approx(overall)
    assert got["accuracy"] == pytest.approx(overall)
    assert got["mean_class_accuracy"] == pytest.approx(sum(per_class) / len(per_class))
    assert got["mean_class_accuracy"] != pytest.approx(overall)
    assert model.training  # evaluate restores the mode it found


# ---------------------------------------------------------------- DGCNN


def _dgcnn(k: int, width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(
        "dgcnn", in_channels=3, out_channels=4, width=width, depth=2, k=k, emb_dims=16, mlp=[8]
    )


@pytest.fixture(scope="module")
def shapes() -> PointCloudTask:
    return synthetic_shapes(
        num_per_class=6, num_classes=4, num_points=64, val_per_class=2, test_per_class=2
    )


def test_dgcnn_student_trains_from_a_dgcnn_teacher_with_lsp(shapes: PointCloudTask) -> None:
    teacher, student = _dgcnn(k=8, width=8, seed=0), _dgcnn(k=4, width=4, seed=1)
    cfg = TrainConfig(epochs=2, batch_size=4, optimizer="sgd", lr=0.05)
    result = distill_student(student, teacher, shapes, cfg, DistillConfig(method="lsp"))
    assert len(result.history) == 2
    for r in result.history:
        assert np.isfinite(r["train_loss"]) and r["distill_loss"] > 0
    assert 0.0 <= result.test_score <= 1.0
    assert 0.0 <= result.test_metrics["mean_class_accuracy"] <= 1.0


def test_dgcnn_lsp_term_uses_the_union_of_both_knn_graphs(shapes: PointCloudTask) -> None:
    teacher, student = _dgcnn(k=8, width=8, seed=0).eval(), _dgcnn(k=4, width=4, seed=1).eval()
    points = shapes.train.points[:3]
    with torch.no_grad():
        s_out, t_out = student(points), teacher(points)
    term = distillation_term(
        build_method(DistillConfig(method="lsp")),
        s_out,
        t_out,
        edge_index=None,
        precomputed=[],
        adapters=None,
        multilabel=False,
        epoch=0,
    )
    # The union built by hand, as a set of (source, target) pairs.
    pairs = set(map(tuple, s_out.edge_indices[-1].t().tolist()))
    t_pairs = set(map(tuple, t_out.edge_indices[-1].t().tolist()))
    union = torch.tensor(sorted(pairs | t_pairs)).t()
    assert union.shape[1] > len(pairs)  # the teacher's larger K adds edges
    z_s, z_t = s_out.hidden[-1], t_out.hidden[-1]
    on_union = lsp_loss(z_s, z_t, union, kernel="rbf")
    on_student = lsp_loss(z_s, z_t, s_out.edge_indices[-1], kernel="rbf")
    on_teacher = lsp_loss(z_s, z_t, t_out.edge_indices[-1], kernel="rbf")
    assert term is not None
    assert term.item() == pytest.approx(on_union.item(), rel=1e-5)
    assert term.item() != pytest.approx(on_student.item(), rel=1e-3)
    assert term.item() != pytest.approx(on_teacher.item(), rel=1e-3)


# ---------------------------------------------------------------- multi-label


@pytest.mark.parametrize("method", ["lsp", "kd"])
def test_gat_student_on_tiny_ppi(tiny_ppi_root: Path, method: str) -> None:
    task = load_task("ppi", root=tiny_ppi_root)
    assert task.multilabel
    teacher = _gat(task, seed=7, width=8, heads=2)
    result = distill_student(
        _gat(task, seed=1, width=4, heads=1),
        teacher,
        task,
        TrainConfig(epochs=2, batch_size=2),
        DistillConfig(method=method),
    )
    for r in result.history:
        assert np.isfinite(r["train_loss"]) and r["distill_loss"] > 0
    assert set(result.test_metrics) == {"score", "micro_f1", "auroc", "n"}
    assert result.test_metrics["n"] == sum(int(g.mask.sum()) for g in task.test)
    assert 0.0 <= result.test_metrics["auroc"] <= 1.0
    assert 0.0 <= result.test_score <= 1.0
    assert result.test_score == result.test_metrics["micro_f1"]


def test_dgcnn_teacher_and_k10_student_with_lsp_on_real_modelnet40(gds_data_root: Path) -> None:
    """The paper's dynamic-graph setting on the real ModelNet40 subset: K=20 teacher, K=10
    student."""
    task = load_task("modelnet40", root=gds_data_root, num_points=256, max_shapes=48)
    assert task.num_classes == 40 and task.train.points.shape[1:] == (256, 3)
    teacher = build_model(
        "dgcnn", in_channels=3, out_channels=40, width=8, depth=4, k=20, emb_dims=64, mlp=[32]
    )
    cfg = TrainConfig(epochs=1, batch_size=8, optimizer="sgd", lr=0.05)
    train_teacher(teacher, task, cfg)
    student = build_model(
        "dgcnn", in_channels=3, out_channels=40, width=4, depth=4, k=10, emb_dims=32, mlp=[16]
    )
    result = distill_student(
        student,
        teacher,
        task,
        TrainConfig(epochs=2, batch_size=8, optimizer="sgd", lr=0.05),
        DistillConfig(method="lsp", params={"kernel": "rbf", "lambda": 100.0}),
    )
    assert [r["distill_loss"] > 0 for r in result.history] == [True, True]
    assert all(np.isfinite(r["train_loss"]) for r in result.history)
    with torch.no_grad():
        s_out, t_out = student.eval()(task.test.points[:2]), teacher.eval()(task.test.points[:2])
    # K=10 and K=20 graphs differ, and LSP compares them on their union.
    assert (
        s_out.edge_indices[-1].shape[1] == 2 * 256 * 10
        and t_out.edge_indices[-1].shape[1] == 2 * 256 * 20
    )


def test_graph_on_another_device_leaves_the_tasks_graph_where_it_was() -> None:
    # PyG's Data.to moves in place: training on a GPU used to leave the task's graph there.
    from torch_geometric.data import Data

    from study.train import graph_on

    graph = Data(x=torch.ones(3, 2), edge_index=torch.tensor([[0, 1], [1, 2]]))
    moved = graph_on(graph, "meta")
    assert moved.x.device.type == "meta" and moved.edge_index.device.type == "meta"
    assert graph.x.device.type == "cpu" and graph.edge_index.device.type == "cpu"
    assert graph_on(graph, "cpu").x is graph.x  # same device: the tensors are shared
