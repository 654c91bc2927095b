"""AUROC against the pairwise definition: P(score_pos > score_neg) + P(tie) / 2."""

from __future__ import annotations

import itertools
import math

import torch
from torch_geometric.data import Data

from study.data.base import NodeTask
from study.metrics import binary_auroc, macro_auroc, node_scores
from study.models.base import ModelOutput
from study.train import evaluate


def pairwise_auroc(scores: list[float], labels: list[int]) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_binary_auroc_matches_the_pairwise_definition_with_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        scores = torch.randint(0, 5, (30,), generator=gen).float()  # many ties
        labels = torch.randint(0, 2, (30,), generator=gen)
        if labels.sum() in (0, 30):
            continue
        assert math.isclose(
            binary_auroc(scores, labels), pairwise_auroc(scores.tolist(), labels.tolist())
        )


def test_auroc_extremes_and_one_class() -> None:
    assert binary_auroc(torch.tensor([0.1, 0.2, 0.8, 0.9]), torch.tensor([0, 0, 1, 1])) == 1.0
    assert binary_auroc(torch.tensor([0.9, 0.8, 0.2, 0.1]), torch.tensor([0, 0, 1, 1])) == 0.0
    assert math.isnan(binary_auroc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1])))


def test_macro_auroc_skips_labels_with_one_class() -> None:
    scores = torch.tensor([[0.1, 0.5, 0.3], [0.9, 0.4, 0.2], [0.2, 0.6, 0.8]])
    labels = torch.tensor([[0, 1, 0], [1, 1, 1], [0, 1, 0]])  # column 1 is all positive
    expected = (
        pairwise_auroc([0.1, 0.9, 0.2], [0, 1, 0]) + pairwise_auroc([0.3, 0.2, 0.8], [0, 1, 0])
    ) / 2
    assert math.isclose(macro_auroc(scores, labels), expected)


class FixedLogits(torch.nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> ModelOutput:
        return ModelOutput(logits=self.logits, hidden=[self.logits])


def test_evaluate_reports_auroc_for_binary_and_multilabel_nodes() -> None:
    edge_index = torch.zeros(2, 0, dtype=torch.long)
    binary_logits = torch.tensor([[0.0, 2.0], [0.0, -1.0], [0.0, 0.5], [0.0, -3.0]])
    y = torch.tensor([1, 0, 0, 0])
    graph = Data(
        x=torch.zeros(4, 1), edge_index=edge_index, y=y, mask=torch.ones(4, dtype=torch.bool)
    )
    task = NodeTask("b", 1, 2, False, [graph], [graph], [graph])
    metrics = evaluate(FixedLogits(binary_logits), task, "test")
    assert metrics["auroc"] == pairwise_auroc([2.0, -1.0, 0.5, -3.0], [1, 0, 0, 0]) == 1.0
    assert metrics["accuracy"] == 0.75

    multi_logits = torch.tensor([[1.0, -1.0], [-2.0, 0.5], [0.3, 2.0]])
    y2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    g2 = Data(
        x=torch.zeros(3, 1), edge_index=edge_index, y=y2, mask=torch.ones(3, dtype=torch.bool)
    )
    task2 = NodeTask("m", 1, 2, True, [g2], [g2], [g2], metric="micro_f1")
    m2 = evaluate(FixedLogits(multi_logits), task2, "test")
    expected = (
        pairwise_auroc([1.0, -2.0, 0.3], [1, 0, 0]) + pairwise_auroc([-1.0, 0.5, 2.0], [0, 1, 0])
    ) / 2
    assert math.isclose(m2["auroc"], expected)
    assert "auroc" not in evaluate(FixedLogits(multi_logits), task2, "test", with_auroc=False)
    assert "auroc" not in evaluate(FixedLogits(binary_logits), task, "test", with_auroc=False)


def test_node_scores_match_scikit_learn_for_every_headline() -> None:
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(60, 4, generator=gen)
    y = torch.randint(0, 4, (60,), generator=gen)
    y[:3] = 3  # every class present
    pred = logits.argmax(-1).numpy()
    probs = torch.softmax(logits.double(), -1).numpy()
    expected = {
        "accuracy": accuracy_score(y.numpy(), pred),
        "macro_f1": f1_score(y.numpy(), pred, average="macro"),
        "micro_f1": f1_score(y.numpy(), pred, average="micro"),
        "auroc": roc_auc_score(y.numpy(), probs, multi_class="ovr", average="macro"),
    }
    for metric, value in expected.items():
        got = node_scores(logits, y, multilabel=False, metric=metric)
        assert math.isclose(got["score"], value, rel_tol=1e-9), metric
        assert math.isclose(got[metric], value, rel_tol=1e-9)

    multi = torch.randn(50, 5, generator=gen)
    truth = (torch.rand(50, 5, generator=gen) < 0.3).float()
    mpred = (multi > 0).numpy()
    expected_multi = {
        "micro_f1": f1_score(truth.numpy(), mpred, average="micro"),
        "macro_f1": f1_score(truth.numpy(), mpred, average="macro", zero_division=0),
        "accuracy": accuracy_score(truth.numpy(), mpred),  # subset accuracy
        "auroc": roc_auc_score(truth.numpy(), multi.numpy(), average="macro"),
    }
    for metric, value in expected_multi.items():
        got = node_scores(multi, truth, multilabel=True, metric=metric)
        assert math.isclose(got["score"], value, rel_tol=1e-9), metric


def test_a_rare_positive_class_is_scored_by_auroc_not_accuracy() -> None:
    # 5% positives: predicting "never fraud" is 95% accurate and worthless; AUROC says so.
    y = torch.zeros(100, dtype=torch.long)
    y[:5] = 1
    never = torch.stack([torch.zeros(100), torch.full((100,), -5.0)], dim=1)
    scores = node_scores(never, y, multilabel=False, metric="auroc")
    assert scores["accuracy"] == 0.95 and scores["score"] == 0.5
    ranked = never.clone()
    ranked[:5, 1] = -4.0  # positives scored higher, still below the decision threshold
    assert node_scores(ranked, y, multilabel=False, metric="auroc")["score"] == 1.0
