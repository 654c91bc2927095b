"""Mini-batch mode in a study: bad keys refused before anything starts, a graph too large for
full batch refused with the keys to set, and a real local Ray study trained on sampled batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import torch
from mlflow.tracking import MlflowClient

from study import tracking as tr
from study.cli import main
from study.config import resolve_trial
from study.errors import UserInputError
from study.mapped import INDEX_FILE
from study.preflight import check_fits_full_batch
from study.runner import load_study, run_study
from study.teacher_outputs import teacher_outputs_path
from tests.studies import tiny_study, write_study

MINI = {"batch_size": 64, "num_neighbors": [4, 3], "epochs": 2}


def _train(role: str, **train: object) -> dict:
    study = tiny_study("x")
    return {**study[role], "train": {**study[role]["train"], **train}}


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"student": _train("student", num_neighbors=[4, 0])}, "student.train.num_neighbors[1]"),
        ({"student": _train("student", num_neighbors=[4, 2.5])}, "student.train.num_neighbors[1]"),
        ({"teacher": _train("teacher", num_neighbors=[])}, "teacher.train.num_neighbors"),
        ({"student": _train("student", **{**MINI, "batch_size": 0})}, "student.train.batch_size"),
        ({"student": _train("student", num_neighbors=[4, 3, 2])}, "one fan-out per layer"),
        ({"teacher": _train("teacher", num_neighbors=[4])}, "(2 layers), got [4]"),
        (
            {
                "student": _train("student", **MINI),
                "methods": ["none", "edge_attention"],
                "search": {},
            },
            "edge_attention trains full batch only",
        ),
        (
            {
                "student": _train("student", **MINI),
                "search": {"student.depth": {"choice": [2, 3]}},
            },
            "student.train.num_neighbors: expected one fan-out per layer of the student (3",
        ),
        (
            {"search": {"student.num_neighbors": {"choice": [[4, 3], [4, 0]]}}},
            "search.student.num_neighbors.choice[1][1]: expected an integer >= 1, got 0",
        ),
        (
            {"search": {"student.num_neighbors": {"int": [1, 4]}}},
            "search.student.num_neighbors: int does not fit a list; use {choice: [...]}",
        ),
        (
            {"search": {"student.num_neighbors": {"choice": [4]}}},
            "search.student.num_neighbors.choice[0]: expected a list of fan-outs",
        ),
        (
            {"search": {"student.num_neighbors": {"choice": [[4, 3], [5, 3, 2]]}}},
            "search.student.num_neighbors.choice[1]: expected one fan-out per layer of the "
            "student (2 layers), got [5, 3, 2]",
        ),
        (
            {
                "search": {
                    "student.depth": {"choice": [2, 3]},
                    "student.num_neighbors": {"choice": [[4, 3]]},
                }
            },
            "(3 layers), got [4, 3] (2 entries); search.student.depth and this fan-out",
        ),
    ],
)
def test_bad_minibatch_keys_are_one_line_and_start_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    override: dict,
    needle: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(tr.TRACKING_URI_ENV, raising=False)
    path = write_study(tmp_path, "bad", **override)
    assert main(["run", str(path), "--storage", str(tmp_path / "studies")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and str(path) in err, err
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "studies").exists()
    assert not ray.is_initialized()


def test_graph_too_large_for_full_batch_is_refused_with_the_keys_to_set(tmp_path: Path) -> None:
    from study.preflight import load_and_check

    path = write_study(tmp_path, "big")
    spec, _ = load_study(path)
    task = load_and_check(spec, None)
    edges = int(task.train[0].edge_index.shape[1])
    with pytest.raises(UserInputError) as err:
        check_fits_full_batch(spec, task, available=edges * 100)  # 100 bytes per edge free
    text = str(err.value)
    assert text.startswith(f"{path}: teacher.train: full-batch training on {edges:,} edges")
    assert "teacher.train.num_neighbors" in text and "teacher.train.batch_size" in text
    check_fits_full_batch(spec, task, available=edges * 10_000)  # enough: no error
    # Mini-batch roles are not estimated: only the full-batch student is left to refuse.
    spec, _ = load_study(write_study(tmp_path, "half", teacher=_train("teacher", **MINI)))
    with pytest.raises(UserInputError, match=r"student\.train: full-batch"):
        check_fits_full_batch(spec, task, available=edges * 100)


def test_searched_fanouts_parse_to_text_choices_and_resolve_per_trial(tmp_path: Path) -> None:
    search = {"student.num_neighbors": {"choice": [[4, 3], "[2, 2]"]}}  # a list or its text
    spec, _ = load_study(write_study(tmp_path, "fan", search=search))
    (dim,) = spec.search
    assert dim.args == ("[4, 3]", "[2, 2]")  # plain values for the searcher
    assert spec.student.train.num_neighbors == (4, 3)  # mini-batch mode on: the first choice
    plan = resolve_trial(spec, {"method": "lsp", "seed": 0, "student.num_neighbors": "[2, 2]"})
    assert plan.student_train.num_neighbors == (2, 2)
    assert plan.params["student.num_neighbors"] == [2, 2]  # logged as the list [2, 2]
    other = resolve_trial(spec, {"method": "lsp", "seed": 0, "student.num_neighbors": "[4, 3]"})
    assert other.config_id != plan.config_id
    with pytest.raises(UserInputError, match=r"params\.student\.num_neighbors: expected one of"):
        resolve_trial(spec, {"method": "lsp", "seed": 0, "student.num_neighbors": "[3, 3]"})
    # Not searched: the params and config ids of existing studies are unchanged.
    fixed, _ = load_study(write_study(tmp_path, "fixed", search={}))
    assert "student.num_neighbors" not in resolve_trial(fixed, {"method": "lsp", "seed": 0}).params


@ray.remote(num_cpus=0)
def _mapping_of(tensor: torch.Tensor) -> str:
    """The line of the worker's memory map that holds ``tensor``'s data."""
    ptr = tensor.untyped_storage().data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
        if lo <= ptr < hi:
            return line
    return "not mapped"


@pytest.mark.ray
def test_minibatch_study_on_a_local_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GDS_CACHE_DIR", str(tmp_path / "cache"))  # workers get GDS_* too
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = write_study(
        tmp_path,
        "mini",
        teacher=_train("teacher", **MINI),
        student=_train("student", **MINI),
        methods=["kd", "lsp"],
        search={
            "student.batch_size": {"choice": [32, 64]},
            "student.num_neighbors": {"choice": [[4, 3], [2, 2]]},
        },
        searcher={"algorithm": "random", "num_samples": 2, "max_concurrent": 2, "seed": 0},
    )
    try:
        outcome = run_study(path, tracking_uri=uri, storage=tmp_path / "studies")
        # The study's Ray hands tensors to workers without a copy: they read the object store.
        mapping = ray.get(_mapping_of.remote(torch.zeros(1 << 18)))
    finally:
        ray.shutdown()
    assert "plasma" in mapping, mapping
    assert outcome.complete and len(outcome.trials) == 2, outcome.trials
    client = MlflowClient(uri)
    fanouts: set[str] = set()
    for row in outcome.trials:
        run = client.get_run(row["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        assert 0.0 <= run.data.metrics[tr.METRIC_VAL] <= 1.0
        assert run.data.params["student.batch_size"] in ("32", "64")
        fanouts.add(run.data.params["student.num_neighbors"])
        history = client.get_metric_history(run.info.run_id, "distill_loss")
        assert history and all(m.value > 0 for m in history)
    assert fanouts == {"[4, 3]", "[2, 2]"}  # the searcher's seed gives the trials both
    # The teacher's outputs were computed once for the study and shared by both trials.
    cached = [p for p in (tmp_path / "cache" / "teacher-outputs").iterdir() if p.is_dir()]
    key = f"-{outcome.teacher_run_id}"
    assert len(cached) == 1 and cached[0].name.endswith(key)
    assert cached[0] == teacher_outputs_path(cached[0].name, tmp_path / "cache" / "teacher-outputs")
    assert (cached[0] / INDEX_FILE).is_file()  # sealed: every array written
