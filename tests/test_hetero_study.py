"""A heterogeneous study on a real local Ray with a real MLflow store; bad input is one line,
exit 2, nothing started."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import ray
import torch
import yaml
from mlflow.tracking import MlflowClient
from torch_geometric.data import HeteroData

from study import tracking as tr
from study.cli import main
from study.runner import run_study

SMALL = {"num_users": 160, "num_merchants": 16, "num_devices": 30, "val": 40, "test": 60}


def hetero_study(name: str, **overrides: Any) -> dict[str, Any]:
    study: dict[str, Any] = {
        "name": name,
        "dataset": {"name": "synthetic_hetero", "options": dict(SMALL)},
        "teacher": {
            "arch": "rgcn",
            "width": 16,
            "depth": 2,
            "dropout": 0.0,
            "train": {"epochs": 30, "lr": 0.02},
        },
        "student": {
            "arch": "rgcn",
            "width": 8,
            "depth": 2,
            "dropout": 0.0,
            "train": {"epochs": 30, "lr": 0.02},
        },
        "methods": ["none", "lsp"],
        "search": {"student.arch": {"choice": ["rgcn", "mlp"]}},
        "seeds": [0],
        "searcher": {"algorithm": "grid", "num_samples": 1, "max_concurrent": 2},
        "resources": {"cpu": 1, "gpu": 0},
        "latency": {"repeats": 5, "warmup": 1, "threads": 1, "onnx": False},
    }
    study.update(overrides)
    return study


def write(folder: Path, name: str, **overrides: Any) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(hetero_study(name, **overrides), sort_keys=False))
    return path


@pytest.mark.ray
def test_hetero_study_logs_trials_and_its_best_student_beats_chance(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    try:
        outcome = run_study(write(tmp_path, "hetero"), tracking_uri=uri, storage=tmp_path / "s")
    finally:
        ray.shutdown()
    assert outcome.complete and len(outcome.trials) == 4
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("hetero")
    assert exp is not None
    trials = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{tr.TAG_ROLE}` = '{tr.ROLE_TRIAL}'"
    )
    assert len(trials) == 4 and all(r.info.status == "FINISHED" for r in trials)
    assert {(r.data.params["student.arch"], r.data.params["method"]) for r in trials} == {
        (a, m) for a in ("rgcn", "mlp") for m in ("none", "lsp")
    }
    for run in trials:
        assert 0.0 <= run.data.metrics[tr.METRIC_TEST] <= 1.0
        assert run.data.metrics[tr.METRIC_LATENCY_P50] > 0.0
    best = max(trials, key=lambda r: r.data.metrics[tr.METRIC_VAL])
    # Two balanced classes: chance is 0.5.
    assert best.data.params["student.arch"] in ("rgcn", "mlp")
    assert best.data.metrics[tr.METRIC_TEST] > 0.7
    rgcn = [r for r in trials if r.data.params["student.arch"] == "rgcn"]
    assert max(r.data.metrics[tr.METRIC_TEST] for r in rgcn) > 0.7


def _hetero_file(folder: Path) -> Path:
    d = HeteroData()
    d["user"].x = torch.randn(6, 3)
    d["user"].y = torch.tensor([0, 1, 0, 1, 0, 1])
    d["user"].train_mask = torch.tensor([True, True, False, False, False, False])
    d["user"].val_mask = torch.tensor([False, False, True, True, False, False])
    d["user"].test_mask = torch.tensor([False, False, False, False, True, True])
    d["shop"].x = torch.randn(2, 5)
    d["user", "buys", "shop"].edge_index = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 1, 0, 1, 0, 1]])
    d["shop", "sold_to", "user"].edge_index = d["user", "buys", "shop"].edge_index.flip(0)
    path = folder / "graph.pt"
    torch.save(d, path)
    return path


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    ("override", "needle"),
    [
        (
            {
                "methods": ["none", "edge_attention"],
                "method_defaults": {"edge_attention": {"teacher_source": "gradient"}},
                "student": {"arch": "gat", "width": 4, "heads": 1, "train": {"epochs": 2}},
                "search": {},
            },
            "gradient importance calls the teacher on (x, edge_index), but rgcn reads edge",
        ),
        (
            {
                "student": {
                    "arch": "rgcn",
                    "width": 8,
                    "train": {"epochs": 2, "num_neighbors": [4, 4], "batch_size": 16},
                }
            },
            "student.train.num_neighbors: sampled mini-batches do not carry edge types",
        ),
        (
            {
                "student": {"arch": "rgcn", "width": 8, "train": {"epochs": 2, "batch_size": 16}},
                "search": {"student.num_neighbors": {"choice": [[4, 4], [2, 2]]}},
            },
            "num_neighbors: sampled mini-batches do not carry edge types",
        ),
        (
            {"dataset": {"name": "synthetic_hetero", "target_node_type": "user"}},
            "dataset.target_node_type: only for a user's HeteroData",
        ),
        ({"dataset": {"path": "graph.pt"}}, "dataset.target_node_type: "),
        (
            {"method_defaults": {"lsp": {"relation_weights": {"friends": 1.0}}}},
            "method_defaults.lsp.relation_weights: unknown relation 'friends' (valid: user__friend",
        ),
        (
            {
                "dataset": {"name": "synthetic_sbm", "options": {"num_nodes": 200}},
                "method_defaults": {"lsp": {"relation_weights": {"friend": 1.0}}},
            },
            "relation_weights: applies to a heterogeneous dataset only",
        ),
        (
            {"dataset": {"path": "graph.pt", "target_node_type": "shop"}},
            "node type 'shop' has no y",
        ),
        (
            {"dataset": {"path": "graph.pt", "target_node_type": "admin"}},
            "unknown target node type 'admin' (valid: shop, user)",
        ),
    ],
)
def test_bad_hetero_input_is_one_line_and_starts_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    override: dict,
    needle: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(tr.TRACKING_URI_ENV, raising=False)
    _hetero_file(tmp_path)
    path = write(tmp_path, "bad", **override)
    assert main(["run", str(path), "--storage", str(tmp_path / "studies")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert "bad.yaml" in err
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "studies").exists()
    assert not ray.is_initialized()


@pytest.mark.usefixtures("one_thread")
def test_user_heterodata_study_validates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    _hetero_file(tmp_path)
    path = write(tmp_path, "mine", dataset={"path": "graph.pt", "target_node_type": "user"})
    assert main(["validate", str(path)]) == 0
    assert "ok" in capsys.readouterr().out


@pytest.mark.usefixtures("one_thread")
def test_relation_weights_are_a_fixed_lsp_parameter(tmp_path: Path) -> None:
    from study.config import load_study_spec, resolve_trial

    weights = {"friend": 1.0, "disputes": 2.0}
    spec = load_study_spec(
        write(tmp_path, "weighted", method_defaults={"lsp": {"relation_weights": weights}})
    )
    plan = resolve_trial(spec, {"method": "lsp", "seed": 0, "student.arch": "rgcn"})
    assert plan.distill.params["relation_weights"] == weights
    assert plan.params["lsp.relation_weights"] == weights
    # Unset, the key is absent: LSP trials of other studies keep their config ids.
    plain = load_study_spec(write(tmp_path, "plain"))
    plan = resolve_trial(plain, {"method": "lsp", "seed": 0, "student.arch": "rgcn"})
    assert "lsp.relation_weights" not in plan.params
    assert "relation_weights" not in plan.distill.params
