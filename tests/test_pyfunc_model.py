"""Students as MLflow pyfunc models (study.pyfunc_model) and their ONNX Runtime latency
(study.onnx_runtime): no Ray, no server; a real MLflow model folder loaded by MLflow itself."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException
from torch_geometric.utils import k_hop_subgraph

from study import export
from study.models import build_model
from study.onnx_runtime import export_onnx, onnx_latency
from study.pyfunc_model import add_pyfunc, node_example, point_example
from tests.graphs import small_graph

pytestmark = pytest.mark.usefixtures("one_thread")


def _node_model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    extra = {"heads": 2} if arch == "gat" else {}
    return build_model(arch, in_channels=5, out_channels=3, width=4, depth=2, **extra).eval()


def _eager_probs(model: torch.nn.Module, request: dict, sigmoid: bool = False) -> np.ndarray:
    with torch.no_grad():
        if "points" in request:
            logits = model(torch.from_numpy(request["points"])).logits
        else:
            x, edges = torch.from_numpy(request["x"]), torch.from_numpy(request["edge_index"])
            logits = model(x, edges).logits[torch.from_numpy(request["nodes"])]
    return (torch.sigmoid(logits) if sigmoid else logits.softmax(-1)).numpy()


def test_node_example_is_the_targets_k_hop_neighbourhood() -> None:
    x, edge_index = small_graph()
    ex = node_example(x, edge_index, torch.tensor([3, 0, 5]), hops=1, max_nodes=5)
    assert ex["x"].dtype == np.float32 and ex["edge_index"].dtype == np.int64
    n = ex["x"].shape[0]
    assert n <= 5 and ex["nodes"].size >= 1
    assert ex["edge_index"].shape[0] == 2 and ex["edge_index"].max() < n
    # Every target's 1-hop in-neighbourhood is in the request, with its features.
    (target,) = ex["nodes"][:1]
    kept = {tuple(row) for row in ex["x"].round(6).tolist()}
    original = int(np.where((x.numpy().round(6) == ex["x"][target].round(6)).all(1))[0][0])
    sub, _, _, _ = k_hop_subgraph([original], 1, edge_index, num_nodes=x.size(0))
    assert {tuple(r) for r in x[sub].numpy().round(6).tolist()} <= kept


@pytest.mark.parametrize(("arch", "multilabel"), [("gcn", False), ("gat", False), ("mlp", True)])
def test_export_folder_is_a_pyfunc_model(tmp_path: Path, arch: str, multilabel: bool) -> None:
    model = _node_model(arch)
    x, edge_index = small_graph()
    folder = export.export_student(
        model, tmp_path / "student", metadata={}, example_inputs=(x, edge_index)
    )
    ex = node_example(x, edge_index, torch.arange(7), hops=2)
    add_pyfunc(folder, ex, num_outputs=3, multilabel=multilabel)

    names = {p.name for p in folder.iterdir()}
    assert {"MLmodel", "weights.pt", "config.json", "serving_input_example.json"} <= names
    assert not any(n.endswith(".pkl") for n in names)  # nothing pickled: loaded by code
    assert "loader_module: study.pyfunc_model" in (folder / "MLmodel").read_text()
    export.load(folder)  # still an export folder

    loaded = mlflow.pyfunc.load_model(str(folder))
    got = loaded.predict(ex)
    want = _eager_probs(model, ex, sigmoid=multilabel)
    assert got.shape == (ex["nodes"].size, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if not multilabel:
        np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-5)
    # The serving example is the same request in MLflow's "inputs" form.
    body = json.loads((folder / "serving_input_example.json").read_text())
    assert set(body["inputs"]) == {"x", "edge_index", "nodes"}
    np.testing.assert_allclose(np.asarray(body["inputs"]["x"], dtype=np.float32), ex["x"])
    # Another graph size goes through the signature (any N, E, B).
    x2, e2 = small_graph(num_nodes=7, num_features=5)
    other = {"x": x2[:4].numpy(), "edge_index": e2[:, :2].numpy(), "nodes": np.array([0, 3])}
    assert loaded.predict(other).shape == (2, 3)


def test_bad_requests_are_refused_with_a_reason(tmp_path: Path) -> None:
    model = _node_model("gcn")
    x, edge_index = small_graph()
    folder = export.export_student(model, tmp_path / "s", metadata={})
    ex = node_example(x, edge_index, torch.arange(7), hops=1)
    add_pyfunc(folder, ex, num_outputs=3)
    loaded = mlflow.pyfunc.load_model(str(folder))
    bad = dict(ex, nodes=np.array([ex["x"].shape[0]], dtype=np.int64))
    with pytest.raises(MlflowException, match="outside"):
        loaded.predict(bad)
    with pytest.raises(MlflowException):
        loaded.predict(dict(ex, x=np.zeros((2, 9), dtype=np.float32)))  # 9 features, not 5


def test_point_cloud_pyfunc(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(
        "dgcnn", in_channels=3, out_channels=4, width=8, depth=2, k=4, emb_dims=16, mlp=[8]
    ).eval()
    points = torch.randn(2, 32, 3, generator=torch.Generator().manual_seed(1))
    folder = export.export_student(model, tmp_path / "pc", metadata={})
    ex = point_example(points, count=2)
    add_pyfunc(folder, ex, num_outputs=4)
    got = mlflow.pyfunc.load_model(str(folder)).predict(ex)
    np.testing.assert_allclose(got, _eager_probs(model, ex), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["gcn", "sage", "mlp", "gat"])
def test_onnx_runtime_reproduces_and_times_the_logits(arch: str) -> None:
    model = _node_model(arch)
    x, edge_index = small_graph()
    onnx_model = export_onnx(model, (x, edge_index))
    with torch.no_grad():
        want = model(x, edge_index).logits.numpy()
    np.testing.assert_allclose(onnx_model.run(), want, rtol=1e-4, atol=1e-5)
    lat = onnx_latency(model, (x, edge_index), repeats=5, warmup=1)
    assert lat.repeats == 5 and len(lat.times_ms) == 5
    assert 0 < lat.min_ms <= lat.p50_ms <= lat.p90_ms
    assert not model.training  # measured on a copy; the caller's model is left as it was
