"""Study specs: shipped files validate, trials resolve, hashes are stable, bad input is one line."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

import pytest

from study.config import (
    ARCHS,
    DATASETS,
    DIRECTIONS,
    KERNELS,
    METHODS,
    PRESET_ARCH,
    FaultToleranceSpec,
    config_id,
    grid_configs,
    load_study_spec,
    parse_study_spec,
    resolve_trial,
    stable_hash,
    teacher_hash,
)
from study.errors import UserInputError
from study.train import DistillConfig, TrainConfig

SEARCH_SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
SHIPPED = sorted(SEARCH_SPACES.glob("*.yaml"))
SRC = "study.yaml"


def base() -> dict[str, Any]:
    """A small valid study as loaded from YAML."""
    return {
        "name": "unit",
        "dataset": {"name": "cora"},
        "teacher": {"arch": "gat", "width": 8, "heads": 8, "train": {"epochs": 5, "seed": 3}},
        "student": {"arch": "gat", "width": 4, "heads": 2, "train": {"epochs": 5, "lr": 0.01}},
        "methods": ["none", "kd", "lsp"],
        "method_defaults": {"lsp": {"lambda": 50.0, "sigma": 2.0}, "kd": {"alpha": 0.5}},
        "search": {
            "lsp.lambda": {"loguniform": [1.0, 1000.0]},
            "kd.temperature": {"uniform": [1.0, 8.0]},
            "student.width": {"choice": [4, 16]},
            "student.lr": {"loguniform": [1.0e-3, 1.0e-1]},
        },
        "seeds": [0, 1],
        "searcher": {"algorithm": "tpe", "num_samples": 4},
    }


def spec_with(**changes: Any):
    data = base()
    data.update(changes)
    return parse_study_spec(data, SRC)


# --------------------------------------------------------------------------------- shipped files


def test_shipped_files_exist():
    names = {p.name for p in SHIPPED}
    assert {
        "quickstart.yaml",
        "ppi_methods.yaml",
        "modelnet40_methods.yaml",
        "modelnet40_kernels.yaml",
        "modelnet40_students.yaml",
        "cora_pareto.yaml",
    } <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_file_validates_and_resolves(path: Path):
    spec = load_study_spec(path)
    assert spec.name == path.stem
    assert spec.num_trials >= 1
    if spec.searcher.algorithm == "grid":
        configs = grid_configs(spec)
        ids = {resolve_trial(spec, {**c, "seed": spec.seeds[0]}).config_id for c in configs}
        assert len(ids) == len(configs)  # the grid holds no duplicate configuration


def test_shipped_grid_sizes():
    # Table 2 and 4: five methods; Table 5: four kernels; Table 6: 2 methods x (2 x 2 x 3).
    sizes = {p.stem: load_study_spec(p).num_trials for p in SHIPPED}
    assert sizes["ppi_methods"] == 5 * 3
    assert sizes["modelnet40_methods"] == 5 * 3
    assert sizes["modelnet40_kernels"] == 4 * 3
    assert sizes["modelnet40_students"] == 2 * 12 * 2
    assert load_study_spec(SEARCH_SPACES / "cora_pareto.yaml").metrics == [
        "val_score",
        "latency_ms_p50",
    ]


def test_name_constants_match_the_registries():
    distill = pytest.importorskip("study.distill.registry")
    models = pytest.importorskip("study.models.registry")
    data = pytest.importorskip("study.data.registry")
    assert set(METHODS) == set(distill.METHODS)
    assert set(KERNELS) == set(distill.KERNEL_NAMES)
    assert set(DIRECTIONS) == set(distill.DIRECTIONS)
    assert set(ARCHS) == set(models.ARCHITECTURES)
    presets = {p: arch for arch, ps in models._PRESETS.items() for p in ps}
    assert PRESET_ARCH == presets
    assert set(DATASETS) == set(data.DATASETS)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_models_build(path: Path):
    models = pytest.importorskip("study.models.registry")
    spec = load_study_spec(path)
    plans = [spec.student.model]
    if spec.searcher.algorithm == "grid":
        plans += [
            resolve_trial(spec, {**c, "seed": spec.seeds[0]}).student for c in grid_configs(spec)
        ]
    for model in [spec.teacher.model, *plans]:
        net = models.build_model(model.arch, in_channels=5, out_channels=3, **model.build_kwargs())
        assert models.count_parameters(net) > 0


# --------------------------------------------------------------------------------- resolve_trial


def test_resolve_lsp_merges_builtin_file_and_sampled_values():
    spec = spec_with()
    plan = resolve_trial(
        spec,
        {
            "method": "lsp",
            "lsp.lambda": 12.5,
            "kd.temperature": 3.0,  # another method's dimension: ignored
            "student.width": 16,
            "student.lr": 0.02,
            "seed": 1,
        },
    )
    # sampled 12.5 over the file's 50; the file's sigma 2 over the built-in 1; built-in rest.
    assert plan.distill == DistillConfig(
        method="lsp",
        lambda_=12.5,
        kernel="rbf",
        kernel_params={"sigma": 2.0},
        direction="student_teacher",
        lsp_until_epoch=None,
    )
    assert plan.student.width == 16 and plan.student.heads == 2 and plan.student.arch == "gat"
    assert plan.student_train == TrainConfig(epochs=5, lr=0.02, seed=1)
    assert plan.params == {
        "method": "lsp",
        "lsp.lambda": 12.5,
        "lsp.kernel": "rbf",
        "lsp.sigma": 2.0,
        "lsp.direction": "student_teacher",
        "lsp.lsp_until_epoch": None,
        "lsp.layer_map": [[-1, -1]],
        "student.arch": "gat",
        "student.width": 16,
        "student.depth": 2,
        "student.heads": 2,
        "student.dropout": 0.6,
        "student.lr": 0.02,
        "student.weight_decay": 5e-4,
        "seed": 1,
    }


def test_resolve_other_methods_take_only_their_own_dimensions():
    spec = spec_with()
    common = {"student.width": 4, "student.lr": 0.01, "seed": 0}
    kd = resolve_trial(spec, {"method": "kd", "kd.temperature": 2.0, **common})
    assert kd.distill == DistillConfig(method="kd", temperature=2.0, alpha=0.5)
    assert {k for k in kd.params if k.startswith(("kd.", "lsp."))} == {"kd.temperature", "kd.alpha"}
    none = resolve_trial(spec, {"method": "none", "lsp.lambda": 3.0, **common})
    assert none.distill == DistillConfig(method="none")
    assert not [k for k in none.params if k.startswith(("kd.", "lsp."))]
    # lsp.lambda was ignored for the none trial, so it equals one sampled without it.
    assert none.config_id == resolve_trial(spec, {"method": "none", **common}).config_id


def test_kernel_parameters_are_conditional_on_a_searched_kernel():
    search = {
        "lsp.kernel": {"choice": ["rbf", "linear", "poly"]},
        "lsp.sigma": {"choice": [0.5, 1.0]},
        "lsp.degree": {"choice": [2, 3]},
    }
    spec = spec_with(methods=["lsp"], search=search, searcher={"algorithm": "grid"})
    # rbf x 2 sigmas + linear + poly x 2 degrees, not 3 x 2 x 2.
    assert len(grid_configs(spec)) == 5
    linear = resolve_trial(spec, {"method": "lsp", "lsp.kernel": "linear", "seed": 0})
    assert linear.distill.kernel_params == {}
    assert "lsp.sigma" not in linear.params and "lsp.degree" not in linear.params
    poly = resolve_trial(spec, {"method": "lsp", "lsp.kernel": "poly", "lsp.degree": 3, "seed": 0})
    assert poly.distill.kernel_params == {"degree": 3.0, "c": 0.0}
    with pytest.raises(UserInputError, match=r"^study\.yaml: params\.lsp\.sigma: missing"):
        resolve_trial(spec, {"method": "lsp", "lsp.kernel": "rbf", "seed": 0})


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"method": "fitnet", "seed": 0}, "params.method"),  # not in this study's methods
        ({"method": "none", "seed": 7, "student.width": 4, "student.lr": 0.01}, "params.seed"),
        (
            {"method": "none", "seed": 0, "student.width": 8, "student.lr": 0.01},
            "params.student.width",
        ),
        ({"method": "none", "seed": 0, "student.width": 4, "student.lr": 5.0}, "params.student.lr"),
        ({"method": "none", "seed": 0, "student.width": 4}, "params.student.lr"),
        (
            {"method": "none", "seed": 0, "student.width": 4, "student.lr": 0.01, "lsp.sigma": 1.0},
            "params.lsp.sigma",
        ),
        ({"seed": 0}, "params.method"),
    ],
)
def test_resolve_rejects_stale_or_foreign_params(params: dict, path: str):
    with pytest.raises(UserInputError) as err:
        resolve_trial(spec_with(), params)
    assert str(err.value).startswith(f"{SRC}: {path}: ")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------- hashes


def test_config_id_is_shared_by_seeds_and_differs_between_configs():
    spec = spec_with()
    a0 = resolve_trial(
        spec,
        {"method": "lsp", "lsp.lambda": 10.0, "student.width": 4, "student.lr": 0.01, "seed": 0},
    )
    a1 = resolve_trial(
        spec,
        {"method": "lsp", "lsp.lambda": 10.0, "student.width": 4, "student.lr": 0.01, "seed": 1},
    )
    b0 = resolve_trial(
        spec,
        {"method": "lsp", "lsp.lambda": 11.0, "student.width": 4, "student.lr": 0.01, "seed": 0},
    )
    assert a0.config_id == a1.config_id == config_id(a0.params)
    assert a0.config_id != b0.config_id
    assert len(a0.config_id) == 12 and int(a0.config_id, 16) >= 0


def test_stable_hash_ignores_key_order_and_int_float_spelling():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": (1, 2), "a": 1.0})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
    # Pinned: the hash must not change between processes, machines or releases.
    assert stable_hash({"a": 1}) == "015abd7f5cc5"  # sha256('{"a":1}')[:12]


def test_teacher_hash_ignores_student_and_search_but_not_teacher_or_dataset():
    ref = teacher_hash(spec_with())
    other_student = base()
    other_student["student"]["width"] = 32
    other_student["search"] = {}
    other_student["methods"] = ["none"]
    assert teacher_hash(parse_study_spec(other_student, "other.yaml")) == ref
    for change in (
        lambda d: d["teacher"]["train"].update(seed=4),
        lambda d: d["teacher"].update(width=16),
        lambda d: d["dataset"].update(options={"download": False}),
        lambda d: d["dataset"].update(name="citeseer"),
    ):
        data = base()
        change(data)
        assert teacher_hash(parse_study_spec(data, SRC)) != ref


# ------------------------------------------------------------------------------------ bad inputs


def _set(path: str, value: Any):
    """A change that sets a dotted path (``search`` keys may hold dots: they come last)."""

    def apply(d: dict) -> None:
        keys = path.split(".")
        if keys[0] == "search" and len(keys) > 1:
            keys = ["search", ".".join(keys[1:])]
        node = d
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value

    return apply


def _drop(key: str):
    return lambda d: d.pop(key)


BAD = [
    ("unknown top-level key", _set("epochs", 3), "epochs", "unknown key (valid: dataset,"),
    (
        "unknown nested key",
        _set("student.widht", 8),
        "student.widht",
        "unknown key (valid: arch, depth, dropout, emb_dims, heads, k, mlp, preset, train, width)",
    ),
    ("wrong type", _set("student.width", "eight"), "student.width", "expected an integer >= 1"),
    (
        "loguniform low <= 0",
        _set("search.lsp.lambda", {"loguniform": [0, 10]}),
        "search.lsp.lambda",
        "loguniform needs 0 < low < high, got [0, 10]",
    ),
    (
        "low >= high",
        _set("search.kd.temperature", {"uniform": [5.0, 1.0]}),
        "search.kd.temperature",
        "uniform needs low < high",
    ),
    (
        "unknown method",
        _set("methods", ["none", "kdd"]),
        "methods[1]",
        "unknown method 'kdd' (valid: at, fitnet, kd, lsp, none)",
    ),
    (
        "unknown kernel in a choice",
        _set("search.lsp.kernel", {"choice": ["rbf", "gauss"]}),
        "search.lsp.kernel.choice[1]",
        "unknown kernel 'gauss' (valid: l1_official, l2, linear,",
    ),
    (
        "dim of a method not in methods",
        _set("methods", ["none", "lsp"]),
        "search.kd.temperature",
        "method 'kd', which is not in methods [none, lsp]",
    ),
    (
        "scheduler with two objectives",
        lambda d: d.update(
            objectives=[{"metric": "val_score"}, {"metric": "latency_ms_p50"}],
            scheduler={"type": "asha"},
        ),
        "scheduler",
        "Ray Tune schedulers take a single metric",
    ),
    (
        "test_score objective",
        _set("objectives", [{"metric": "test_score", "mode": "max"}]),
        "objectives[0].metric",
        "dishonest",
    ),
    ("missing name", _drop("name"), "name", "required key is missing"),
    (
        "grid with a non-choice dim",
        _set("searcher", {"algorithm": "grid"}),
        "search.lsp.lambda",
        "the grid searcher needs every dimension to be a choice, got loguniform",
    ),
    ("negative gpu", _set("resources", {"gpu": -1}), "resources.gpu", "expected a number >= 0"),
    (
        "searched student.k for gat",
        _set("search.student.k", {"choice": [5, 10]}),
        "search.student.k",
        "applies only to arch dgcnn, but student.arch is 'gat'",
    ),
    ("fixed student.k for gat", _set("student.k", 10), "student.k", "applies only to arch dgcnn"),
    (
        "preset with a width",
        _set("teacher", {"preset": "ppi_teacher", "width": 8}),
        "teacher.width",
        "must be absent with a preset",
    ),
    ("student seed", _set("student.train.seed", 1), "student.train.seed", "comes from `seeds`"),
    (
        "architecture for another task",
        _set("teacher.arch", "dgcnn"),
        "teacher.arch",
        "dgcnn is a point-cloud model, but dataset 'cora' is a node-classification task",
    ),
    (
        "sigma with a fixed linear kernel",
        lambda d: (
            d["method_defaults"]["lsp"].update(kernel="linear"),
            d["search"].update({"lsp.sigma": {"uniform": [0.5, 2.0]}}),
        ),
        "search.lsp.sigma",
        "applies only to kernel rbf, but lsp.kernel is 'linear'",
    ),
    (
        "range outside the parameter",
        _set("search.kd.alpha", {"uniform": [0.5, 1.5]}),
        "search.kd.alpha.uniform[1]",
        "expected a number in [0, 1], got 1.5",
    ),
    (
        "uniform for an integer",
        _set("search.student.width", {"uniform": [4, 16]}),
        "search.student.width",
        "use int or logint",
    ),
    ("bad study name", _set("name", "my study"), "name", "a folder name"),
    ("duplicate seed", _set("seeds", [0, 0]), "seeds[1]", "listed twice"),
    (
        "unknown method default",
        _set("method_defaults.lsp.kernal", "rbf"),
        "method_defaults.lsp.kernal",
        "unknown key",
    ),
    (
        "fractional poly degree",
        _set("method_defaults.lsp.degree", 2.5),
        "method_defaults.lsp.degree",
        "whole number",
    ),
    ("fractional gpu above one", _set("resources", {"gpu": 1.5}), "resources.gpu", "fractions"),
    (
        "method searched",
        _set("search.method", {"choice": ["kd"]}),
        "search.method",
        "comes from `methods`",
    ),
    (
        "missing checkpoint",
        _set("teacher.checkpoint", "nowhere/teacher.pt"),
        "teacher.checkpoint",
        "no such file",
    ),
    (
        "scheduler on latency",
        lambda d: d.update(objectives=[{"metric": "latency_ms_p50"}], scheduler={"type": "asha"}),
        "scheduler",
        "only val_score is",
    ),
    (
        "unknown dimension",
        _set("search.student.layers", {"int": [1, 3]}),
        "search.student.layers",
        "unknown search dimension (valid: at.lambda,",
    ),
]


@pytest.mark.parametrize(
    ("change", "path", "needle"), [c[1:] for c in BAD], ids=[c[0] for c in BAD]
)
def test_bad_input_is_one_line_naming_file_and_key(change, path: str, needle: str):
    data = copy.deepcopy(base())
    change(data)
    with pytest.raises(UserInputError) as err:
        parse_study_spec(data, "search_spaces/bad.yaml")
    message = str(err.value)
    assert message.startswith(f"search_spaces/bad.yaml: {path}: "), message
    assert needle in message, message
    assert "\n" not in message


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


MINIMAL = """\
name: tiny
dataset: {name: cora}
teacher: {arch: gat}
student: {arch: gat, train: {weight_decay: 5e-4}}
"""


def test_invalid_yaml_names_file_and_line(tmp_path: Path):
    path = _write(tmp_path, "name: tiny\ndataset: {name: cora\nteacher: {arch: gat}\n")
    with pytest.raises(UserInputError) as err:
        load_study_spec(path)
    message = str(err.value)
    assert message.startswith(f"{path}: line 3, column ") and "invalid YAML" in message
    assert "\n" not in message


def test_duplicate_yaml_key_names_its_line(tmp_path: Path):
    path = _write(tmp_path, MINIMAL + "seeds: [0]\nseeds: [1]\n")
    with pytest.raises(UserInputError, match=r": line 6, column 1: invalid YAML: duplicate key"):
        load_study_spec(path)


def test_defaults_and_yaml12_floats(tmp_path: Path):
    spec = load_study_spec(_write(tmp_path, MINIMAL))
    assert spec.student.train.weight_decay == 5e-4  # YAML 1.1 would read the string '5e-4'
    assert spec.methods == METHODS and spec.seeds == (0,)
    assert spec.method_defaults["lsp"]["lambda"] == 100.0
    assert spec.method_defaults["lsp"]["kernel"] == "rbf"
    assert spec.searcher.algorithm == "tpe" and spec.num_trials == spec.searcher.num_samples
    assert spec.objectives[0].metric == "val_score" and spec.objectives[0].mode == "max"
    assert spec.teacher.model.build_kwargs() == {"width": 8, "depth": 2, "heads": 8, "dropout": 0.6}


def test_checkpoint_is_relative_to_the_study_file(tmp_path: Path):
    (tmp_path / "teacher.pt").write_bytes(b"x")
    path = _write(
        tmp_path,
        MINIMAL.replace("{arch: gat}\nstudent", "{arch: gat, checkpoint: teacher.pt}\nstudent"),
    )
    spec = load_study_spec(path)
    assert spec.teacher.checkpoint == str((tmp_path / "teacher.pt").resolve())


def test_specs_and_plans_survive_pickling():
    # Ray ships the spec to every trial and plans between processes.
    spec = spec_with()
    plan = resolve_trial(
        spec,
        {"method": "kd", "kd.temperature": 2.0, "student.width": 4, "student.lr": 0.01, "seed": 1},
    )
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert pickle.loads(pickle.dumps(plan)) == plan


def test_missing_study_file():
    with pytest.raises(UserInputError, match=r"^nowhere\.yaml: no such study file$"):
        load_study_spec("nowhere.yaml")


def test_fault_tolerance_defaults_and_errors(tmp_path: Path) -> None:
    from tests.studies import tiny_study

    spec = parse_study_spec(
        {k: v for k, v in tiny_study("ft").items() if k != "fault_tolerance"}, "ft.yaml"
    )
    assert (spec.fault_tolerance.checkpoint_every, spec.fault_tolerance.checkpoint_min_seconds) == (
        20,
        30.0,
    )
    given = parse_study_spec(
        tiny_study(
            "ft",
            fault_tolerance={"checkpoint_every": 3, "checkpoint_min_seconds": 0, "max_failures": 2},
        ),
        "ft.yaml",
    )
    assert given.fault_tolerance == FaultToleranceSpec(3, 0.0, 2)
    for bad, key in (
        ({"checkpoint_every": 0}, "checkpoint_every"),
        ({"checkpoint_min_seconds": -1}, "checkpoint_min_seconds"),
        ({"every": 3}, "every"),
    ):
        with pytest.raises(UserInputError, match=rf"^ft.yaml: fault_tolerance\.{key}: "):
            parse_study_spec(tiny_study("ft", fault_tolerance=bad), "ft.yaml")
