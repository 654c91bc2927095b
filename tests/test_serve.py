"""A selected Cora student served by a real `mlflow models serve`, and `select --runtime onnx`.

No Ray: the students are trained here (2 epochs) and logged as trials log theirs (the export
folder made an MLflow pyfunc model, study.pyfunc_model), into a real sqlite MLflow store filled
with tests.mlflow_fixtures. `select` then chooses, exports and registers as usual.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from study import export
from study import tracking as tr
from study.cli import main
from study.data import load_task
from study.data.base import io_channels
from study.models import build_model
from study.pyfunc_model import add_task_pyfunc
from study.train import TrainConfig, seed_everything, train_teacher
from tests.mlflow_fixtures import fill_study

STUDY = "serve_cora"
MODEL = f"{STUDY}-student"
SERVER_START_TIMEOUT_S = 180  # a start-up limit only: nothing is asserted about speed


@dataclass
class Store:
    uri: str
    root: Path
    task: object


def _student(task: object, arch: str) -> torch.nn.Module:
    seed_everything(0)
    model = build_model(arch, width=8, depth=2, dropout=0.0, **io_channels(task))  # type: ignore[arg-type]
    return train_teacher(model, task, TrainConfig(epochs=2, lr=0.01)).model  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, gds_data_root: Path) -> Store:
    """Study ``serve_cora``: a GCN (val .80, PyTorch 3 ms, ONNX 1 ms) and an MLP (val .60, 1 ms
    and .5 ms), each with its student logged as a trial logs it."""
    root = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{root}/mlflow.db"
    task = load_task("cora", root=str(gds_data_root))

    def trial(cfg: str, arch: str, val: float, lat: float, onnx: float) -> dict:
        metrics = {
            tr.METRIC_VAL: val,
            tr.METRIC_TEST: val - 0.05,
            tr.METRIC_LATENCY_P50: lat,
            tr.METRIC_LATENCY_P90: lat + 0.5,
            tr.METRIC_LATENCY_ONNX_P50: onnx,
            tr.METRIC_PARAMS: 1000.0,
        }
        return {"method": "none", "dataset": "cora", "config_id": cfg, "student_arch": arch,
                "params": {"student.arch": arch}, "metrics": metrics}  # fmt: skip

    trials = [trial("gcn_cfg", "gcn", 0.80, 3.0, 1.0), trial("mlp_cfg", "mlp", 0.60, 1.0, 0.5)]
    ids = fill_study(uri, STUDY, trials)
    client = MlflowClient(uri)
    graph = task.test[0]  # type: ignore[attr-defined]
    for run_id, arch in zip(ids["trial_run_ids"], ["gcn", "mlp"], strict=True):
        model = _student(task, arch)
        folder = export.export_student(
            model, root / f"student-{arch}", metadata={"arch": arch},
            example_inputs=(graph.x, graph.edge_index),
        )  # fmt: skip
        add_task_pyfunc(folder, task, model)  # what study.trial._log_student does
        client.log_artifacts(run_id, str(folder), artifact_path=tr.STUDENT_ARTIFACT_DIR)
    return Store(uri=uri, root=root, task=task)


def _select(store: Store, out: Path, budget: float, *extra: str) -> int:
    args = ["select", STUDY, "--max-latency-ms", str(budget), "--tracking-uri", store.uri]
    return main([*args, "--out", str(out), *extra])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(store: Store, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, int]]:
    """Holder for the serve process started by the test; its process group is ended after."""
    started: list[tuple[subprocess.Popen, int]] = []

    def start(model_uri: str) -> tuple[subprocess.Popen, int]:
        port = _free_port()
        env = {**os.environ, tr.TRACKING_URI_ENV: store.uri}
        serve = ["mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local"]
        where = ["--host", "127.0.0.1", "--port", str(port), "-w", "1"]
        with open(tmp_path / "serve.log", "wb") as log:  # the child keeps its own handle
            proc = subprocess.Popen(
                [sys.executable, "-m", *serve, *where],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: ended below, nothing else
                cwd=tmp_path,
            )
        started.append((proc, port))
        return proc, port

    yield start  # type: ignore[misc]
    for proc, _ in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the CLI and its uvicorn worker
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _wait_until_up(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-2000:]
            pytest.fail(f"mlflow models serve exited ({proc.returncode}): {tail}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    pytest.fail(f"mlflow models serve did not answer /ping: {log.read_text()[-2000:]}")


def _post(port: int, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _export_probs(folder: Path, request: dict) -> np.ndarray:
    """The exported model's own predictions for a request: softmax of its eager logits."""
    model = export.load(folder)
    inputs = request["inputs"]
    x = torch.tensor(inputs["x"], dtype=torch.float32)
    edges = torch.tensor(inputs["edge_index"], dtype=torch.int64).reshape(2, -1)
    with torch.no_grad():
        logits = model(x, edges).logits[torch.tensor(inputs["nodes"])]
    return logits.softmax(-1).numpy()


def test_selected_student_loads_and_serves(
    store: Store, tmp_path: Path, server, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(tr.TRACKING_URI_ENV, store.uri)  # models:/ URIs resolve through it
    out = tmp_path / "export"
    assert _select(store, out, 5.0) == 0
    printed = capsys.readouterr().out
    assert "chosen configuration gcn_cfg" in printed and f"models:/{MODEL}/1" in printed
    client = MlflowClient(store.uri)
    version = client.get_model_version_by_alias(MODEL, tr.ALIAS_CHALLENGER)
    assert str(version.version) == "1" and version.tags[tr.VTAG_RUNTIME] == "torch"
    assert version.tags[tr.VTAG_MAX_LATENCY] == "5"
    assert version.tags[tr.VTAG_STUDY_RUN]  # lineage: the study's run

    body = (out / "serving_input_example.json").read_bytes()
    request = json.loads(body)
    want = _export_probs(out, request)
    assert want.shape[1] == 7  # Cora's classes

    # Loaded from the registry by MLflow itself.
    loaded = mlflow.pyfunc.load_model(f"models:/{MODEL}/1")
    named = {
        "x": np.asarray(request["inputs"]["x"], dtype=np.float32),
        "edge_index": np.asarray(request["inputs"]["edge_index"], dtype=np.int64),
        "nodes": np.asarray(request["inputs"]["nodes"], dtype=np.int64),
    }
    np.testing.assert_allclose(loaded.predict(named), want, rtol=1e-5, atol=1e-6)

    # Served by a real `mlflow models serve` on 127.0.0.1.
    proc, port = server(f"models:/{MODEL}/1")
    _wait_until_up(proc, port, tmp_path / "serve.log")
    status, answer = _post(port, body)
    assert status == 200, answer
    np.testing.assert_allclose(np.asarray(answer["predictions"]), want, rtol=1e-5, atol=1e-6)
    bad = {"inputs": {**request["inputs"], "nodes": [len(request["inputs"]["x"])]}}
    status, answer = _post(port, json.dumps(bad).encode())
    assert status == 400 and "outside" in answer["message"]


def test_select_chooses_per_runtime(store: Store, tmp_path: Path, capsys) -> None:
    # Within 2 ms only the MLP fits under PyTorch; under ONNX Runtime the better GCN fits too.
    assert _select(store, tmp_path / "torch", 2.0) == 0
    assert "chosen configuration mlp_cfg" in capsys.readouterr().out
    assert _select(store, tmp_path / "onnx", 2.0, "--runtime", "onnx") == 0
    printed = capsys.readouterr().out
    assert "chosen configuration gcn_cfg" in printed and "the budget held onnx's" in printed
    version = MlflowClient(store.uri).get_model_version_by_alias(MODEL, tr.ALIAS_CHALLENGER)
    assert version.tags[tr.VTAG_RUNTIME] == "onnx" and version.tags["config_id"] == "gcn_cfg"
    # Below every ONNX figure: exit 1, the fastest named, nothing written.
    assert _select(store, tmp_path / "none", 0.1, "--runtime", "onnx") == 1
    err = capsys.readouterr().err
    assert "latency_onnx_ms_p50 within 0.1 ms" in err and "mlp_cfg" in err
    assert not (tmp_path / "none").exists()
