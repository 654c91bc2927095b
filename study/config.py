"""Typed, validated study specs built from YAML: the contract between a study file and the runner.

A study file is read with a safe YAML loader (no tags, no code) and checked completely before
anything starts: pydantic (strict: ``true`` and ``"8"`` are not integers, NaN is not a number)
checks types, ranges and unknown keys; the names of datasets, models, methods and kernels and
their parameter schemas come from the catalogs (:mod:`study.catalogs`). Every problem raises
:class:`~study.errors.UserInputError` with one line, ``<file>: <key.path>: <message>``, e.g.::

    search_spaces/q.yaml: search.lsp.lambda: loguniform needs 0 < low < high, got [0, 10]
    search_spaces/q.yaml: student.widht: unknown key (valid: arch, depth, ...)

The schema (``search_spaces/quickstart.yaml`` is a commented example; defaults in brackets)::

    name: quickstart          # required; [A-Za-z0-9_.-]+; the MLflow experiment and Tune folder
    description: "..."        # [""]
    dataset:                  # required: exactly one of name, path, factory
      name: cora              # a study.catalogs.DATASETS entry; options checked by its schema
      path: graph.pt          # or a saved graph (relative to this file; a node task)
      factory: "mod:fn"       # or a function returning the task (a node task)
      options: {}             # [{}] keyword options of the loader (left out: its own default)
      metric: accuracy        # [the dataset's] accuracy | macro_f1 | micro_f1 | auroc (node tasks)
    teacher:                  # required; built-in keys, or factory/options/hidden
      arch: gat               # a study.catalogs.MODELS entry: gat gcn sage mlp (node) | dgcnn
      preset: null            # ppi_teacher ppi_student modelnet_teacher modelnet_student; then
                              # only dropout beside it
      width: 8                # size keys of the arch's schema (defaults there): width, depth,
      depth: 2                # heads (gat), k, emb_dims, mlp (dgcnn), dropout
      factory: "mod:fn"       # or a user model: fn(in_channels, out_channels, **options)
      options: {}             # its keyword options (plain values)
      hidden: [conv1]         # submodules whose outputs are the hidden features (required,
                              # non-empty, when methods has fitnet, at or lsp)
      checkpoint: null        # an existing teacher checkpoint (relative to this file)
      train: {epochs: 200, lr: 0.005, weight_decay: 5.0e-4, optimizer: adam, momentum: 0.9,
              batch_size: 32, eval_every: 1, seed: 0}   # every key optional (TrainConfig's)
    student:                  # required; the teacher's keys minus checkpoint and train.seed
    methods: [none, kd, fitnet, at, lsp]     # [all of study.catalogs.METHODS]
    method_defaults:          # fixed values per method, over the catalog's defaults
      lsp: {lambda: 100.0, kernel: rbf, sigma: 1.0, degree: 2.0, c: 0.0,
            direction: student_teacher, lsp_until_epoch: null, layer_map: [[-1, -1]]}
      kd: {temperature: 4.0, alpha: 0.9}
      fitnet: {lambda: 1.0, layer_map: [[-1, -1]]}
      at: {lambda: 1000.0, p: 1.0, layer_map: [[-1, -1]]}
    search:                   # [{}] one dimension a line, each exactly one of
      lsp.lambda: {loguniform: [1.0, 1000.0]}   # {choice: [...]} {uniform: [lo, hi]}
      lsp.kernel: {choice: [rbf, linear]}       # {loguniform: [lo, hi]} {int: [lo, hi]}
      student.width: {choice: [8, 16, 32]}      # {logint: [lo, hi]}
    seeds: [0, 1]             # [[0]] each sampled configuration is trained once per seed
    searcher: {algorithm: tpe, num_samples: 10, max_concurrent: null, seed: 0}
    objectives: [{metric: val_score, mode: max}]
    scheduler: null           # or {type: asha, grace_period: 10, reduction_factor: 3, max_t: null}
    resources: {cpu: 1, gpu: 0}               # per trial
    latency: {repeats: 30, warmup: 5, threads: 1}
    fault_tolerance: {checkpoint_every: 20, checkpoint_min_seconds: 30, max_failures: 0}

Method defaults are each catalog entry's (the paper's): LSP lambda 100, the RBF kernel with
sigma 1 (poly degree 2, c 0), KL(LS^s || LS^t), every epoch; KD temperature 4, alpha 0.9; FitNet
lambda 1; AT lambda 1000, p 1. ``layer_map`` (fixed only) pairs ``[student layer, teacher
layer]`` indices into the models' hidden features; ``[[-1, -1]]`` matches the last of each.

Search dimensions and their conditions:

- ``<method>.<param>`` for every parameter of a method's schema but ``layer_map``, and
  ``lsp.<param>`` for every kernel's parameters, apply only to trials of that method, which
  must be in ``methods``. A kernel's parameter (``lsp.sigma``: rbf; ``lsp.degree``, ``lsp.c``:
  poly) applies only with that kernel (conditional on a searched ``lsp.kernel``, an error when
  it is fixed to another kernel).
- ``student.arch``, ``student.<size key>``, ``student.lr``, ``student.weight_decay`` apply to
  every trial; a size key only some architectures take (``heads``: gat, ``k``: dgcnn) applies
  only to those (conditional on a searched ``student.arch``). A preset fixes the sizes.
  ``student.options.<name>`` (any plain values, or a numeric range) only for a factory student,
  whose ``arch`` cannot be searched.
- ``uniform``/``loguniform`` fit float parameters only; ``int``/``logint`` fit integer and float
  parameters; names, literals and booleans take ``choice`` only.

Searchers: ``tpe`` (default), ``nsga2`` (Optuna samplers), ``random``, ``grid``. ``num_samples``
[10] counts configurations, so a study runs ``num_samples * len(seeds)`` trials; for ``grid``
every dimension must be a ``choice``, the grid is enumerated per method (conditional dimensions
only where they apply, see :func:`grid_configs`) and ``num_samples`` [1] repeats it.

Objectives: one or several of ``val_score`` (mode [max]), ``latency_ms_p50``,
``latency_ms_p90``, ``num_params`` (mode [min]). Never ``test_score``: choosing on the test split
leaks it into model selection. A scheduler (``asha``) needs exactly one objective, ``val_score``,
since Ray Tune schedulers take one metric and compare it as trials report it epoch by epoch.
Resources: ``cpu`` > 0 [1], ``gpu`` >= 0 [0], fractional below 1 (trials share a GPU).
Fault tolerance: a trial checkpoints every ``checkpoint_every`` [20] epochs, but at most once in
``checkpoint_min_seconds`` [30], and is restarted up to ``max_failures`` [0] times.

Checks that need torch (a factory imports, its options fit, a file's contents, checkpoint keys,
hidden submodule names) are not made here: reading a study file imports no torch.

A trial receives a flat dict such as ``{"method": "lsp", "lsp.lambda": 12.3,
"student.width": 16, "seed": 1}``; :func:`resolve_trial` validates it against the spec and returns
the student, its :class:`~study.train.TrainConfig` and the :class:`~study.train.DistillConfig`.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, Union, get_args, get_origin

import annotated_types as at
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic import dataclasses as pdc
from pydantic.fields import FieldInfo

from study import tracking
from study.catalog import FACTORY_RE
from study.catalogs import (
    DATASETS,
    KERNELS,
    METHODS,
    MODELS,
    NODE,
    NODE_METRICS,
    POINTCLOUD,
    PRESET_OVERRIDES,
    TASK_WORDS,
    WHOLE,
    Count,
    NonNegative,
    Params,
    Positive,
    kernel_params,
    preset_arch,
)
from study.errors import UserInputError, choose
from study.train_config import DistillConfig, TrainConfig

DIMENSION_KINDS: tuple[str, ...] = ("choice", "uniform", "loguniform", "int", "logint")
#: Metrics a study may optimise, with their natural direction.
OBJECTIVE_MODES: dict[str, str] = {
    tracking.METRIC_VAL: "max",
    tracking.METRIC_LATENCY_P50: "min",
    tracking.METRIC_LATENCY_P90: "min",
    tracking.METRIC_PARAMS: "min",
}
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
TEACHER_HASH_VERSION = 1  # bump when a teacher trained from the same spec would differ
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
NonNegInt = Annotated[int, Field(ge=0)]

# ---------------------------------------------------------------------------------------------
# The specs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """The dataset: a catalog ``name``, a saved graph at ``path`` (absolute) or a ``factory``
    (``"module:function"``), with its keyword ``options``; ``metric`` overrides the headline
    score of a node task; ``base_dir`` is the study file's folder (absolute)."""

    name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    factory: str | None = None
    metric: str | None = None
    base_dir: str = ""

    @property
    def label(self) -> str:
        """What tags and reports call it: the name, the file's stem or the factory."""
        return self.name or (Path(self.path).stem if self.path else str(self.factory))

    @property
    def kind(self) -> str:
        """``"node"`` or ``"pointcloud"`` (a path or factory dataset is a node task)."""
        return DATASETS.get(self.name).info.get("kind", NODE) if self.name else NODE


@dataclass(frozen=True)
class ModelSpec:
    """One model: a catalog ``arch`` with a preset or explicit sizes (the keys the architecture
    does not take are ``None``), or a user ``factory`` with its ``options`` and ``hidden``
    submodules (``arch`` ``None``)."""

    arch: str | None
    preset: str | None = None
    width: int | None = None
    depth: int | None = None
    heads: int | None = None
    k: int | None = None
    emb_dims: int | None = None
    mlp: tuple[int, ...] | None = None
    dropout: float | None = None
    factory: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    hidden: tuple[str, ...] = ()
    base_dir: str | None = None

    def __hash__(self) -> int:  # options is a dict: hash the canonical form
        return hash(stable_hash(self, 32))

    @property
    def label(self) -> str:
        """The architecture or the factory."""
        return self.arch or str(self.factory)

    def build_kwargs(self) -> dict[str, Any]:
        """Keywords for ``build_model(self.arch, in_channels=..., out_channels=..., **kwargs)``."""
        if self.factory is not None:
            return {
                "factory": self.factory,
                "options": dict(self.options),
                "hidden": list(self.hidden),
                "base_dir": self.base_dir,
            }
        out: dict[str, Any] = {}
        for f in fields(self)[1:9]:  # preset .. dropout
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def as_params(self, prefix: str) -> dict[str, Any]:
        """The set fields as flat ``{prefix.key: value}`` (lists for tuples), for logging."""
        if self.factory is not None:
            opts = {f"{prefix}.options.{k}": v for k, v in self.options.items()}
            return {f"{prefix}.factory": self.factory, f"{prefix}.hidden": [*self.hidden], **opts}
        return {f"{prefix}.{k}": v for k, v in {"arch": self.arch, **self.build_kwargs()}.items()}


@dataclass(frozen=True)
class TeacherSpec:
    """The teacher: its model, how it is trained, or the checkpoint that replaces training."""

    model: ModelSpec
    train: TrainConfig
    checkpoint: str | None = None


@dataclass(frozen=True)
class StudentSpec:
    """The fixed part of the student; ``given`` holds the size keys the file set explicitly, so
    that a searched ``student.arch`` can fill the other keys with that architecture's defaults."""

    model: ModelSpec
    train: TrainConfig
    given: dict[str, Any] = field(default_factory=dict)

    def model_for(self, arch: str | None, overrides: Mapping[str, Any] | None = None) -> ModelSpec:
        """The student model for ``arch`` with ``overrides`` over the explicitly given keys (for
        a factory student ``arch`` is ignored and ``overrides`` are options)."""
        if self.model.factory is not None:
            return replace(self.model, options={**self.model.options, **(overrides or {})})
        assert arch is not None
        return _model_spec(arch, self.model.preset, {**self.given, **(overrides or {})})


@dataclass(frozen=True)
class Dimension:
    """One search dimension.

    Attributes:
        name: the flat key, e.g. ``"lsp.lambda"`` or ``"student.width"``.
        kind: one of :data:`DIMENSION_KINDS`.
        args: the choices, or ``(low, high)`` (both included).
        method: the method whose trials it applies to; ``None`` for ``student.*`` (all trials).
        condition: ``(key, values)``: it applies only where the searched dimension ``key`` took
            one of ``values`` (``lsp.sigma`` needs ``lsp.kernel`` rbf); ``None``: always.
    """

    name: str
    kind: str
    args: tuple[Any, ...]
    method: str | None = None
    condition: tuple[str, tuple[Any, ...]] | None = None

    @property
    def key(self) -> str:
        """The parameter name without its prefix (``"lambda"`` for ``"lsp.lambda"``)."""
        return self.name.partition(".")[2]

    def applies(self, method: str, sampled: Mapping[str, Any]) -> bool:
        """Whether a trial of ``method`` with the ``sampled`` values so far uses this dimension."""
        if self.method is not None and self.method != method:
            return False
        if self.condition is None:
            return True
        on, values = self.condition
        return on in sampled and any(_same(sampled[on], v) for v in values)


@pdc.dataclass(frozen=True, config=_STRICT)
class SearcherSpec:
    """How configurations are proposed."""

    algorithm: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    num_samples: Count = 10
    max_concurrent: Count | None = None
    seed: NonNegInt = 0


@pdc.dataclass(frozen=True, config=_STRICT)
class Objective:
    """A metric to optimise and its direction."""

    metric: str
    mode: Literal["max", "min"]


@pdc.dataclass(frozen=True, config=_STRICT)
class SchedulerSpec:
    """An early-stopping scheduler; ``max_t`` ``None`` means the student's epochs."""

    type: Literal["asha"] = "asha"
    grace_period: Count = 10
    reduction_factor: Annotated[float, Field(gt=1)] = 3.0
    max_t: Count | None = None


@pdc.dataclass(frozen=True, config=_STRICT)
class ResourceSpec:
    """Per-trial resources; a fractional ``gpu`` lets trials share one."""

    cpu: Positive = 1.0
    gpu: NonNegative = 0.0


@pdc.dataclass(frozen=True, config=_STRICT)
class LatencySpec:
    """How inference latency is timed."""

    repeats: Count = 30
    warmup: NonNegInt = 5
    threads: Count = 1


@pdc.dataclass(frozen=True, config=_STRICT)
class FaultToleranceSpec:
    """How a trial survives interruption: a checkpoint every ``checkpoint_every`` epochs but not
    within ``checkpoint_min_seconds`` of the last one (what ``resume`` continues from; Tune
    snapshots the experiment at each), and ``max_failures`` restarts of a failing trial."""

    checkpoint_every: Count = 20
    checkpoint_min_seconds: NonNegative = 30.0
    max_failures: NonNegInt = 0


@dataclass(frozen=True)
class StudySpec:
    """A whole validated study. ``method_defaults`` holds, for every method of ``methods``, the
    catalog's defaults overridden by the file's ``method_defaults``. ``search`` lists the
    dimensions with those that others are conditional on (``student.arch``, ``lsp.kernel``) first.
    """

    name: str
    description: str
    dataset: DatasetSpec
    teacher: TeacherSpec
    student: StudentSpec
    methods: tuple[str, ...]
    method_defaults: dict[str, dict[str, Any]]
    search: tuple[Dimension, ...]
    seeds: tuple[int, ...]
    searcher: SearcherSpec
    objectives: tuple[Objective, ...]
    scheduler: SchedulerSpec | None
    resources: ResourceSpec
    latency: LatencySpec
    source: str
    fault_tolerance: FaultToleranceSpec = field(default_factory=FaultToleranceSpec)

    @property
    def metrics(self) -> list[str]:
        """The objective metrics, in order (what Optuna and Tune are given)."""
        return [o.metric for o in self.objectives]

    @property
    def modes(self) -> list[str]:
        """The objective modes, in the order of :attr:`metrics`."""
        return [o.mode for o in self.objectives]

    def dimension(self, name: str) -> Dimension | None:
        """The search dimension called ``name``, if searched."""
        return next((d for d in self.search if d.name == name), None)

    def dimensions_for(self, method: str) -> tuple[Dimension, ...]:
        """The dimensions a trial of ``method`` may use, conditioning dimensions first."""
        return tuple(d for d in self.search if d.method in (None, method))

    @property
    def num_configs(self) -> int:
        """Configurations the searcher proposes (grid: its size times the repeats)."""
        if self.searcher.algorithm == "grid":
            return len(grid_configs(self)) * self.searcher.num_samples
        return self.searcher.num_samples

    @property
    def num_trials(self) -> int:
        """Trials the study runs: each configuration once per seed."""
        return self.num_configs * len(self.seeds)


@dataclass(frozen=True)
class TrialPlan:
    """What one trial trains, resolved from the spec and the trial's sampled parameters.

    ``params`` holds the hyperparameters that apply to this trial, flat, for logging: ``method``,
    its own ``<method>.*`` keys (kernel parameters only for their kernel), every ``student.*`` key
    (fixed ones included) and ``seed``. ``config_id`` is :func:`config_id` of ``params``.
    """

    method: str
    seed: int
    student: ModelSpec
    student_train: TrainConfig
    distill: DistillConfig
    params: dict[str, Any]
    config_id: str


# ---------------------------------------------------------------------------------------------
# Input schemas (pydantic, strict) for the parts no catalog describes
# ---------------------------------------------------------------------------------------------


def _factory_ref(value: str) -> str:
    if not FACTORY_RE.fullmatch(value):
        raise ValueError(f"expected 'module:function' (e.g. my_models:build), got {value!r}")
    return value


Factory = Annotated[str, AfterValidator(_factory_ref)]


class _Top(BaseModel):
    model_config = _STRICT
    name: str
    description: str = ""
    dataset: dict[str, Any]
    teacher: dict[str, Any]
    student: dict[str, Any]
    methods: Annotated[list[str], Field(min_length=1)] | None = None
    method_defaults: dict[str, dict[str, Any]] = {}
    search: dict[str, Any] = {}
    seeds: Annotated[list[NonNegInt], Field(min_length=1)] = [0]
    searcher: dict[str, Any] = {}
    objectives: Annotated[list[dict[str, Any]], Field(min_length=1)] | None = None
    scheduler: dict[str, Any] | None = None
    resources: dict[str, Any] = {}
    latency: dict[str, Any] = {}
    fault_tolerance: dict[str, Any] = {}


class _Dataset(Params):
    name: str | None = None
    path: str | None = None
    factory: Factory | None = None
    options: dict[str, Any] = {}
    metric: str | None = None


class _UserModel(Params):
    factory: Factory
    options: dict[str, Any] = {}
    hidden: list[Annotated[str, Field(min_length=1)]] = []


class _Train(Params):
    """TrainConfig's keys but ``device`` (the runner sets it from ``resources``)."""

    epochs: Count = TrainConfig.epochs
    lr: Positive = TrainConfig.lr
    weight_decay: NonNegative = TrainConfig.weight_decay
    optimizer: Literal["adam", "sgd"] = TrainConfig.optimizer
    momentum: Annotated[float, Field(ge=0, lt=1)] = TrainConfig.momentum
    batch_size: Count = TrainConfig.batch_size
    eval_every: Count = TrainConfig.eval_every
    seed: NonNegInt = TrainConfig.seed


# ---------------------------------------------------------------------------------------------
# Checking values: every failure is one line naming the file and the key path
# ---------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    text = repr(tuple(value) if isinstance(value, tuple) else value)
    if isinstance(value, (list, tuple, dict)):
        try:
            text = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            pass
    text = " ".join(text.split())
    return text if len(text) <= 80 else text[:77] + "..."


def _type_word(value: Any) -> str:
    for kind, word in ((bool, "a boolean"), (numbers.Integral, "an integer")):
        if isinstance(value, kind):
            return word
    for kind, word in ((numbers.Real, "a number"), (str, "a string"), (list, "a list")):
        if isinstance(value, kind):
            return word
    return "null" if value is None else "a mapping" if isinstance(value, Mapping) else "a value"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def _bounds(low: Any, high: Any, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_num(low)}"
    if high is not None:
        return f"{'<' if high_open else '<='} {_num(high)}"
    return ""


def _join(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps booleans apart from 0 and 1."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _fields(cls: Any) -> dict[str, tuple[str, FieldInfo]]:
    """A pydantic model's or dataclass's fields by the key files use: ``{key: (name, info)}``."""
    found = getattr(cls, "__pydantic_fields__", None) or {}
    return {info.alias or name: (name, info) for name, info in found.items()}


def _unwrap(ann: Any) -> tuple[Any, list[Any], bool]:
    """``(type, constraints, nullable)`` of an annotation (``Annotated`` and ``| None`` off)."""
    meta: list[Any] = []
    nullable = False
    while True:
        if get_origin(ann) is Annotated:
            ann, *extra = get_args(ann)
            for m in extra:
                meta.extend(m.metadata if isinstance(m, FieldInfo) else [m])
        elif get_origin(ann) in (Union, types.UnionType) and type(None) in get_args(ann):
            rest = [a for a in get_args(ann) if a is not type(None)]
            nullable, ann = True, rest[0] if len(rest) == 1 else Union[tuple(rest)]  # noqa: UP007
        else:
            return ann, meta, nullable


def _ann_at(cls: Any, loc: tuple[Any, ...]) -> tuple[Any, list[Any]]:
    """The annotation and constraints of the value at ``loc`` inside ``cls``."""
    ann: Any = cls
    meta: list[Any] = []
    for item in loc:
        ann, more, _ = _unwrap(ann)
        if isinstance(item, str) and item in _fields(ann):
            info = _fields(ann)[item][1]
            ann, meta = info.annotation, list(info.metadata)
            continue
        args = get_args(ann)
        if get_origin(ann) is dict:
            ann, meta = args[1], []
        elif args and isinstance(item, int):
            ann, meta = (args[0] if args[-1] is Ellipsis or len(args) == 1 else args[item]), []
    return ann, meta


def _plural(desc: str) -> str:
    """``"integers >= 1"`` for ``"an integer >= 1"``."""
    return re.sub(r"(integer|number|string|mapping|boolean)", r"\1s", desc.split(" ", 1)[1], 1)


def _expect(ann: Any, meta: list[Any] = []) -> str:  # noqa: B006 - never mutated
    """``"an integer >= 1"``: what an annotation accepts, in words."""
    ann, more, nullable = _unwrap(ann)
    meta = [*meta, *more]
    origin, args = get_origin(ann), get_args(ann)
    nonempty = any(isinstance(m, at.MinLen) and m.min_length > 0 for m in meta)
    if origin is Literal:
        word = "one of " + ", ".join(map(str, args))
    elif origin in (list, tuple):
        size = f"{len(args)} " if origin is tuple and args[-1] is not Ellipsis else ""
        word = f"a {'non-empty ' if nonempty else ''}list of {size}{_plural(_expect(args[0]))}"
    else:
        word = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
            ann, "a mapping"
        )
        if WHOLE in meta:
            word = "a whole number"
        if nonempty:
            word = word.replace("a ", "a non-empty ", 1)
        lo = next((m for m in meta if isinstance(m, (at.Ge, at.Gt))), None)
        hi = next((m for m in meta if isinstance(m, (at.Le, at.Lt))), None)
        low = None if lo is None else getattr(lo, "ge", getattr(lo, "gt", None))
        high = None if hi is None else getattr(hi, "le", getattr(hi, "lt", None))
        bounds = _bounds(low, high, isinstance(lo, at.Gt), isinstance(hi, at.Lt))
        word = f"{word} {bounds}" if bounds else word
    return f"{word} or null" if nullable else word


#: Literal fields whose unknown value is named by another word.
_NAME_WORDS = {"algorithm": "searcher", "type": "scheduler"}


class _Check:
    """Value checks that fail with ``<source>: <path>: <message>``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> NoReturn:
        text = f"{self.source}: {path}: {message}" if path else f"{self.source}: {message}"
        raise UserInputError(" ".join(text.split()))

    def expected(self, path: str, what: str, value: Any) -> NoReturn:
        self.fail(path, f"expected {what}, got {_show(value)} ({_type_word(value)})")

    def mapping(self, value: Any, path: str, keys: Any = None) -> dict[str, Any]:
        """A mapping (``null``: empty) with only ``keys`` (any if ``None``); nulls dropped."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.expected(path, "a mapping", value)
        for key in value:
            if keys is not None and key not in keys:
                self.fail(_join(path, key), f"unknown key (valid: {', '.join(sorted(keys))})")
        return {k: v for k, v in value.items() if v is not None}

    def plain(self, value: Any, path: str) -> Any:
        """A JSON-like value (str, finite number, bool, null, lists and string-keyed mappings)."""
        if value is None or isinstance(value, (str, bool)):
            return value
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real):
            if not math.isfinite(value):
                self.fail(path, f"expected a finite number, got {_show(value)}")
            return float(value)
        if isinstance(value, (list, tuple)):
            return [self.plain(v, _join(path, i)) for i, v in enumerate(value)]
        if isinstance(value, Mapping):
            for key in value:
                if not isinstance(key, str):
                    self.fail(path, f"keys must be strings, got {_show(key)} ({_type_word(key)})")
            return {k: self.plain(v, _join(path, k)) for k, v in value.items()}
        self.expected(path, "a string, number, boolean, list or mapping", value)

    def validate(self, cls: Any, data: Any, path: str, strip: int = 0) -> Any:
        """``data`` (plain) validated by the pydantic class ``cls``; the first error, at ``path``
        plus its location (the first ``strip`` parts of which ``path`` already names)."""
        try:
            return _adapter(cls).validate_json(json.dumps(data), strict=True)
        except ValidationError as err:
            error = err.errors(include_url=False)[0]
            loc = tuple(error["loc"])
            where = path
            for item in loc[strip:]:
                where = _join(where, item)
            kind, value = error["type"], error.get("input")
            ann, meta = _ann_at(cls, loc)
            if kind in ("extra_forbidden", "unexpected_keyword_argument"):
                valid = sorted(_fields(_unwrap(_ann_at(cls, loc[:-1])[0])[0]))
                self.fail(where, f"unknown key (valid: {', '.join(valid)})")
            if kind == "missing":
                self.fail(where, "required key is missing")
            if kind in ("value_error", "assertion_error"):
                message = error["msg"].split(", ", 1)[1]
                got = f", got {_show(value)}" if "got" not in message else ""
                self.fail(where, message + got)
            if kind == "literal_error" and isinstance(value, str) and isinstance(loc[-1], str):
                word = _NAME_WORDS.get(loc[-1], loc[-1])
                try:
                    choose(word, value, get_args(_unwrap(ann)[0]))
                except UserInputError as exc:
                    self.fail(where, str(exc))
            if kind.endswith(("_type", "_parsing")) or kind in ("literal_error", "model_type"):
                self.expected(where, _expect(ann, meta), value)
            self.fail(where, f"expected {_expect(ann, meta)}, got {_show(value)}")

    def param(self, cls: Any, key: str, value: Any, path: str) -> Any:
        """One parameter ``key`` of the schema ``cls``, validated, at ``path``."""
        return getattr(self.validate(cls, {key: value}, path, strip=1), _fields(cls)[key][0])

    def name(self, value: Any, path: str, kind: str, valid: Any) -> str:
        if not isinstance(value, str):
            self.expected(path, f"a {kind} name (one of {', '.join(sorted(valid))})", value)
        try:
            choose(kind, value, tuple(valid))
        except UserInputError as err:
            self.fail(path, str(err))
        return value


@lru_cache(maxsize=None)
def _adapter(cls: Any) -> TypeAdapter[Any]:
    return TypeAdapter(cls)


# ---------------------------------------------------------------------------------------------
# YAML
# ---------------------------------------------------------------------------------------------


class _StudyLoader(yaml.SafeLoader):
    """``SafeLoader`` that reads YAML 1.2 floats and refuses duplicate keys."""


# PyYAML follows YAML 1.1, where `5e-4` (no dot) is a string; study files write rates that way.
_StudyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _construct_mapping(loader: _StudyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    # PyYAML silently keeps the last of two equal keys: a typo'd study would lose a setting.
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue  # an unhashable key: construct_mapping reports it
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StudyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_study_spec(path: str | Path) -> StudySpec:
    """Read and validate a study file.

    Raises:
        UserInputError: a missing or unreadable file, invalid YAML (with its line number), or any
            key that does not validate (see :func:`parse_study_spec`).
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserInputError(f"{source}: no such study file") from None
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise UserInputError(f"{source}: cannot read the study file ({reason})") from None
    return parse_study_text(text, source)


def parse_study_text(text: str, source: str) -> StudySpec:
    """Validate a study file's text (see :func:`load_study_spec`); ``source`` names it in errors."""
    return parse_study_spec(read_study_mapping(text, source), source)


def read_study_mapping(text: str, source: str) -> Any:
    """The YAML of a study file as plain data (safe loader, duplicate keys refused)."""
    try:
        data = yaml.load(text, Loader=_StudyLoader)  # a SafeLoader: no tags, no code
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        what = err.problem or str(err)
        if err.context:
            what = f"{what} ({err.context})"
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise UserInputError(" ".join(f"{source}: {where}invalid YAML: {what}".split())) from None
    except yaml.YAMLError as err:
        raise UserInputError(f"{source}: invalid YAML: {' '.join(str(err).split())}") from None
    return data


# ---------------------------------------------------------------------------------------------
# What the catalogs offer
# ---------------------------------------------------------------------------------------------


def _method_schemas(method: str) -> dict[str, Any]:
    """``{parameter: schema}`` of a method; LSP's kernel parameters beside its own."""
    entry = METHODS.get(method)
    out = {key: entry.params for key in entry.param_names()}
    if entry.info.get("kernel_catalog"):
        for kernel in KERNELS:
            out.update({k: kernel.params for k in kernel.param_names() if k not in out})
    return out


def _method_defaults(method: str) -> dict[str, Any]:
    entry = METHODS.get(method)
    out = entry.defaults()
    if entry.info.get("kernel_catalog"):
        for kernel in KERNELS:
            out.update({k: v for k, v in kernel.defaults().items() if k not in out})
    return out


def _kernel_param_names() -> set[str]:
    return {k for kernel in KERNELS for k in kernel.param_names()}


def _archs_taking(key: str) -> tuple[str, ...]:
    return tuple(e.name for e in MODELS if key in e.param_names())


def _size_keys() -> list[str]:
    return sorted({k for e in MODELS for k in e.param_names()})


def _kinds(schema: Any, key: str) -> tuple[str, ...]:
    """The dimension kinds a parameter takes, from its annotation."""
    info = _fields(schema)[key][1]
    ann, meta, _ = _unwrap(info.annotation)
    if ann is float and WHOLE not in [*info.metadata, *meta]:
        return DIMENSION_KINDS
    return ("choice", "int", "logint") if ann in (int, float) else ("choice",)


def _search_params() -> dict[str, Any]:
    """Every searchable key and the schema that checks it (``None``: ``student.arch``)."""
    out: dict[str, Any] = {
        "student.arch": None,
        "student.lr": _Train,
        "student.weight_decay": _Train,
    }
    scalar = (int, float, str, bool)
    for e in MODELS:
        for k in e.param_names():
            if _unwrap(_fields(e.params)[k][1].annotation)[0] in scalar:
                out.setdefault(f"student.{k}", e.params)
    for m in METHODS:
        for k, schema in _method_schemas(m.name).items():
            ann = _unwrap(_fields(schema)[k][1].annotation)[0]
            if ann in scalar or get_origin(ann) is Literal:
                out[f"{m.name}.{k}"] = schema
    return out


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------

_CONDITIONING = ("student.arch", "lsp.kernel")
_TRAIN_DIMS = ("lr", "weight_decay")


def parse_study_spec(data: Any, source: str) -> StudySpec:
    """Validate a study mapping (as loaded from YAML) completely and build the spec.

    Args:
        data: the loaded YAML document.
        source: the file it came from, for messages; relative paths (``dataset.path``,
            ``teacher.checkpoint``) are taken relative to its folder.

    Raises:
        UserInputError: the first problem, as ``<source>: <key.path>: <message>``.
    """
    chk = _Check(source)
    if not isinstance(data, Mapping):
        chk.fail("", f"expected a mapping of study keys at the top level, got {_type_word(data)}")
    top = chk.validate(_Top, chk.plain(chk.mapping(data, ""), ""), "")
    if not _NAME_RE.fullmatch(top.name) or top.name in (".", ".."):
        chk.fail(
            "name", f"expected letters, digits and _ . - only (a folder name), got {top.name!r}"
        )
    base = Path(source).parent.resolve()
    dataset = _parse_dataset(chk, top.dataset, base)
    methods = _parse_methods(chk, top.methods)
    method_defaults = _parse_method_defaults(chk, top.method_defaults, methods)
    hidden_for = tuple(m for m in methods if "layer_map" in METHODS.get(m).param_names())
    teacher = _parse_model(chk, top.teacher, "teacher", dataset, base, hidden_for)
    student = _parse_model(
        chk, top.student, "student", dataset, base, hidden_for, "student.arch" in top.search
    )
    sd = chk.mapping(top.searcher, "searcher")
    if sd.get("algorithm") == "grid":
        sd.setdefault("num_samples", 1)
    searcher = chk.validate(SearcherSpec, sd, "searcher")
    search = _parse_search(chk, top.search, methods, method_defaults, student[0], dataset, searcher)
    objectives = _parse_objectives(chk, top.objectives)
    scheduler = _parse_scheduler(chk, top.scheduler, objectives, student[1].epochs)
    resources = chk.validate(ResourceSpec, chk.mapping(top.resources, "resources"), "resources")
    if resources.gpu > 1 and not resources.gpu.is_integer():
        chk.fail(
            "resources.gpu",
            "Ray shares a GPU only in fractions below 1; above 1 use a whole number, "
            f"got {_num(resources.gpu)}",
        )
    return StudySpec(
        name=top.name,
        description=top.description,
        dataset=dataset,
        teacher=TeacherSpec(teacher[0], teacher[1], teacher[3]),
        student=StudentSpec(student[0], student[1], student[2]),
        methods=methods,
        method_defaults=method_defaults,
        search=search,
        seeds=_unique(chk, top.seeds, "seeds", "seed"),
        searcher=searcher,
        objectives=objectives,
        scheduler=scheduler,
        resources=resources,
        latency=chk.validate(LatencySpec, chk.mapping(top.latency, "latency"), "latency"),
        source=source,
        fault_tolerance=chk.validate(
            FaultToleranceSpec,
            chk.mapping(top.fault_tolerance, "fault_tolerance"),
            "fault_tolerance",
        ),
    )


def _unique(chk: _Check, values: list[Any], path: str, word: str) -> tuple[Any, ...]:
    for i, value in enumerate(values):
        if value in values[:i]:
            chk.fail(f"{path}[{i}]", f"{word} {_show(value)} is listed twice")
    return tuple(values)


def _file(chk: _Check, given: str, base: Path, path: str) -> str:
    """An existing file, relative to the study file's folder, made absolute (for Ray workers)."""
    where = Path(given).expanduser()
    where = (where if where.is_absolute() else base / where).resolve()
    if not where.is_file():
        chk.fail(path, f"no such file {str(where)!r}")
    return str(where)


def _parse_dataset(chk: _Check, raw: dict[str, Any], base: Path) -> DatasetSpec:
    d = chk.validate(_Dataset, chk.mapping(raw, "dataset"), "dataset")
    given = [k for k in ("name", "path", "factory") if getattr(d, k) is not None]
    if len(given) != 1:
        got = " and ".join(given) or "none of them"
        chk.fail("dataset", f"expected exactly one of name, path or factory, got {got}")
    kind, options, path = NODE, d.options, None
    if d.name is not None:
        entry = DATASETS.get(chk.name(d.name, "dataset.name", "dataset", DATASETS.names()))
        kind = entry.info.get("kind", NODE)
        if "root" in options:
            chk.fail(
                "dataset.options.root",
                "the data folder is not a study option (it is GDS_DATA_ROOT or --data-root)",
            )
        if entry.params is None and options:
            chk.fail(f"dataset.options.{next(iter(options))}", f"{d.name} takes no options")
        if entry.params is not None:
            checked = chk.validate(entry.params, options, "dataset.options")
            options = checked.model_dump(by_alias=True, exclude_unset=True, exclude_none=True)
    elif d.path is not None:
        path = _file(chk, d.path, base, "dataset.path")
    if d.metric is not None:
        chk.name(d.metric, "dataset.metric", "metric", NODE_METRICS)
        if kind != NODE:
            chk.fail(
                "dataset.metric",
                f"applies only to node tasks, but dataset {d.name!r} is a {TASK_WORDS[kind]} task",
            )
    return DatasetSpec(d.name, options, path, d.factory, d.metric, str(base))


def _parse_methods(chk: _Check, raw: list[str] | None) -> tuple[str, ...]:
    if raw is None:
        return METHODS.names()
    for i, value in enumerate(raw):
        chk.name(value, f"methods[{i}]", "method", METHODS.names())
    return _unique(chk, raw, "methods", "method")


def _parse_method_defaults(
    chk: _Check, raw: dict[str, Any], methods: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    # Defaults of methods not in `methods` are validated too, then unused: toggling a method in
    # `methods` should not force editing this block.
    given = chk.mapping(raw, "method_defaults", METHODS.names())
    merged = {m: _method_defaults(m) for m in methods}
    for method, values in given.items():
        path = f"method_defaults.{method}"
        schemas = _method_schemas(method)
        checked = {
            k: chk.param(schemas[k], k, v, f"{path}.{k}")
            for k, v in chk.mapping(values, path, schemas).items()
        }
        if method in merged:
            merged[method].update(checked)
    return merged


def _parse_train(chk: _Check, raw: Any, path: str, *, allow_seed: bool) -> TrainConfig:
    d = chk.mapping(raw, path)
    if not allow_seed and "seed" in d:
        chk.fail(
            f"{path}.seed",
            "the student's seed comes from `seeds` (each configuration runs once per seed)",
        )
    if "device" in d:
        chk.fail(f"{path}.device", "the runner sets the device from `resources` (gpu > 0: cuda)")
    return TrainConfig(**chk.validate(_Train, d, path).model_dump(exclude_unset=True))


def _check_arch_kind(chk: _Check, arch: str, path: str, dataset: DatasetSpec) -> None:
    kind, arch_kind = dataset.kind, MODELS.get(arch).info.get("kind", NODE)
    if arch_kind != kind:
        fitting = ", ".join(e.name for e in MODELS if e.info.get("kind", NODE) == kind)
        chk.fail(
            path,
            f"{arch} is a {TASK_WORDS[arch_kind]} model, but dataset {dataset.label!r} is "
            f"a {TASK_WORDS[kind]} task (valid here: {fitting})",
        )


def _model_spec(arch: str, preset: str | None, given: Mapping[str, Any]) -> ModelSpec:
    """The model of ``arch``: a preset (plus its open keys) or sizes over the arch defaults."""
    if preset is not None:
        return ModelSpec(arch, preset, **{k: given[k] for k in PRESET_OVERRIDES if k in given})
    values = {k: given.get(k, default) for k, default in MODELS.get(arch).defaults().items()}
    if values.get("mlp") is not None:
        values["mlp"] = tuple(values["mlp"])
    return ModelSpec(arch, None, **values)


def _parse_model(
    chk: _Check,
    raw: dict[str, Any],
    path: str,
    dataset: DatasetSpec,
    base: Path,
    hidden_for: tuple[str, ...],
    arch_searched: bool = False,
) -> tuple[ModelSpec, TrainConfig, dict[str, Any], str | None]:
    """``(model, train, explicitly given size keys, checkpoint)`` of the teacher or student."""
    teacher = path == "teacher"
    extra = ("checkpoint",) if teacher else ()
    keys = ("arch", "preset", "factory", "options", "hidden", "train", *_size_keys(), *extra)
    d = chk.mapping(raw, path, keys)
    train = _parse_train(chk, d.pop("train", None), f"{path}.train", allow_seed=teacher)
    checkpoint = d.pop("checkpoint", None)
    if checkpoint is not None:
        where = f"{path}.checkpoint"
        checkpoint = _file(chk, chk.validate(str, checkpoint, where), base, where)
    if "factory" in d:
        other = next((k for k in d if k not in ("factory", "options", "hidden")), None)
        if other is not None:
            chk.fail(
                f"{path}.{other}",
                f"a model is either built in (arch, preset, sizes) or a factory with options "
                f"and hidden, not both ({path}.factory is set)",
            )
        user = chk.validate(_UserModel, d, path)
        if hidden_for and not user.hidden:
            chk.fail(
                f"{path}.hidden",
                f"expected a non-empty list of submodule names ({'/'.join(hidden_for)} in methods "
                f"match hidden features), got {_show(d.get('hidden', []))}",
            )
        model = ModelSpec(None, None, factory=user.factory, options=user.options)
        model = replace(model, hidden=tuple(user.hidden), base_dir=str(base))
        return model, train, {}, checkpoint
    for key in ("options", "hidden"):
        if key in d:
            chk.fail(f"{path}.{key}", f"applies only to a factory model ({path}.factory)")
    presets = [p for e in MODELS for p in e.info.get("presets", {})]
    preset = (
        None if "preset" not in d else chk.name(d["preset"], f"{path}.preset", "preset", presets)
    )
    if "arch" not in d:
        if preset is None:
            chk.fail(
                f"{path}.arch", f"required key is missing (valid: {', '.join(MODELS.names())})"
            )
        arch = str(preset_arch(preset))
    else:
        arch = chk.name(d["arch"], f"{path}.arch", "architecture", MODELS.names())
        if preset is not None and preset_arch(preset) != arch:
            chk.fail(
                f"{path}.preset",
                f"preset {preset!r} builds a {preset_arch(preset)} model, but arch is {arch!r}",
            )
    _check_arch_kind(chk, arch, f"{path}.arch", dataset)
    given: dict[str, Any] = {}
    for key in _size_keys():
        if key not in d:
            continue
        where = f"{path}.{key}"
        if preset is not None and key not in PRESET_OVERRIDES:
            chk.fail(where, f"must be absent with a preset (preset {preset!r} fixes it)")
        takers = _archs_taking(key)
        if arch not in takers and not arch_searched:
            chk.fail(where, f"applies only to arch {'/'.join(takers)}, but {path}.arch is {arch!r}")
        schema = MODELS.get(arch if arch in takers else takers[0]).params
        given[key] = chk.param(schema, key, d[key], where)
    return _model_spec(arch, preset, given), train, given, checkpoint


def _param_check(chk: _Check, name: str, arch: str | None) -> tuple[Any, tuple[str, ...]]:
    """``(check(value, path) -> value, the dimension kinds it takes)`` of a search key."""
    prefix, _, key = name.partition(".")
    if prefix == "student" and key.startswith("options."):
        return chk.plain, DIMENSION_KINDS
    if name == "student.arch":
        return (lambda v, p: chk.name(v, p, "architecture", MODELS.names())), ("choice",)
    schema = _search_params()[name]
    if prefix == "student" and arch is not None and key in MODELS.get(arch).param_names():
        schema = MODELS.get(arch).params
    return (lambda v, p: chk.param(schema, key, v, p)), _kinds(schema, key)


def _parse_dimension(chk: _Check, name: str, raw: Any, check: Any, kinds: Any) -> Dimension:
    path = f"search.{name}"
    if not isinstance(raw, Mapping) or len(raw) != 1:
        forms = "{choice: [...]}, {uniform: [lo, hi]}, {loguniform: [lo, hi]}, {int: [lo, hi]}"
        chk.expected(path, f"one of {forms} or {{logint: [lo, hi]}}", raw)
    ((kind, args),) = raw.items()
    if kind not in DIMENSION_KINDS:
        chk.fail(path, f"unknown dimension kind {kind!r} (valid: {', '.join(DIMENSION_KINDS)})")
    if kind == "choice":
        if not isinstance(args, list) or not args:
            chk.expected(f"{path}.choice", "a non-empty list", args)
        out: list[Any] = []
        for i, value in enumerate(args):
            where = f"{path}.choice[{i}]"
            if isinstance(value, (list, Mapping)):
                chk.expected(where, "a single value", value)
            checked = check(value, where)
            if any(_same(checked, v) for v in out):
                chk.fail(where, f"value {_show(value)} is listed twice")
            out.append(checked)
        return Dimension(name, kind, tuple(out))
    if "int" not in kinds:
        chk.fail(path, f"{kind} does not fit a name; use {{choice: [...]}}")
    if kind not in kinds:
        chk.fail(
            path, f"{kind} gives fractional values, but {name} is an integer; use int or logint"
        )
    if not isinstance(args, list) or len(args) != 2:
        chk.expected(path, f"{kind} with a [low, high] pair", args)
    integral = kind in ("int", "logint")
    for value in args:
        if isinstance(value, bool) or not isinstance(value, int if integral else (int, float)):
            what = "integers" if integral else "numbers"
            chk.fail(path, f"{kind} needs two {what}, got {_show(args)}")
    low, high = args
    if kind == "loguniform" and (low <= 0 or low >= high):
        chk.fail(path, f"loguniform needs 0 < low < high, got {_show(args)}")
    if kind == "logint" and (low < 1 or low >= high):
        chk.fail(path, f"logint needs 1 <= low < high, got {_show(args)}")
    if low >= high:
        chk.fail(path, f"{kind} needs low < high, got {_show(args)}")
    check(low, f"{path}.{kind}[0]")
    check(high, f"{path}.{kind}[1]")
    return Dimension(name, kind, (low, high) if integral else (float(low), float(high)))


def _parse_search(
    chk: _Check,
    raw: dict[str, Any],
    methods: tuple[str, ...],
    method_defaults: dict[str, dict[str, Any]],
    student: ModelSpec,
    dataset: DatasetSpec,
    searcher: SearcherSpec,
) -> tuple[Dimension, ...]:
    dims: dict[str, Dimension] = {}
    valid = _search_params()
    # Conditioning dimensions first, so conditions can refer to them.
    order = [n for n in _CONDITIONING if n in raw] + [n for n in raw if n not in _CONDITIONING]
    for name in order:
        path = f"search.{name}"
        if name in ("method", "seed"):
            chk.fail(path, f"the {name} is not searched here: it comes from `{name}s`")
        prefix, _, key = name.partition(".")
        option = prefix == "student" and key.startswith("options.") and len(key) > 8
        if name not in valid and not option:
            keys = ", ".join([*sorted(valid), "student.options.<name>"])
            chk.fail(path, f"unknown search dimension (valid: {keys})")
        method = None if prefix == "student" else prefix
        if method is not None and method not in methods:
            chk.fail(
                path,
                f"searches a parameter of method {method!r}, which is not in methods "
                f"[{', '.join(methods)}]",
            )
        if method is None and key not in _TRAIN_DIMS and (student.factory is None) == option:
            chk.fail(
                path,
                "applies only to a factory student, but student.factory is not set"
                if option
                else f"applies only to a built-in student, but student.factory is "
                f"{student.factory!r}; search its options as student.options.<name>",
            )
        dim = _parse_dimension(chk, name, raw[name], *_param_check(chk, name, student.arch))
        if searcher.algorithm == "grid" and dim.kind != "choice":
            chk.fail(
                path, f"the grid searcher needs every dimension to be a choice, got {dim.kind}"
            )
        condition = None
        if method is not None and key in _kernel_param_names() - set(
            METHODS.get(method).param_names()
        ):
            kernels = tuple(e.name for e in KERNELS if key in e.param_names())
            fixed = method_defaults[method]["kernel"]
            on = f"{method}.kernel"
            condition = _condition(chk, path, dims.get(on), on, fixed, kernels, "kernel")
        if method is None and student.preset is not None:
            if key not in (*PRESET_OVERRIDES, *_TRAIN_DIMS):
                chk.fail(
                    path,
                    f"student.preset {student.preset!r} fixes the {key}; drop the preset to "
                    "search it",
                )
        if name == "student.arch":
            for i, arch in enumerate(dim.args):
                _check_arch_kind(chk, arch, f"{path}.choice[{i}]", dataset)
        elif method is None and not option and key not in _TRAIN_DIMS:
            condition = _condition(
                chk,
                path,
                dims.get("student.arch"),
                "student.arch",
                student.arch,
                _archs_taking(key),
                "arch",
            )
        dims[name] = replace(dim, method=method, condition=condition)
    return tuple(dims.values())


def _condition(
    chk: _Check,
    path: str,
    searched: Dimension | None,
    on: str,
    fixed: Any,
    needed: tuple[str, ...],
    what: str,
) -> tuple[str, tuple[Any, ...]] | None:
    """The condition of a dimension that applies only when ``on`` is one of ``needed``."""
    if searched is None:
        if fixed not in needed:
            chk.fail(path, f"applies only to {what} {'/'.join(needed)}, but {on} is {fixed!r}")
        return None
    useful = tuple(v for v in searched.args if v in needed)
    if not useful:
        chk.fail(
            path,
            f"applies only to {what} {'/'.join(needed)}, which search.{on} never "
            f"chooses ({_show(list(searched.args))})",
        )
    return None if len(useful) == len(searched.args) else (on, useful)


def _parse_objectives(chk: _Check, raw: list[dict[str, Any]] | None) -> tuple[Objective, ...]:
    if raw is None:
        return (Objective(tracking.METRIC_VAL, "max"),)
    out: list[Objective] = []
    for i, item in enumerate(raw):
        path = f"objectives[{i}]"
        d = chk.mapping(item, path, ("metric", "mode"))
        metric = d.get("metric")
        if metric == tracking.METRIC_TEST:
            chk.fail(
                f"{path}.metric",
                "test_score cannot be an objective: selecting on the test split is dishonest (it "
                "leaks the test set into model selection); use val_score",
            )
        if isinstance(metric, str):
            chk.name(metric, f"{path}.metric", "objective metric", OBJECTIVE_MODES)
            if any(o.metric == metric for o in out):
                chk.fail(f"{path}.metric", f"metric {metric!r} is listed twice")
        d = {"mode": OBJECTIVE_MODES.get(str(metric), "max"), **d}
        out.append(chk.validate(Objective, d, path))
    return tuple(out)


def _parse_scheduler(
    chk: _Check, raw: dict[str, Any] | None, objectives: tuple[Objective, ...], epochs: int
) -> SchedulerSpec | None:
    if raw is None:
        return None
    spec = chk.validate(SchedulerSpec, chk.mapping(raw, "scheduler"), "scheduler")
    if len(objectives) != 1:
        chk.fail(
            "scheduler",
            f"Ray Tune schedulers take a single metric, but this study has "
            f"{len(objectives)} objectives ({', '.join(o.metric for o in objectives)}); "
            "drop the scheduler or keep one objective",
        )
    if objectives[0].metric != tracking.METRIC_VAL:
        chk.fail(
            "scheduler",
            f"{spec.type} stops trials on a metric reported every epoch, which only "
            f"val_score is; the objective is {objectives[0].metric}",
        )
    max_t = spec.max_t if spec.max_t is not None else epochs
    if spec.grace_period > max_t:
        chk.fail(
            "scheduler.grace_period",
            f"expected at most max_t = {max_t} "
            f"({'scheduler.max_t' if spec.max_t else 'the student epochs'}), "
            f"got {spec.grace_period}",
        )
    return spec


# ---------------------------------------------------------------------------------------------
# Trials
# ---------------------------------------------------------------------------------------------


def grid_configs(spec: StudySpec) -> list[dict[str, Any]]:
    """Every configuration of a grid (all dimensions ``choice``), without seeds.

    Enumerated per method over the dimensions that apply to it, so a method's configurations are
    not multiplied by other methods' dimensions, nor an rbf trial by the poly degree.

    Raises:
        ValueError: a dimension is not a ``choice``.
    """
    out: list[dict[str, Any]] = []
    for method in spec.methods:
        dims = spec.dimensions_for(method)
        for dim in dims:
            if dim.kind != "choice":
                raise ValueError(f"grid_configs: {dim.name} is {dim.kind}, not a choice")

        def expand(i: int, partial: dict[str, Any], method: str = method, dims: Any = dims) -> None:
            if i == len(dims):
                out.append({"method": method, **partial})
            elif not dims[i].applies(method, partial):
                expand(i + 1, partial)
            else:
                for value in dims[i].args:
                    expand(i + 1, {**partial, dims[i].name: value})

        expand(0, {})
    return out


def _check_value(chk: _Check, spec: StudySpec, dim: Dimension, value: Any, path: str) -> Any:
    check, _ = _param_check(chk, dim.name, spec.student.model.arch)
    if dim.kind == "choice":
        if not any(_same(value, v) for v in dim.args):
            chk.fail(path, f"expected one of {_show(list(dim.args))}, got {_show(value)}")
        return check(value, path)
    low, high = dim.args
    integral = dim.kind in ("int", "logint")
    kind = numbers.Integral if integral else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        chk.expected(path, "an integer" if integral else "a finite number", value)
    # Samplers map through exp/log: allow the last bit of rounding at the ends.
    slack = 1e-9 * max(abs(low), abs(high), 1.0)
    if not low - slack <= value <= high + slack:
        chk.fail(
            path, f"expected a value of {dim.kind} [{_num(low)}, {_num(high)}], got {_show(value)}"
        )
    return check(min(max(int(value) if integral else float(value), low), high), path)


def _listed(value: Any) -> Any:
    return [_listed(v) for v in value] if isinstance(value, (list, tuple)) else value


def resolve_trial(spec: StudySpec, params: Mapping[str, Any]) -> TrialPlan:
    """Resolve one trial's flat sampled parameters against the spec.

    Args:
        spec: the study.
        params: ``{"method": ..., "seed": ..., "<dim>": value, ...}`` as the searcher gave them;
            values of dimensions that do not apply to the method (another method's, ``lsp.sigma``
            with a linear kernel) are ignored, those that apply must be present.

    Returns:
        The plan: student model with the sampled dimensions applied (a factory student's sampled
        options merged into its options), its TrainConfig (trial seed, sampled ``lr``/
        ``weight_decay``), the DistillConfig (catalog defaults < the file's ``method_defaults`` <
        sampled; for LSP only the chosen kernel's parameters) and the flat params for logging.

    Raises:
        UserInputError: params that do not belong to this spec (a stale or foreign trial).
    """
    chk = _Check(spec.source)
    if not isinstance(params, Mapping):
        chk.expected("params", "a mapping of trial parameters", params)
    for key in ("method", "seed"):
        if key not in params:
            chk.fail(f"params.{key}", "missing from the trial parameters")
    method = chk.name(params["method"], "params.method", "method", spec.methods)
    seed = params["seed"]
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        chk.expected("params.seed", "an integer", seed)
    if seed not in spec.seeds:
        chk.fail("params.seed", f"expected one of the study's seeds {list(spec.seeds)}, got {seed}")
    known = {d.name for d in spec.search}
    for key in params:
        if key not in ("method", "seed") and key not in known:
            valid = ", ".join(sorted(known | {"method", "seed"}))
            chk.fail(f"params.{key}", f"not a parameter of study {spec.name!r} (valid: {valid})")

    sampled: dict[str, Any] = {}
    for dim in spec.search:  # conditioning dimensions come first
        if not dim.applies(method, sampled):
            continue
        if dim.name not in params:
            chk.fail(f"params.{dim.name}", f"missing: a search dimension of {method} trials")
        sampled[dim.name] = _check_value(chk, spec, dim, params[dim.name], f"params.{dim.name}")

    ours = {d.key: sampled[d.name] for d in spec.search if d.method is None and d.name in sampled}
    arch = ours.pop("arch", spec.student.model.arch)
    train = {k: ours.pop(k) for k in _TRAIN_DIMS if k in ours}
    if spec.student.model.factory is not None:
        ours = {k.partition(".")[2]: v for k, v in ours.items()}
    student = spec.student.model_for(arch, ours)
    student_train = replace(spec.student.train, seed=int(seed), **train)

    values = dict(spec.method_defaults[method])
    values.update({d.key: sampled[d.name] for d in spec.search if d.name in sampled and d.method})
    if "kernel" in values and METHODS.get(method).info.get("kernel_catalog"):
        other = _kernel_param_names() - set(kernel_params(values["kernel"]))
        values = {k: v for k, v in values.items() if k not in other}
    distill = DistillConfig(method=method, params=values)

    flat: dict[str, Any] = {"method": method}
    flat.update({f"{method}.{k}": _listed(v) for k, v in values.items()})
    flat.update(student.as_params("student"))
    flat["student.lr"] = student_train.lr
    flat["student.weight_decay"] = student_train.weight_decay
    flat["seed"] = int(seed)
    return TrialPlan(method, int(seed), student, student_train, distill, flat, config_id(flat))


# ---------------------------------------------------------------------------------------------
# Hashes
# ---------------------------------------------------------------------------------------------


def _canonical(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _canonical(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Mapping):
        for key in obj:
            if not isinstance(key, str):
                raise TypeError(f"stable_hash: mapping keys must be strings, got {key!r}")
        return {k: _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        x = float(obj)
        if not math.isfinite(x):
            return repr(x)
        # 100 and 100.0 are one hyperparameter value, whichever way a sampler typed it.
        return int(x) if x.is_integer() and abs(x) < 2**53 else x
    raise TypeError(f"stable_hash: cannot hash a {type(obj).__name__}")


def stable_hash(obj: Any, length: int = 12) -> str:
    """A short hash of ``obj`` that is stable across processes, machines and key order.

    SHA-256 of canonical JSON (sorted keys; dataclasses as dicts, tuples as lists, integral
    floats as ints), first ``length`` hex characters.
    """
    text = json.dumps(_canonical(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def config_id(params: Mapping[str, Any]) -> str:
    """The id of a configuration: :func:`stable_hash` of its params without ``seed``, so the
    runs of one configuration over several seeds share it (pass :attr:`TrialPlan.params`)."""
    return stable_hash({k: v for k, v in params.items() if k != "seed"})


def teacher_hash(spec: StudySpec) -> str:
    """The hash a teacher is cached under: its model (a factory with its options and hidden
    submodules), training (seed included, device not) and checkpoint, and the dataset (name,
    path or factory, options, metric); the student and the search do not enter. Keys that are
    unset (a built-in model's factory, a named dataset's path) are left out, so that the hashes
    of built-in teachers stay what they were."""
    train = {
        f.name: getattr(spec.teacher.train, f.name)
        for f in fields(TrainConfig)
        if f.name != "device"
    }
    model = {k: v for k, v in _canonical(spec.teacher.model).items() if v or k not in _NEW_MODEL}
    ds = spec.dataset
    dataset = {"name": ds.name, "options": ds.options}
    dataset.update({k: getattr(ds, k) for k in ("path", "factory", "metric") if getattr(ds, k)})
    return stable_hash(
        {
            "version": TEACHER_HASH_VERSION,
            "dataset": dataset,
            "teacher": {"model": model, "train": train, "checkpoint": spec.teacher.checkpoint},
        }
    )


_NEW_MODEL = ("factory", "options", "hidden", "base_dir")

__all__ = [
    "DatasetSpec",
    "Dimension",
    "FaultToleranceSpec",
    "LatencySpec",
    "ModelSpec",
    "Objective",
    "ResourceSpec",
    "SchedulerSpec",
    "SearcherSpec",
    "StudentSpec",
    "StudySpec",
    "TeacherSpec",
    "TrialPlan",
    "config_id",
    "grid_configs",
    "load_study_spec",
    "parse_study_spec",
    "parse_study_text",
    "read_study_mapping",
    "resolve_trial",
    "stable_hash",
    "teacher_hash",
]
