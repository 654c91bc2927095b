"""Serving latency for B target nodes with the k-hop fetch: what a request computes, the metric
names, and selection on them. Times are measured, never asserted."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from torch_geometric.data import Data

from analysis.report import write_report
from study import tracking as tr
from study.config import OBJECTIVE_MODES
from study.data.base import NodeTask
from study.errors import UserInputError
from study.models import build_model
from study.select import NoConfigWithinBudget, choose_config, select_and_export
from study.serving_latency import (
    ServingIndex,
    fetch_hops,
    serving_latency,
    serving_metrics,
)
from tests.mlflow_fixtures import fill_study


def task(n: int = 300) -> NodeTask:
    gen = torch.Generator().manual_seed(0)
    graph = Data(
        x=torch.randn(n, 6, generator=gen),
        edge_index=torch.randint(0, n, (2, 5 * n), generator=gen),
        y=torch.randint(0, 3, (n,), generator=gen),
        mask=torch.ones(n, dtype=torch.bool),
    )
    return NodeTask("t", 6, 3, False, [graph], [graph], [graph])


@pytest.mark.parametrize(("arch", "hops"), [("gat", 2), ("gcn", 3), ("sage", 1), ("mlp", 0)])
def test_a_request_answers_its_targets_as_the_whole_graph_would(arch: str, hops: int) -> None:
    graph = task().test[0]
    torch.manual_seed(0)
    sizes = {"width": 4, "depth": max(hops, 2) if arch == "mlp" else hops}
    model = build_model(arch, in_channels=6, out_channels=3, **sizes).eval()
    assert fetch_hops(model) == hops  # an MLP fetches nothing
    index = ServingIndex(model, graph)
    assert (index.sampler is None) == (hops == 0)
    targets = torch.tensor([4, 99, 250, 17])
    with torch.no_grad():
        served = index.request(targets)()
        whole = model(graph.x, graph.edge_index).logits
    assert whole is not None
    torch.testing.assert_close(served, whole[targets], rtol=1e-5, atol=1e-5)


def test_the_index_keeps_one_csr_and_gcn_degrees_not_a_normalised_edge_copy() -> None:
    graph = task().test[0]
    loops = torch.arange(0, 300, 5).repeat(2, 1)  # self-loops: GCN replaces them by its own
    graph = Data(x=graph.x, edge_index=torch.cat([graph.edge_index, loops], dim=1))
    torch.manual_seed(0)
    model = build_model("gcn", in_channels=6, out_channels=3, width=4, depth=2).eval()
    index = ServingIndex(model, graph)
    assert index.sampler is not None and index.sampler.csr.col.dtype == torch.int32
    assert index.state is not None and index.state.shape == (300,)  # deg^-1/2 per node
    targets = torch.tensor([0, 5, 7])
    with torch.no_grad():
        served = index.request(targets)()
        whole = model(graph.x, graph.edge_index).logits
    assert whole is not None
    torch.testing.assert_close(served, whole[targets], rtol=1e-5, atol=1e-5)


def test_serving_latency_per_batch_size_and_its_metric_names() -> None:
    model = build_model("gcn", in_channels=6, out_channels=3, width=4, depth=2)
    results = serving_latency(model, task(), repeats=2, warmup=0, batch_sizes=(1, 256))
    assert sorted(results) == [1, 256]
    assert results[256].samples_per_call == 256 and results[1].samples_per_call == 1
    metrics = serving_metrics(results)
    assert set(metrics) == set(tr.SERVE_METRICS)
    assert tr.METRIC_SERVE_B1_P50 == "serve_b1_ms_p50" and all(v > 0 for v in metrics.values())
    assert all(OBJECTIVE_MODES[m] == "min" for m in tr.SERVE_METRICS)  # usable as objectives


def test_select_budgets_the_chosen_latency_column(tmp_path: Path) -> None:
    summary = pd.DataFrame(
        {
            "config_id": ["gnn", "mlp"],
            "val_score_mean": [0.9, 0.8],
            "latency_ms_p50_mean": [1.0, 0.5],  # whole graph: both fit 2 ms
            "serve_b1_ms_p50_mean": [5.0, 0.05],  # one node with its fetch: the GNN does not
        }
    )
    serve = f"{tr.METRIC_SERVE_B1_P50}_mean"
    assert choose_config(summary, 2.0)["config_id"] == "gnn"
    assert choose_config(summary, 2.0, serve)["config_id"] == "mlp"
    with pytest.raises(NoConfigWithinBudget, match="serve_b1_ms_p50"):
        choose_config(summary, 0.01, serve)
    # select checks the name before it reads anything.
    with pytest.raises(UserInputError, match="latency-metric"):
        select_and_export("any", 2.0, tmp_path / "out", latency_metric="val_score")
    assert not (tmp_path / "out").exists()


def test_report_shows_accuracy_against_serving_latency(tmp_path: Path) -> None:
    """GLNN's point on a plot: by whole-graph latency the GNN student is as fast as the MLP;
    by serving latency (one node with its fetch) only the MLP is fast, so it joins the front."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    def trial(arch: str, val: float, serve: float) -> dict:
        metrics = {"val_score": val, "test_score": val, "latency_ms_p50": 1.0,
                   "latency_ms_p90": 1.2, "num_params": 100.0, "serve_b1_ms_p50": serve,
                   "serve_b256_ms_p50": 10 * serve}  # fmt: skip
        params = {"student.arch": arch}
        return {"method": "kd", "dataset": "big", "student_arch": arch, "params": params,
                "metrics": metrics}  # fmt: skip

    fill_study(uri, "serve", [trial("gat", 0.9, 5.0), trial("mlp", 0.8, 0.05)])
    out = tmp_path / "rep"
    write_report("serve", out, tracking_uri=uri)
    readme = (out / "README.md").read_text()
    assert "Accuracy against serving latency: big" in readme
    assert "2 of 2 configurations are on this front" in readme
    assert (out / "figures" / "serving_big.png").stat().st_size > 1000
    front = pd.read_csv(out / "pareto.csv")  # the whole-graph front: the MLP is dominated there
    assert front["student_arch"].tolist() == ["gat"]
