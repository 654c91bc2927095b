"""Study specs: shipped files validate, trials resolve, hashes are stable, bad input is one line."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

import pytest

from study.catalogs import METHODS, default_methods
from study.config import (
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
        params={
            "lambda": 12.5,
            "kernel": "rbf",
            "sigma": 2.0,
            "direction": "student_teacher",
            "lsp_until_epoch": None,
            "layer_map": ((-1, -1),),
        },
    )
    assert plan.student.sizes["width"] == 16 and plan.student.sizes["heads"] == 2
    assert plan.student.arch == "gat"
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
    assert kd.distill == DistillConfig(method="kd", params={"temperature": 2.0, "alpha": 0.5})
    assert {k for k in kd.params if k.startswith(("kd.", "lsp."))} == {"kd.temperature", "kd.alpha"}
    none = resolve_trial(spec, {"method": "none", "lsp.lambda": 3.0, **common})
    assert none.distill == DistillConfig(method="none", params={})
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
    assert linear.distill.params == {
        "lambda": 50.0,
        "kernel": "linear",
        "direction": "student_teacher",
        "lsp_until_epoch": None,
        "layer_map": ((-1, -1),),
    }
    assert "lsp.sigma" not in linear.params and "lsp.degree" not in linear.params
    poly = resolve_trial(spec, {"method": "lsp", "lsp.kernel": "poly", "lsp.degree": 3, "seed": 0})
    assert {k: poly.distill.params[k] for k in ("kernel", "degree", "c")} == {
        "kernel": "poly",
        "degree": 3.0,
        "c": 0.0,
    }
    assert "sigma" not in poly.distill.params
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
        "unknown key (valid: arch, depth, dropout, emb_dims, factory, heads, hidden, k, mlp, "
        "options, preset, train, width)",
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
        "unknown method 'kdd' (valid: at, edge_attention, fitnet, kd, lsp, none)",
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
        "population without nsga2",
        _set("searcher.population_size", 4),
        "searcher.population_size",
        "only the nsga2 searcher has a population",
    ),
    (
        "population of one",
        lambda d: d.update(searcher={"algorithm": "nsga2", "population_size": 1}),
        "searcher.population_size",
        "expected",
    ),
    (
        "max_t over the epochs",
        lambda d: d.update(scheduler={"type": "asha", "grace_period": 1, "max_t": 6}),
        "scheduler.max_t",
        "at most the student's train.epochs (5)",
    ),
    (
        "boolean for an integer",
        _set("student.width", True),
        "student.width",
        "got True (a boolean)",
    ),
    ("string for an integer", _set("student.width", "8"), "student.width", "got '8' (a string)"),
    ("NaN", _set("teacher.dropout", float("nan")), "teacher.dropout", "expected a finite number"),
    (
        "infinite range end",
        _set("search.kd.temperature", {"uniform": [1.0, float("inf")]}),
        "search.kd.temperature.uniform[1]",
        "expected a finite number, got inf",
    ),
    (
        "unknown optimizer",
        _set("student.train.optimizer", "adamw"),
        "student.train.optimizer",
        "unknown optimizer 'adamw' (valid: adam, sgd)",
    ),
    (
        "unknown direction",
        _set("method_defaults.lsp.direction", "both"),
        "method_defaults.lsp.direction",
        "unknown direction 'both' (valid: student_teacher, teacher_student)",
    ),
    (
        "uniform for a name",
        _set("search.lsp.direction", {"uniform": [0, 1]}),
        "search.lsp.direction",
        "uniform does not fit a name; use {choice: [...]}",
    ),
    (
        "unknown dataset key",
        _set("dataset.nmae", "cora"),
        "dataset.nmae",
        "unknown key (valid: factory, metric, name, options, path, split, target_node_type)",
    ),
    (
        "dataset with name and path",
        _set("dataset", {"name": "cora", "path": "graph.pt"}),
        "dataset",
        "expected exactly one of name, path or factory, got name and path",
    ),
    (
        "dataset with none of name, path, factory",
        _set("dataset", {"options": {}}),
        "dataset",
        "expected exactly one of name, path or factory, got none of them",
    ),
    (
        "missing dataset path",
        _set("dataset", {"path": "nowhere/graph.pt"}),
        "dataset.path",
        "no such file '",
    ),
    (
        "bad dataset factory",
        _set("dataset", {"factory": "graphs.load"}),
        "dataset.factory",
        "expected 'module:function' (e.g. my_models:build), got 'graphs.load'",
    ),
    (
        "unknown dataset metric",
        _set("dataset.metric", "f1"),
        "dataset.metric",
        "unknown metric 'f1' (valid: accuracy, auroc, macro_f1, micro_f1)",
    ),
    (
        "node metric on modelnet40",
        _set("dataset", {"name": "modelnet40", "metric": "macro_f1"}),
        "dataset.metric",
        "dataset 'modelnet40' is a point-cloud task; expected one of accuracy, "
        "mean_class_accuracy, auroc",
    ),
    (
        "dataset root option",
        _set("dataset.options", {"root": "/data"}),
        "dataset.options.root",
        "not a study option",
    ),
    (
        "unknown dataset option",
        _set("dataset.options", {"num_nodes": 100}),
        "dataset.options.num_nodes",
        "unknown key (valid: download)",
    ),
    (
        "dataset option of the wrong type",
        _set("dataset.options", {"download": "yes"}),
        "dataset.options.download",
        "expected a boolean or null, got 'yes' (a string)",
    ),
    (
        "factory and arch",
        _set("student", {"factory": "models:build", "arch": "gat", "hidden": ["conv"]}),
        "student.arch",
        "either built in (arch, preset, sizes) or a factory with options and hidden, not both",
    ),
    (
        "hidden not a list",
        _set("student", {"factory": "models:build", "hidden": "conv"}),
        "student.hidden",
        "expected a list of non-empty strings, got 'conv' (a string)",
    ),
    (
        "hidden holds a number",
        _set("teacher", {"factory": "models:build", "hidden": ["conv", 3]}),
        "teacher.hidden[1]",
        "expected a non-empty string, got 3 (an integer)",
    ),
    (
        "hidden empty with lsp",
        _set("student", {"factory": "models:build", "hidden": []}),
        "student.hidden",
        "expected a non-empty list of submodule names (lsp in methods match hidden features)",
    ),
    (
        "hidden missing with lsp",
        _set("teacher", {"factory": "models:build"}),
        "teacher.hidden",
        "expected a non-empty list of submodule names",
    ),
    (
        "model factory not module:function",
        _set("student", {"factory": "models.build", "hidden": ["conv"]}),
        "student.factory",
        "expected 'module:function'",
    ),
    (
        "hidden for a built-in model",
        _set("student.hidden", ["conv"]),
        "student.hidden",
        "applies only to a factory model (student.factory)",
    ),
    (
        "options searched on a built-in student",
        _set("search.student.options.hidden_dim", {"choice": [8, 16]}),
        "search.student.options.hidden_dim",
        "applies only to a factory student, but student.factory is not set",
    ),
    (
        "arch searched with a factory student",
        lambda d: (
            d.update(student={"factory": "models:build", "hidden": ["conv"]}),
            d.update(search={"student.arch": {"choice": ["gat", "gcn"]}}),
        ),
        "search.student.arch",
        "applies only to a built-in student, but student.factory is 'models:build'",
    ),
    (
        "missing checkpoint of a factory teacher",
        _set("teacher", {"factory": "models:build", "hidden": ["c"], "checkpoint": "no.pt"}),
        "teacher.checkpoint",
        "no such file",
    ),
    (
        "unknown dimension",
        _set("search.student.layers", {"int": [1, 3]}),
        "search.student.layers",
        "unknown search dimension (valid: at.lambda,",
    ),
    (
        "num_samples over the maximum",
        _set("searcher.num_samples", 1_000_000_000_000),
        "searcher.num_samples",
        "at most 100,000 configurations per study, got 1,000,000,000,000",
    ),
    (
        "trials over the maximum",
        _set("searcher.num_samples", 60_000),
        "searcher.num_samples",
        "60,000 configurations x 2 seeds is over the maximum of 100,000 trials",
    ),
    (
        "grid over the maximum, not enumerated",
        lambda d: d.update(
            searcher={"algorithm": "grid"},
            search={f"student.{k}": {"choice": list(range(1, 101))} for k in ("width", "depth")}
            | {"kd.temperature": {"choice": [float(t) for t in range(1, 101)]}},
        ),
        "search",
        "a grid of 100,001+ configurations x num_samples 1 x 2 seeds is over the maximum",
    ),
    (
        "options of a saved graph",
        _set("dataset", {"path": __file__, "options": {"root": "/etc"}}),
        "dataset.options.root",
        "a saved graph takes no options",
    ),
    (
        "reserved dataset option",
        _set("dataset.options", {"root": "/etc"}),
        "dataset.options.root",
        "the data folder is GDS_DATA_ROOT, not a study option",
    ),
    (
        "unknown dataset option",
        _set("dataset.options", {"evil": 1}),
        "dataset.options.evil",
        "unknown key (valid: ",
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
    assert spec.methods == default_methods() and spec.seeds == (0,)
    assert "edge_attention" not in spec.methods  # opt-in: it needs students with attention
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


# ------------------------------------------------------------------- user datasets and models


def test_shipped_num_trials_are_unchanged():
    sizes = {p.stem: load_study_spec(p).num_trials for p in SHIPPED}
    assert sizes == {
        "cora_architectures": 9,
        "cora_edge_attention": 30,  # none, kd and 2 x 2 x 2 edge_attention, 3 seeds
        "cora_pareto": 48,
        "hetero_synthetic": 16,  # 2 architectures x 2 widths x 4 methods, 1 seed
        "modelnet40_kernels": 12,
        "modelnet40_methods": 15,
        "modelnet40_students": 48,
        "ppi_methods": 15,
        "quickstart": 4,
        "temporal_synthetic": 18,  # 3 methods x 2 students x 3 seeds (grid)
    }


def test_method_defaults_come_from_the_catalog():
    spec = spec_with(methods=list(METHODS.names()), search={}, method_defaults={})
    for method in METHODS.names():
        # relation_weights (LSP, heterogeneous graphs) is absent until set: config ids stay.
        defaults = METHODS.get(method).defaults()
        defaults.pop("relation_weights", None)
        assert defaults.items() <= spec.method_defaults[method].items()
    assert "relation_weights" not in spec.method_defaults["lsp"]
    # LSP's kernel parameters beside its own, from the kernel catalog
    assert {"sigma": 1.0, "degree": 2.0, "c": 0.0}.items() <= spec.method_defaults["lsp"].items()
    assert spec_with().method_defaults["lsp"]["sigma"] == 2.0  # the file's over the catalog's


def test_train_keys_are_train_configs():
    from dataclasses import fields

    from study.config import _Train

    assert set(_Train.model_fields) == {f.name for f in fields(TrainConfig)} - {"device"}


def test_catalog_dataset_options_leave_unset_ones_to_the_loader():
    spec = spec_with(dataset={"name": "synthetic_sbm", "options": {"num_nodes": 100}})
    assert spec.dataset.options == {"num_nodes": 100}
    assert (spec.dataset.label, spec.dataset.kind, spec.dataset.path) == (
        "synthetic_sbm",
        "node",
        None,
    )


USER = """\
name: own
dataset: {path: data/graph.pt, metric: macro_f1}
teacher:
  factory: "models:build_teacher"
  options: {hidden_dim: 64}
  hidden: [conv1, conv2]
  checkpoint: teacher.pt
  train: {epochs: 3}
student:
  factory: "models:build_student"
  options: {hidden_dim: 8, act: relu}
  hidden: [conv1]
  train: {epochs: 3}
methods: [none, lsp]
search:
  student.options.hidden_dim: {choice: [8, 16]}
  student.options.act: {choice: [relu, gelu, null, true]}
  student.options.dropout: {uniform: [0.0, 0.5]}
  student.lr: {loguniform: [1.0e-3, 1.0e-1]}
searcher: {algorithm: random, num_samples: 3}
seeds: [0, 1]
"""


def _user_study(tmp_path: Path, text: str = USER) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "graph.pt").write_bytes(b"x")
    (tmp_path / "teacher.pt").write_bytes(b"x")
    return _write(tmp_path, text)


def test_user_dataset_and_models(tmp_path: Path):
    spec = load_study_spec(_user_study(tmp_path))
    base_dir = str(tmp_path.resolve())
    assert spec.dataset.path == str((tmp_path / "data" / "graph.pt").resolve())
    assert (spec.dataset.label, spec.dataset.kind, spec.dataset.metric) == (
        "graph",
        "node",
        "macro_f1",
    )
    assert spec.dataset.base_dir == base_dir and spec.dataset.name is None
    teacher = spec.teacher.model
    assert (teacher.arch, teacher.label, teacher.hidden) == (
        None,
        "models:build_teacher",
        ("conv1", "conv2"),
    )
    assert spec.teacher.checkpoint == str((tmp_path / "teacher.pt").resolve())
    assert teacher.build_kwargs() == {
        "factory": "models:build_teacher",
        "options": {"hidden_dim": 64},
        "hidden": ["conv1", "conv2"],
        "base_dir": base_dir,
    }
    assert hash(teacher) == hash(copy.deepcopy(teacher))  # hashable, options and all
    assert spec.num_trials == 6
    sampled = {
        "method": "lsp",
        "student.options.hidden_dim": 16,
        "student.options.act": None,
        "student.options.dropout": 0.25,
        "student.lr": 0.01,
        "seed": 1,
    }
    plan = resolve_trial(spec, sampled)
    assert plan.student.options == {"hidden_dim": 16, "act": None, "dropout": 0.25}
    assert spec.student.model.options == {"hidden_dim": 8, "act": "relu"}  # not mutated
    assert plan.params["student.factory"] == "models:build_student"
    assert plan.params["student.hidden"] == ["conv1"]
    assert plan.params["student.options.hidden_dim"] == 16
    assert plan.params["student.options.dropout"] == 0.25
    assert "student.arch" not in plan.params and plan.params["student.lr"] == 0.01
    assert plan.distill.method == "lsp" and plan.distill.params["sigma"] == 1.0
    with pytest.raises(UserInputError, match=r"params\.student\.options\.hidden_dim: expected one"):
        resolve_trial(spec, {**sampled, "student.options.hidden_dim": 32})


def test_factory_dataset_options_pass_through_and_hidden_may_be_empty(tmp_path: Path):
    text = (
        "name: own\n"
        "dataset: {factory: 'graphs:load', options: {n: 3, nested: {a: [1, x]}, root: here}}\n"
        "teacher: {factory: 'models:big'}\n"
        "student: {factory: 'models:small', options: {w: 4}}\n"
        "methods: [none, kd]\n"
    )
    spec = load_study_spec(_write(tmp_path, text))
    assert spec.dataset.factory == "graphs:load" and spec.dataset.label == "graphs:load"
    assert spec.dataset.options == {"n": 3, "nested": {"a": [1, "x"]}, "root": "here"}
    assert spec.teacher.model.hidden == () and spec.student.model.as_params("student") == {
        "student.factory": "models:small",
        "student.hidden": [],
        "student.options.w": 4,
    }


def test_teacher_hash_covers_the_user_fields(tmp_path: Path):
    # Built-in teachers keep the hash they had before factories existed.
    assert teacher_hash(spec_with()) == "17e14b3b35c5"
    path = _user_study(tmp_path)
    ref = teacher_hash(load_study_spec(path))
    changes = [
        ("options: {hidden_dim: 64}", "options: {hidden_dim: 65}"),
        ("hidden: [conv1, conv2]", "hidden: [conv1]"),
        ("models:build_teacher", "models:other"),
        ("metric: macro_f1", "metric: accuracy"),
        ("student.lr: {loguniform: [1.0e-3, 1.0e-1]}", "student.lr: {choice: [0.1]}"),  # same
    ]
    for old, new in changes:
        path.write_text(USER.replace(old, new))
        assert (teacher_hash(load_study_spec(path)) == ref) == old.startswith("student.lr"), new
    text = USER.replace("{path: data/graph.pt, metric: macro_f1}", "{factory: 'g:load'}")
    path.write_text(text)
    other = teacher_hash(load_study_spec(path))
    path.write_text(text.replace("'g:load'", "'g:load', options: {n: 2}"))
    assert len({ref, other, teacher_hash(load_study_spec(path))}) == 3


def test_reading_a_study_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from study.config import load_study_spec, resolve_trial, grid_configs\n"
        f"for p in {[str(p) for p in SHIPPED]!r}:\n"
        "    load_study_spec(p)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torch_geometric'))\n"
        "assert not bad, bad\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)


def test_nsga2_population_defaults_to_several_generations_and_warns_when_it_cannot():
    searcher = spec_with(searcher={"algorithm": "nsga2", "num_samples": 48}).searcher
    assert searcher.population() == 12 and searcher.generations_warning() is None
    small = spec_with(searcher={"algorithm": "nsga2", "num_samples": 3}).searcher
    assert small.population() == 2
    warning = small.generations_warning()
    assert warning is not None and "\n" not in warning and "num_samples >= 4" in warning
    given = spec_with(searcher={"algorithm": "nsga2", "num_samples": 10, "population_size": 8})
    assert given.searcher.population() == 8
    assert "population_size 8" in (given.searcher.generations_warning() or "")
    assert (
        spec_with(searcher={"algorithm": "tpe", "num_samples": 1}).searcher.generations_warning()
        is None
    )


def test_scheduler_max_t_caps_the_epochs():
    asha = {"type": "asha", "grace_period": 1}
    assert spec_with(scheduler={**asha, "max_t": 3}).scheduler.epochs(5) == 3
    assert spec_with(scheduler=asha).scheduler.epochs(5) == 5
