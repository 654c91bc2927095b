"""Per-class figures against scikit-learn's classification_report, one-vs-rest AUROC against
roc_auc_score(multi_class="ovr"), and what a trial's per-class table holds."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import classification_report, f1_score, roc_auc_score
from torch_geometric.data import Data

from study.data.base import NodeTask, PointCloudSet, PointCloudTask
from study.metrics import node_scores
from study.models.base import ModelOutput
from study.per_class import (
    COLUMNS,
    class_report,
    one_hot_pair,
    per_class_figures,
    summary,
)
from study.train import evaluate


def _random_labels(seed: int, n: int = 60, c: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=gen)
    pred = torch.where(
        torch.rand(n, generator=gen) < 0.6, y, torch.randint(0, c, (n,), generator=gen)
    )
    return pred, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_label_report_matches_sklearn(seed: int) -> None:
    pred, y = _random_labels(seed)
    pred[pred == 4] = 3  # class 4 is never predicted: precision 0 by zero_division
    report = class_report(*one_hot_pair(pred, y, 6))  # class 5 absent from both
    ref = classification_report(
        y.numpy(), pred.numpy(), labels=list(range(6)), output_dict=True, zero_division=0
    )
    for c in range(6):
        for ours, theirs in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert math.isclose(float(report[ours][c]), ref[str(c)][theirs], abs_tol=1e-12)
        assert int(report["support"][c]) == ref[str(c)]["support"]
    figures = summary(report)
    # scikit-learn's macro F1 over the labels it sees (in y or pred): class 5 left out.
    assert math.isclose(
        figures["macro_f1"], f1_score(y.numpy(), pred.numpy(), average="macro", zero_division=0)
    )
    recalls = [ref[str(c)]["recall"] for c in range(6) if ref[str(c)]["support"] > 0]
    assert figures["worst_class_recall"] == pytest.approx(min(recalls))


def test_multilabel_report_matches_sklearn() -> None:
    gen = torch.Generator().manual_seed(3)
    truth = torch.rand(40, 4, generator=gen) < 0.3
    pred = torch.rand(40, 4, generator=gen) < 0.4
    report = class_report(pred, truth)
    ref = classification_report(
        truth.int().numpy(), pred.int().numpy(), output_dict=True, zero_division=0
    )
    for c in range(4):
        assert float(report["recall"][c]) == pytest.approx(ref[str(c)]["recall"])
        assert float(report["precision"][c]) == pytest.approx(ref[str(c)]["precision"])
        assert float(report["f1"][c]) == pytest.approx(ref[str(c)]["f1-score"])


@pytest.mark.parametrize("seed", [0, 1])
def test_multiclass_auroc_matches_sklearn_ovr(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(7).repeat(6)  # every one of Cora's 7 classes present
    logits = torch.randn(len(y), 7, generator=gen) + 1.5 * torch.eye(7)[y]
    ours = node_scores(logits, y, multilabel=False, metric="auroc")
    probs = torch.softmax(logits.double(), -1).numpy()
    theirs = roc_auc_score(y.numpy(), probs, multi_class="ovr", average="macro")
    assert ours["score"] == pytest.approx(theirs, abs=1e-12)
    assert ours["auroc"] == ours["score"]


class _Fixed(torch.nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor, *_: object) -> ModelOutput:
        out = self.logits[: x.shape[0]] if x.dim() == 2 else self.logits
        return ModelOutput(logits=out, hidden=[out])


def _node_task(logits: torch.Tensor, y: torch.Tensor) -> NodeTask:
    n = len(y)
    graph = Data(x=torch.zeros(n, 2), edge_index=torch.zeros(2, 0, dtype=torch.long), y=y)
    splits = {}
    for name, sl in (
        ("train", slice(0, n // 2)),
        ("val", slice(n // 2, 3 * n // 4)),
        ("test", slice(3 * n // 4, n)),
    ):
        g = graph.clone()
        g.mask = torch.zeros(n, dtype=torch.bool)
        g.mask[sl] = True
        splits[name] = [g]
    return NodeTask("t", 2, logits.shape[1], False, splits["train"], splits["val"], splits["test"])


def test_a_trials_per_class_table_and_figures() -> None:
    gen = torch.Generator().manual_seed(4)
    y = torch.tensor([0] * 20 + [1] * 12 + [2] * 4).repeat(2)[torch.randperm(72, generator=gen)]
    logits = torch.randn(72, 3, generator=gen) + 2.0 * torch.eye(3)[y]
    task = _node_task(logits, y)
    table, figures = per_class_figures(_Fixed(logits), task)
    assert list(table) == list(COLUMNS)
    rows = list(zip(*table.values(), strict=True))
    assert {r[0] for r in rows} == {"val", "test"}
    train_y = y[:36]
    for split, sl in (("val", slice(36, 54)), ("test", slice(54, 72))):
        pred, truth = logits[sl].argmax(-1).numpy(), y[sl].numpy()
        ref = classification_report(
            truth, pred, labels=[0, 1, 2], output_dict=True, zero_division=0
        )
        for r in (r for r in rows if r[0] == split):
            c = r[1]
            assert r[3] == int((train_y == c).sum())  # training frequency, for head-to-tail order
            assert r[4] == ref[str(c)]["support"]
            assert r[6] == pytest.approx(ref[str(c)]["recall"])
        present = [ref[str(c)]["recall"] for c in range(3) if ref[str(c)]["support"] > 0]
        assert figures[f"{split}_worst_class_recall"] == pytest.approx(min(present))
        assert figures[f"{split}_macro_f1"] == pytest.approx(
            f1_score(truth, pred, average="macro", zero_division=0)
        )
    val = evaluate(_Fixed(logits), task, "val")
    assert figures["val_auroc"] == val["auroc"]


def test_point_clouds_report_auroc_and_take_it_as_headline() -> None:
    gen = torch.Generator().manual_seed(5)
    labels = torch.arange(4).repeat(5)
    logits = torch.randn(20, 4, generator=gen) + torch.eye(4)[labels]
    clouds = PointCloudSet(torch.zeros(20, 8, 3), labels)
    task = PointCloudTask("c", 4, 8, clouds, clouds, clouds, metric="auroc")
    scores = evaluate(_Fixed(logits), task, "test")
    probs = torch.softmax(logits.double(), -1).numpy()
    assert scores["score"] == pytest.approx(roc_auc_score(labels.numpy(), probs, multi_class="ovr"))
    pred = logits.argmax(-1)
    recalls = [float((pred[labels == c] == c).double().mean()) for c in range(4)]
    assert scores["mean_class_accuracy"] == pytest.approx(sum(recalls) / 4)
