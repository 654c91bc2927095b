"""``distill-study select``: a real Cora study on a real Ray, then selection, export, registry."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import ray
import torch
import yaml
from mlflow.tracking import MlflowClient

from study import export
from study import tracking as tr
from study.cli import main
from study.data import load_task
from study.errors import UserInputError
from study.models import build_model
from study.runner import run_study
from study.select import ROLE_SELECTION, NoConfigWithinBudget, choose_config, pick_seed_run
from tests.mlflow_fixtures import fill_study
from tests.studies import tiny_study

STUDY = "select_archs"
MODEL = f"{STUDY}-student"


# --------------------------------------------------------------------------------------------
# choose_config / pick_seed_run on hand-made frames
# --------------------------------------------------------------------------------------------
def _summary() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "config_id": ["a", "d", "b", "c", "e", "f"],
            "method": ["none", "kd", "kd", "lsp", "kd", "none"],
            "val_score_mean": [0.80, 0.80, 0.80, 0.90, 0.99, float("nan")],
            # The test score never enters the choice: here it would pick others everywhere.
            "test_score_mean": [0.99, 0.10, 0.20, 0.10, 0.99, 0.99],
            "latency_ms_p50_mean": [2.0, 1.0, 1.0, 5.0, float("nan"), 0.1],
        }
    )


@pytest.mark.parametrize(
    ("budget", "chosen"),
    [
        (1.0, "b"),  # inclusive; b and d tie on val score and latency: the smaller config_id
        (3.0, "b"),  # a has b's val score (and a better test score) but a higher latency
        (5.0, "c"),  # the best val score once it fits
        (100.0, "c"),  # e has no latency and f no val score: they never compete
    ],
)
def test_choose_config_best_score_within_budget(budget: float, chosen: str) -> None:
    row = choose_config(_summary(), budget)
    assert row["config_id"] == chosen
    assert "_lat" not in row.index
    assert row["method"] == _summary().set_index("config_id").loc[chosen, "method"]


def test_choose_config_nothing_within_budget_names_the_fastest() -> None:
    with pytest.raises(NoConfigWithinBudget) as info:
        choose_config(_summary(), 0.5)
    # b and d are the fastest with a score (f has none); equal scores: the smaller config_id.
    assert info.value.fastest["config_id"] == "b"
    assert "b (" in str(info.value) and "1.000 ms" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("budget", [0.0, -1.0, float("nan"), float("inf")])
def test_choose_config_refuses_bad_budgets(budget: float) -> None:
    with pytest.raises(UserInputError, match="max-latency-ms"):
        choose_config(_summary(), budget)


def test_pick_seed_run_best_val_then_smaller_seed() -> None:
    trials = pd.DataFrame(
        {
            "run_id": ["r1", "r2", "r3", "r4"],
            "config_id": ["x", "x", "x", "y"],
            "seed": [2, 1, 0, 0],
            "val_score": [0.7, 0.7, 0.6, 0.99],
        }
    )
    assert pick_seed_run(trials, "x")["run_id"] == "r2"
    with pytest.raises(UserInputError):
        pick_seed_run(trials, "z")


# --------------------------------------------------------------------------------------------
# A real MLflow store where validation and test disagree
# --------------------------------------------------------------------------------------------
def _val_test_disagree(uri: str, tmp_path: Path) -> dict:
    """Study ``disagree``: ``val_best`` has the best mean validation score (2 seeds), ``test_best``
    the best mean test score; both within 5 ms. Every trial logs a small student artifact."""

    def trials(cfg: str, vals: list[float], tests: list[float], lat: float) -> list[dict]:
        return [
            {
                "method": "kd",
                "dataset": "cora",
                "seed": seed,
                "config_id": cfg,
                "params": {"kd.temperature": 4.0 if cfg == "val_best" else 2.0},
                "metrics": {
                    tr.METRIC_VAL: v,
                    tr.METRIC_TEST: t,
                    tr.METRIC_LATENCY_P50: lat,
                    tr.METRIC_LATENCY_P90: lat + 1.0,
                    tr.METRIC_PARAMS: 100.0,
                },
            }
            for seed, (v, t) in enumerate(zip(vals, tests, strict=True))
        ]

    ids = fill_study(
        uri,
        "disagree",
        [
            *trials("val_best", [0.82, 0.80], [0.70, 0.72], 3.0),  # val 0.81, test 0.71
            *trials("test_best", [0.79, 0.81], [0.90, 0.88], 2.0),  # val 0.80, test 0.89
        ],
    )
    client = MlflowClient(uri)
    for i, run_id in enumerate(ids["trial_run_ids"]):
        model = build_model("mlp", in_channels=8, out_channels=3, width=4, depth=2)
        folder = export.export_student(model, tmp_path / f"student{i}", metadata={"i": i})
        client.log_artifacts(run_id, str(folder), artifact_path=tr.STUDENT_ARTIFACT_DIR)
    return ids


def test_select_chooses_on_validation_not_test(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ids = _val_test_disagree(uri, tmp_path)
    out = tmp_path / "export"
    code = _select(uri, 5.0, out, study="disagree")
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "chosen configuration val_best " in printed
    assert "val score:       81.00%" in printed and "test score:      71.00%" in printed
    assert export.read_config(out)["metadata"]["i"] == 0  # seed 0: the better val_score
    client = MlflowClient(uri)
    (version,) = client.search_model_versions("name='disagree-student'")
    assert version.tags["config_id"] == "val_best"
    assert float(version.tags["val_score"]) == pytest.approx(0.81)
    assert float(version.tags["test_score"]) == pytest.approx(0.71)
    assert ids["config_ids"][0] == "val_best"

    # Within a budget only test_best fits: it is chosen, whatever its scores.
    assert _select(uri, 2.5, tmp_path / "fast", study="disagree") == 0
    assert "chosen configuration test_best " in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# A real study
# --------------------------------------------------------------------------------------------
@dataclass
class Ran:
    uri: str
    root: Path
    data_root: Path


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory, gds_data_root: Path) -> Ran:
    """A 6-trial Cora study: one GAT teacher, gat/gcn/mlp students x none/kd, 5 epochs each."""
    root = tmp_path_factory.mktemp("select")
    uri = f"sqlite:///{root}/mlflow.db"
    study = tiny_study(
        STUDY,
        dataset={"name": "cora"},
        student={
            "arch": "gat",
            "width": 4,
            "depth": 2,
            "heads": 2,
            "dropout": 0.0,
            "train": {"epochs": 5, "lr": 0.01},
        },
        methods=["none", "kd"],
        search={"student.arch": {"choice": ["gat", "gcn", "mlp"]}},
        searcher={"algorithm": "grid", "num_samples": 1, "max_concurrent": 2},
    )
    path = root / f"{STUDY}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # MLflow's default artifact root (./mlruns) goes under tmp
        try:
            outcome = run_study(
                path, tracking_uri=uri, storage=root / "studies", data_root=str(gds_data_root)
            )
        finally:
            ray.shutdown()
    assert outcome.complete and len(outcome.trials) == 6
    return Ran(uri=uri, root=root, data_root=gds_data_root)


def _configs(client: MlflowClient) -> dict[str, dict]:
    """Mean val and test score and p50 latency per config_id, from the raw MLflow runs."""
    exp = client.get_experiment_by_name(STUDY)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{tr.TAG_ROLE}` = 'trial'")
    out: dict[str, dict] = {}
    for run in runs:
        if run.info.status != "FINISHED":
            continue
        c = out.setdefault(
            run.data.tags[tr.TAG_CONFIG_ID], {"val": [], "test": [], "lat": [], "runs": []}
        )
        c["val"].append(run.data.metrics[tr.METRIC_VAL])
        c["test"].append(run.data.metrics[tr.METRIC_TEST])
        c["lat"].append(run.data.metrics[tr.METRIC_LATENCY_P50])
        c["runs"].append(run)
    for c in out.values():
        c["val"] = sum(c["val"]) / len(c["val"])
        c["test"] = sum(c["test"]) / len(c["test"])
        c["lat"] = sum(c["lat"]) / len(c["lat"])
    return out


def _select(uri: str, budget: float, out: Path, study: str = STUDY) -> int:
    args = ["select", study, "--max-latency-ms", str(budget), "--tracking-uri", uri]
    return main([*args, "--out", str(out)])


def _versions(client: MlflowClient) -> list:
    return list(client.search_model_versions(f"name='{MODEL}'"))


def _logits(model: torch.nn.Module, data_root: Path) -> torch.Tensor:
    graph = load_task("cora", root=str(data_root)).test[0]
    with torch.no_grad():
        out = model(graph.x, graph.edge_index)
    return out.logits if hasattr(out, "logits") else out


@pytest.mark.ray
def test_select_exports_and_registers_the_best_within_budget(
    ran: Ran, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    client = MlflowClient(ran.uri)
    configs = _configs(client)
    assert len(configs) == 6
    lats = sorted(c["lat"] for c in configs.values())
    assert lats[0] < lats[-1], "the architectures should differ in latency"
    budget = (lats[0] + lats[-1]) / 2
    within = {k: c for k, c in configs.items() if c["lat"] <= budget}
    best_score = max(c["val"] for c in within.values())
    expected = min(
        (k for k, c in within.items() if c["val"] == best_score),
        key=lambda k: (within[k]["lat"], k),
    )

    out = tmp_path / "export"
    code = _select(ran.uri, budget, out)
    printed = capsys.readouterr().out
    assert code == 0
    assert expected in printed and "p90" in printed and "vs teacher" in printed
    chosen = configs[expected]
    assert chosen["lat"] <= budget

    # The export reloads and predicts exactly as the trial's own student artifact.
    (trial_run,) = chosen["runs"]  # one seed
    cfg = export.read_config(out)
    assert cfg["metadata"]["config_id"] == expected
    assert trial_run.data.tags[tr.TAG_STUDENT_ARCH] in printed
    assert cfg["spec"]["arch"] == trial_run.data.tags[tr.TAG_STUDENT_ARCH]
    own = client.download_artifacts(trial_run.info.run_id, tr.STUDENT_ARTIFACT_DIR, str(tmp_path))
    got = _logits(export.load(out), ran.data_root)
    want = _logits(export.load(own), ran.data_root)
    assert torch.equal(got, want)
    assert cfg["torchscript"]["available"]  # every node student scripts (test_export)
    assert torch.allclose(_logits(export.load_torchscript(out), ran.data_root), want, atol=1e-5)

    # One registered version, from the selection run's model/ artifacts, with the tags.
    (version,) = _versions(client)
    teacher_id = trial_run.data.tags[tr.TAG_TEACHER_RUN]
    assert version.tags["study"] == STUDY and version.tags["config_id"] == expected
    assert version.tags["teacher_run_id"] == teacher_id
    assert version.tags["method"] == trial_run.data.tags[tr.TAG_METHOD]
    assert version.tags["student_arch"] == trial_run.data.tags[tr.TAG_STUDENT_ARCH]
    assert math.isclose(float(version.tags["latency_ms_p50"]), chosen["lat"], rel_tol=1e-5)
    assert math.isclose(float(version.tags["test_score"]), chosen["test"], rel_tol=1e-5)
    assert math.isclose(float(version.tags["val_score"]), chosen["val"], rel_tol=1e-5)
    sel = client.get_run(version.run_id)
    assert sel.data.tags[tr.TAG_ROLE] == ROLE_SELECTION
    assert sel.info.experiment_id == client.get_experiment_by_name(STUDY).experiment_id
    assert sel.data.params["config_id"] == expected
    assert float(sel.data.params["max_latency_ms"]) == pytest.approx(budget, rel=1e-5)
    assert version.source.rstrip("/").endswith("/model")
    logged = {a.path for a in client.list_artifacts(sel.info.run_id, "model")}
    assert {"model/weights.pt", "model/config.json"} <= logged

    # The loss against the teacher, in points.
    teacher_test = client.get_run(teacher_id).data.metrics[tr.METRIC_TEST]
    assert f"{(teacher_test - chosen['test']) * 100:.2f} points" in printed

    # An existing, non-empty --out is refused (exit 2) and nothing new is registered.
    assert _select(ran.uri, budget, out) == 2
    assert "not empty" in capsys.readouterr().err
    assert len(_versions(client)) == 1


@pytest.mark.ray
def test_select_below_the_fastest_writes_nothing(
    ran: Ran, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    client = MlflowClient(ran.uri)
    configs = _configs(client)
    fastest = min(configs, key=lambda k: (configs[k]["lat"], -configs[k]["val"], k))
    before = len(_versions(client))
    exp = client.get_experiment_by_name(STUDY)
    n_runs = len(client.search_runs([exp.experiment_id]))
    out = tmp_path / "export"
    budget = configs[fastest]["lat"] / 2
    code = _select(ran.uri, budget, out)
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1 and fastest in err
    assert not out.exists()
    assert len(_versions(client)) == before
    assert len(client.search_runs([exp.experiment_id])) == n_runs


@pytest.mark.ray
def test_select_unknown_study_is_a_user_error(
    ran: Ran, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "export"
    code = _select(ran.uri, 5.0, out, study="nope")
    err = capsys.readouterr().err.strip()
    assert code == 2 and "'nope'" in err and STUDY in err
    assert not out.exists()
