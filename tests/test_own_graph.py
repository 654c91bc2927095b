"""Bring your own graph and models: a real local Ray study on a user's graph (function and file
forms), a user's teacher from its own checkpoint and a user's student with a searched option;
and every bad input refused before anything starts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import ray
import torch
import yaml
from mlflow.tracking import MlflowClient

from study import tracking as tr
from study.cli import main
from study.runner import run_study
from tests.own_models import own_study, write_own_study, write_user_files


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("own")
    facts = write_user_files(folder)
    assert facts["test_accuracy"] > 0.7  # the user's teacher learned something
    return folder


@pytest.mark.ray
def test_a_study_on_a_users_graph_teacher_and_student(user_dir: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    study = write_own_study(user_dir, "own-factory")
    path_study = user_dir / "own-path.yaml"
    path_study.write_text(
        yaml.safe_dump(
            own_study(
                "own-path",
                dataset={"path": "graph.pt", "metric": "macro_f1"},
                methods=["fitnet"],
                searcher={"algorithm": "random", "num_samples": 1, "seed": 0},
            )
        )
    )
    try:
        outcome = run_study(study, tracking_uri=uri, storage=tmp_path / "studies")
        # The user's module travelled to the workers with the job's runtime environment.
        modules = ray.get_runtime_context().runtime_env.get("py_modules", [])
        assert len(modules) == 1
        second = run_study(path_study, tracking_uri=uri, storage=tmp_path / "studies")
    finally:
        ray.shutdown()
    assert outcome.complete and len(outcome.trials) == 3
    assert second.complete and len(second.trials) == 1

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("own-factory")
    runs = client.search_runs([exp.experiment_id])
    (teacher,) = [r for r in runs if r.data.tags[tr.TAG_ROLE] == tr.ROLE_TEACHER]
    # The checkpoint was used, not a teacher trained: no training time, the user's accuracy.
    assert tr.METRIC_TRAIN_SECONDS not in teacher.data.metrics
    assert teacher.data.tags["arch"] == "gds_own_a:teacher"
    trials = [r for r in runs if r.data.tags[tr.TAG_ROLE] == tr.ROLE_TRIAL]
    assert len(trials) == 3
    widths = set()
    for run in trials:
        assert run.info.status == "FINISHED"
        assert run.data.tags[tr.TAG_DATASET] == "gds_own_a:load_graph"
        assert run.data.tags[tr.TAG_STUDENT_ARCH] == "gds_own_a:student"
        widths.add(run.data.params["student.options.hidden_channels"])
        for key in (tr.METRIC_VAL, tr.METRIC_TEST, tr.METRIC_LATENCY_P50, tr.METRIC_PARAMS):
            assert key in run.data.metrics, key
        assert 0.0 <= run.data.metrics[tr.METRIC_TEST] <= 1.0
        config = client.download_artifacts(run.info.run_id, "student/config.json", str(tmp_path))
        spec = json.loads(Path(config).read_text())["spec"]
        assert spec["factory"] == "gds_own_a:student" and spec["hidden"] == ["conv1"]
        width = run.data.params["student.options.hidden_channels"]
        assert spec["options"]["hidden_channels"] == int(width)
    assert widths <= {"4", "8"}

    (fitnet,) = [
        r
        for r in client.search_runs([client.get_experiment_by_name("own-path").experiment_id])
        if r.data.tags[tr.TAG_ROLE] == tr.ROLE_TRIAL
    ]
    assert fitnet.data.tags[tr.TAG_DATASET] == "graph"
    assert fitnet.data.params["method"] == "fitnet" and fitnet.info.status == "FINISHED"


def _copy(user_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    """The user's files in a folder of the test's own, the module under a name of its own: a
    process keeps the first module of a name (and refuses another folder's, see catalog)."""
    folder = tmp_path / "study"
    shutil.copytree(user_dir, folder)
    module = f"gds_own_{tmp_path.name.replace('-', '_')}"
    (folder / "gds_own_a.py").rename(folder / f"{module}.py")
    return folder, module


def _renamed(obj: object, module: str) -> object:
    return json.loads(json.dumps(obj).replace("gds_own_a", module))


BAD_CASES = {
    "module that does not import": (
        {"dataset": {"factory": "gds_no_such_module:load_graph"}},
        "dataset.factory",
        "cannot import module 'gds_no_such_module'",
    ),
    "missing function": (
        {"teacher": {**own_study("x")["teacher"], "factory": "gds_own_a:no_teacher"}},
        "teacher.factory",
        "has no 'no_teacher'",
    ),
    "option the callable does not take": (
        {"student": {**own_study("x")["student"], "options": {"hidden_chanels": 4}}},
        "student.options.hidden_chanels",
        "takes no option 'hidden_chanels' (valid: in_channels, out_channels, hidden_channels)",
    ),
    "searched option the callable does not take": (
        {"search": {"student.options.depth": {"choice": [1, 2]}}},
        "student.options.depth",
        "takes no option 'depth'",
    ),
    "dataset option the function does not take": (
        {"dataset": {"factory": "gds_own_a:load_graph", "options": {"nodes": 5}}},
        "dataset.options.nodes",
        "takes no option 'nodes' (valid: num_nodes, seed)",
    ),
    "checkpoint whose keys do not fit": (
        {"teacher": {**own_study("x")["teacher"], "options": {"hidden_channels": 16}}},
        "teacher.checkpoint",
        "checkpoint keys do not fit Teacher",
    ),
    "hidden name that does not exist": (
        {"teacher": {**own_study("x")["teacher"], "hidden": ["conv3"]}},
        "teacher.hidden",
        "Teacher has no submodule 'conv3' (valid: conv1",
    ),
    "forward that raises": (
        {"student": {"factory": "gds_own_a:broken_student", "hidden": ["conv1"]}},
        "student.factory",
        "Broken.forward(x, edge_index) raised RuntimeError: bad multiline",
    ),
    "in_channels among the options": (
        {"student": {**own_study("x")["student"], "options": {"in_channels": 7}}},
        "student.options.in_channels",
        "in_channels comes from the task, not from options",
    ),
    "layer_map beyond the hidden layers": (
        {"method_defaults": {"lsp": {"layer_map": [[3, 0]]}}},
        "method_defaults.lsp.layer_map[0]",
        "within the student's 1 and the teacher's 1 hidden layers, got [3, 0]",
    ),
    "edge_attention with a student without attention layers": (
        {"methods": ["none", "edge_attention"]},
        "student",
        "exposes none (expected a gat student or a factory model with GATConv layers)",
    ),
    "student output width": (
        {"student": {"factory": "gds_own_a:wrong_width_student", "hidden": ["conv1"]}},
        "student.factory",
        "the task has 2 classes, so expected [120, 2]",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_user_code_is_refused_before_anything_starts(
    case: str, user_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides, key, expected = BAD_CASES[case]
    folder, module = _copy(user_dir, tmp_path)
    path = write_own_study(folder, "bad", module=module, **_renamed(overrides, module))
    storage, store = tmp_path / "studies", tmp_path / "mlflow.db"
    for argv in (
        ["validate", str(path)],
        ["run", str(path), "--storage", str(storage), "--tracking-uri", f"sqlite:///{store}"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0, err
        assert err.startswith(f"distill-study {argv[0]}: error: {path}: {key}: "), err
        assert expected in err, err
    assert not ray.is_initialized() and not store.exists() and not storage.exists()


BAD_FILES = {
    "an auroc headline without positives in validation": ("val-one-class", "auroc needs"),
    "not one of the two shapes": ([1, 2, 3], "expected a torch_geometric Data"),
    "a mask missing": ("drop:val_mask", "val_mask: missing (expected a bool tensor [120])"),
    "masks that overlap": ("overlap", "train_mask and test_mask overlap in"),
    "a mask that does not match x": ("short:test_mask", "test_mask: expected a bool tensor [120]"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_dataset_files_are_refused_before_anything_starts(
    case: str, user_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content, expected = BAD_FILES[case]
    folder, module = _copy(user_dir, tmp_path)
    data = torch.load(folder / "graph.pt", weights_only=False)
    if content == "overlap":
        data.test_mask = data.test_mask | data.train_mask
        content = data
    elif content == "val-one-class":
        data.val_mask = data.val_mask & (data.y == 0)
        content = data
    elif isinstance(content, str):
        action, key = content.split(":")
        if action == "drop":
            del data[key]
        else:
            data[key] = data[key][:-1]
        content = data
    torch.save(content, folder / "graph.pt")
    dataset = {"path": "graph.pt", "metric": "auroc"}
    path = write_own_study(folder, "badfile", module=module, dataset=dataset)
    store = tmp_path / "mlflow.db"
    assert main(["run", str(path), "--tracking-uri", f"sqlite:///{store}"]) == 2
    err = capsys.readouterr().err.strip()
    key = "dataset.metric" if "auroc" in expected else f"dataset.path: {folder}/graph.pt"
    assert err.startswith(f"distill-study run: error: {path}: {key}"), err
    assert expected in err and err.count("\n") == 0, err
    assert not ray.is_initialized() and not store.exists()


def test_a_checkpoint_under_other_hidden_names_is_another_teacher_run(user_dir: Path) -> None:
    from study.config import load_study_spec
    from study.context import load_study_task
    from study.runner import teacher_run_hash

    spec = load_study_spec(write_own_study(user_dir, "hash-a"))
    task = load_study_task(spec, None)
    again = load_study_spec(write_own_study(user_dir, "hash-b"))
    other = load_study_spec(
        write_own_study(
            user_dir, "hash-c", teacher={**own_study("x")["teacher"], "hidden": ["conv1"]}
        )
    )
    assert teacher_run_hash(spec, task) == teacher_run_hash(again, task)  # the name is no part
    assert teacher_run_hash(spec, task) != teacher_run_hash(other, task)
