"""layer_map: the uniform rule, searching it, and every map checked against both models' depths
when a study is validated (one line naming the file and the key, exit 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from study.cli import main
from study.config import parse_study_spec, resolve_trial
from study.distill.methods import build_method
from study.layer_map import resolve_layer_map, uniform_layer_map
from tests.studies import tiny_study

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("teacher", "student", "expected"),
    [
        (5, 2, ((0, 2), (1, 4))),  # round(2.5) = 3 (halves up) and round(5) = 5, minus one
        (3, 3, ((0, 0), (1, 1), (2, 2))),  # same depth: the identity
        (6, 2, ((0, 2), (1, 5))),  # every third teacher layer
        (2, 5, ((0, 0), (1, 0), (2, 0), (3, 1), (4, 1))),  # deeper student: never below 0
    ],
)
def test_uniform_pairs_every_nth_teacher_layer(
    teacher: int, student: int, expected: tuple[tuple[int, int], ...]
) -> None:
    assert uniform_layer_map(student, teacher) == expected
    assert resolve_layer_map("uniform", student, teacher) == expected


def test_named_and_explicit_maps_resolve_or_say_which_pair_is_out() -> None:
    assert resolve_layer_map("last", 2, 5) == ((1, 4),)
    assert resolve_layer_map(((0, -2), (-1, -1)), 2, 5) == ((0, 3), (1, 4))
    with pytest.raises(ValueError, match=r"pair \[1\] = \[0, 12\] is outside"):
        resolve_layer_map(((0, 0), (0, 12)), 2, 5)


@pytest.mark.parametrize("value", ["every", [[0]], [], [[True, 1]], 3])
def test_a_malformed_map_is_one_line_at_its_key(value: object) -> None:
    from study.errors import UserInputError

    study = tiny_study("maps", method_defaults={"lsp": {"layer_map": value}})
    with pytest.raises(UserInputError) as err:
        parse_study_spec(study, "s.yaml")
    assert str(err.value).startswith(
        "s.yaml: method_defaults.lsp.layer_map: expected last, uniform or a list of "
        "[student layer, teacher layer] pairs, got "
    )


def _write(tmp_path: Path, **overrides: Any) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tiny_study("maps", **overrides), sort_keys=False))
    return path


def _refused(capsys: pytest.CaptureFixture, path: Path, *needles: str) -> str:
    code = main(["validate", str(path)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    for needle in (str(path), *needles):
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_a_layer_map_past_the_depths_is_refused_by_validate(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    path = _write(tmp_path, method_defaults={"lsp": {"layer_map": [[0, 12]]}})
    _refused(
        capsys,
        path,
        "method_defaults.lsp.layer_map[0]",
        "the teacher's 1 hidden layers, got [0, 12]",
    )


def test_a_searched_student_depth_is_checked_too(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    # Fine for a student of depth 3 (two hidden layers), not for the searched depth 2 (one).
    path = _write(
        tmp_path,
        student={**tiny_study("x")["student"], "depth": 3},
        method_defaults={"lsp": {"layer_map": [[1, 0]]}},
        search={"student.depth": {"choice": [3, 2]}},
    )
    _refused(capsys, path, "method_defaults.lsp.layer_map[0]", "within the student's 1")


def test_layer_map_is_a_search_choice_checked_choice_by_choice(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    choices = ["last", "uniform", [[0, 0]], [[0, 5]]]
    path = _write(tmp_path, search={"lsp.layer_map": {"choice": choices}})
    _refused(capsys, path, "search.lsp.layer_map.choice[3][0]", "got [0, 5]")

    spec = parse_study_spec(
        tiny_study("maps", search={"lsp.layer_map": {"choice": choices[:3]}}), str(path)
    )
    dim = spec.dimension("lsp.layer_map")
    assert dim is not None and dim.args == ("last", "uniform", "[[0, 0]]")  # plain choices
    for text, value in zip(dim.args, ("last", "uniform", ((0, 0),)), strict=True):
        plan = resolve_trial(spec, {"method": "lsp", "seed": 0, "lsp.layer_map": text})
        assert plan.distill.params["layer_map"] == value
        assert build_method(plan.distill).layer_map == value  # type: ignore[attr-defined]
    assert (
        main(["validate", str(_write(tmp_path, search={"lsp.layer_map": {"choice": choices[:3]}}))])
        == 0
    )


def test_a_searched_map_goes_through_optuna_and_trains(tmp_path: Path) -> None:
    """Optuna samples the map's plain choice; the trial resolves it and edge_attention trains."""
    import optuna
    import torch

    from study.data.base import io_channels
    from study.data.registry import load_task
    from study.models import build_model
    from study.search import suggest
    from study.train import distill_student

    choices = ["last", "uniform", [[0, 0], [1, 1]]]
    study = tiny_study(
        "ea", methods=["edge_attention"], search={"edge_attention.layer_map": {"choice": choices}}
    )
    spec = parse_study_spec(study, str(tmp_path / "ea.yaml"))
    (dim,) = spec.search
    optuna_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for value in dim.args:  # every choice once, through Optuna's categorical distribution
        optuna_study.enqueue_trial({dim.name: value})
    seen = set()
    task = load_task("synthetic_sbm", num_nodes=200, num_features=8)
    torch.manual_seed(0)
    teacher = build_model("gat", width=4, depth=2, heads=2, dropout=0.0, **io_channels(task))
    for _ in dim.args:
        trial = optuna_study.ask()
        value = suggest(trial, dim)
        seen.add(value)
        plan = resolve_trial(spec, {"method": "edge_attention", "seed": 0, dim.name: value})
        student = build_model(plan.student.arch, **plan.student.build_kwargs(), **io_channels(task))
        result = distill_student(student, teacher, task, replace_epochs(plan), plan.distill)
        assert result.history[0]["distill_loss"] > 0.0
        optuna_study.tell(trial, result.val_score)
    assert seen == set(dim.args)


def replace_epochs(plan):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    return replace(plan.student_train, epochs=2)


def test_edge_attention_maps_count_attention_layers_or_one_gradient_layer(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    ea = {"layer_map": [[0, 1]]}  # the GAT teacher has 2 attention layers: fine
    ok = _write(
        tmp_path,
        methods=["none", "edge_attention"],
        search={},
        method_defaults={"edge_attention": ea},
    )
    assert main(["validate", str(ok)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    gradient = {**ea, "teacher_source": "gradient"}  # one importance distribution: no layer 1
    bad = _write(
        tmp_path,
        methods=["none", "edge_attention"],
        search={},
        method_defaults={"edge_attention": gradient},
    )
    _refused(
        capsys,
        bad,
        "method_defaults.edge_attention.layer_map[0]",
        "the teacher's 1 attention layers, got [0, 1]",
    )
