"""Typed, validated study specs built from YAML: the contract between a study file and the runner.

A study file is read with a safe YAML loader (no tags, no code) and checked completely before
anything starts: unknown keys at every level, types, ranges and the consistency of keys that
depend on each other. Every problem raises :class:`~study.errors.UserInputError` with one line,
``<file>: <key.path>: <what was expected, and what was found>``, e.g.::

    search_spaces/q.yaml: search.lsp.lambda: loguniform needs 0 < low < high, got [0, 10]
    search_spaces/q.yaml: student.widht: unknown key (valid: arch, depth, ...)

The schema (``search_spaces/quickstart.yaml`` is a commented example; defaults in brackets)::

    name: quickstart          # required; [A-Za-z0-9_.-]+; the MLflow experiment and Tune folder
    description: "..."        # [""]
    dataset:                  # required
      name: cora              # cora citeseer pubmed ppi modelnet40 synthetic_sbm synthetic_shapes
      options: {}             # [{}] keyword options of load_task(name, **options)
    teacher:                  # required
      arch: gat               # gat gcn sage mlp (node tasks) | dgcnn (point clouds); may be
                              # left out when a preset names it
      preset: null            # ppi_teacher ppi_student (gat) modelnet_teacher modelnet_student
                              # (dgcnn); with a preset, width/depth/heads/k/emb_dims/mlp are absent
      width: 8                # gat [8]: per-head hidden width;  dgcnn [64]: first EdgeConv width;
                              # gcn [16], sage [64], mlp [64]: hidden width
      depth: 2                # gat [2]: GATConv layers incl. output; dgcnn [4]: EdgeConv layers;
                              # gcn/sage/mlp [2]: layers incl. output
      heads: 8                # gat only [8]
      k: 20                   # dgcnn only [20]: kNN size
      emb_dims: 1024          # dgcnn only [1024]: per-point embedding before pooling
      mlp: [512, 256]         # dgcnn only [[512, 256]]: classifier hidden widths
      dropout: 0.6            # gat [0.6], others [0.5]; allowed beside a preset
      checkpoint: null        # an existing teacher checkpoint (relative to this file), used
                              # instead of training one
      train:                  # every key optional; defaults are TrainConfig's
        {epochs: 200, lr: 0.005, weight_decay: 5.0e-4, optimizer: adam, momentum: 0.9,
         batch_size: 32, eval_every: 1, seed: 0}
    student:                  # required; the teacher's keys minus checkpoint and train.seed
      arch: gat               # (each trial's seed comes from `seeds`)
      width: 8
      train: {epochs: 200, lr: 0.005, weight_decay: 5.0e-4}
    methods: [none, kd, fitnet, at, lsp]     # [all five]; the method is a search dimension
    method_defaults:          # fixed values per method, over the built-in defaults below
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

Built-in method defaults follow the paper: LSP lambda 100, the RBF kernel with sigma 1, poly
degree 2 and c 0, the direction KL(LS^s || LS^t), LSP in every epoch; KD temperature 4, alpha 0.9;
FitNet lambda 1; AT lambda 1000 (beta of the AT code), p 1. ``layer_map`` (fitnet, at, lsp;
fixed only) pairs
``[student layer, teacher layer]`` indices into the models' hidden features; the default (also
for null), ``[[-1, -1]]``, matches the last hidden layer of each.

Search dimensions and their conditions:

- ``lsp.{lambda,kernel,sigma,degree,c,direction,lsp_until_epoch}``, ``kd.{temperature,alpha}``,
  ``fitnet.lambda``, ``at.{lambda,p}`` apply only to trials of their method, which must be in
  ``methods``. ``lsp.sigma`` applies only with the rbf kernel, ``lsp.degree``/``lsp.c`` only
  with poly (conditional on ``lsp.kernel`` when that is searched, an error when it is fixed to
  another kernel).
- ``student.{arch,width,depth,heads,k,dropout,lr,weight_decay}`` apply to every trial;
  ``student.heads`` only to gat and ``student.k`` only to dgcnn students (conditional on
  ``student.arch`` when that is searched). A student preset fixes arch/width/depth/heads/k.
- ``uniform``/``loguniform`` give floats and fit float parameters only; ``int``/``logint``
  fit integer and float parameters; names (kernel, direction, arch) take ``choice`` only.

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
``checkpoint_min_seconds`` [30] (what ``resume`` continues from; more often costs time, see Ray's
snapshot warning), and is restarted from its last checkpoint up to ``max_failures`` [0] times.

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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, NoReturn

import yaml

from study import tracking
from study.errors import UserInputError, choose
from study.train_config import DistillConfig, TrainConfig

# ---------------------------------------------------------------------------------------------
# Valid names. Hard-coded so that reading a study file imports neither torch nor PyG; they mirror
# study.distill.registry (METHODS, KERNEL_NAMES, DIRECTIONS), study.models.registry
# (ARCHITECTURES and its presets) and study.data.registry (DATASETS). A test keeps them in step.
# ---------------------------------------------------------------------------------------------

#: Distillation methods (``none`` = the student trained alone).
METHODS: tuple[str, ...] = ("none", "kd", "fitnet", "at", "lsp")
#: LSP kernels.
KERNELS: tuple[str, ...] = ("linear", "poly", "rbf", "l2", "l1_official")
#: LSP KL directions: the paper's KL(LS^s || LS^t) and the official code's KL(LS^t || LS^s).
DIRECTIONS: tuple[str, ...] = ("student_teacher", "teacher_student")
#: Model architectures.
ARCHS: tuple[str, ...] = ("gat", "gcn", "sage", "mlp", "dgcnn")
#: Paper presets and the architecture each builds.
PRESET_ARCH: dict[str, str] = {
    "ppi_teacher": "gat",
    "ppi_student": "gat",
    "modelnet_teacher": "dgcnn",
    "modelnet_student": "dgcnn",
}
PRESETS: tuple[str, ...] = tuple(PRESET_ARCH)
#: Datasets and the kind of task each is: node classification or point-cloud recognition.
DATASET_KINDS: dict[str, str] = {
    "cora": "node",
    "citeseer": "node",
    "pubmed": "node",
    "ppi": "node",
    "synthetic_sbm": "node",
    "modelnet40": "pointcloud",
    "synthetic_shapes": "pointcloud",
}
DATASETS: tuple[str, ...] = tuple(DATASET_KINDS)
#: The kind of task each architecture solves.
ARCH_KINDS: dict[str, str] = {
    "gat": "node",
    "gcn": "node",
    "sage": "node",
    "mlp": "node",
    "dgcnn": "pointcloud",
}
_KIND_WORDS = {"node": "node-classification", "pointcloud": "point-cloud"}

#: Size keys each architecture takes without a preset, and their defaults (GAT: Velickovic et
#: al. 2018 on Cora; GCN: Kipf and Welling 2017 on Cora; GraphSAGE and MLP: the same two-layer
#: shape, a little wider; DGCNN: Wang et al. 2019 on ModelNet40). Only gat takes ``heads`` and
#: only dgcnn ``k``/``emb_dims``/``mlp``, which is what makes those keys conditional on a
#: searched ``student.arch``.
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "gat": {"width": 8, "depth": 2, "heads": 8, "dropout": 0.6},
    "gcn": {"width": 16, "depth": 2, "dropout": 0.5},
    "sage": {"width": 64, "depth": 2, "dropout": 0.5},
    "mlp": {"width": 64, "depth": 2, "dropout": 0.5},
    "dgcnn": {
        "width": 64,
        "depth": 4,
        "k": 20,
        "emb_dims": 1024,
        "mlp": (512, 256),
        "dropout": 0.5,
    },
}
#: Keys a preset leaves open.
PRESET_OVERRIDES: tuple[str, ...] = ("dropout",)

OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
SEARCHERS: tuple[str, ...] = ("tpe", "nsga2", "random", "grid")
SCHEDULERS: tuple[str, ...] = ("asha",)
DIMENSION_KINDS: tuple[str, ...] = ("choice", "uniform", "loguniform", "int", "logint")
#: Metrics a study may optimise, with their natural direction.
OBJECTIVE_MODES: dict[str, str] = {
    tracking.METRIC_VAL: "max",
    tracking.METRIC_LATENCY_P50: "min",
    tracking.METRIC_LATENCY_P90: "min",
    tracking.METRIC_PARAMS: "min",
}
MODES: tuple[str, ...] = ("max", "min")

#: DistillConfig's layer map: the last hidden layer of the student and of the teacher.
DEFAULT_LAYER_MAP: tuple[tuple[int, int], ...] = next(
    f.default for f in fields(DistillConfig) if f.name == "layer_map"
)

#: Built-in per-method defaults (the paper's where it gives them).
BUILTIN_METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "none": {},
    "kd": {"temperature": 4.0, "alpha": 0.9},
    "fitnet": {"lambda": 1.0, "layer_map": DEFAULT_LAYER_MAP},
    # AT: beta = 1000 on the mean squared map difference, as Zagoruyko & Komodakis' code has it.
    "at": {"lambda": 1000.0, "p": 1.0, "layer_map": DEFAULT_LAYER_MAP},
    "lsp": {
        "lambda": 100.0,
        "kernel": "rbf",
        "sigma": 1.0,
        "degree": 2.0,
        "c": 0.0,
        "direction": "student_teacher",
        "lsp_until_epoch": None,
        "layer_map": DEFAULT_LAYER_MAP,
    },
}
#: The LSP parameters each kernel reads; the others do not apply to it.
KERNEL_PARAMS: dict[str, tuple[str, ...]] = {"poly": ("degree", "c"), "rbf": ("sigma",)}

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
TEACHER_HASH_VERSION = 1  # bump when a teacher trained from the same spec would differ


# ---------------------------------------------------------------------------------------------
# The specs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset by name and the keyword options of ``load_task(name, **options)``."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    """One architecture: a preset, or explicit sizes (the keys the architecture does not take
    are ``None``)."""

    arch: str
    preset: str | None = None
    width: int | None = None
    depth: int | None = None
    heads: int | None = None
    k: int | None = None
    emb_dims: int | None = None
    mlp: tuple[int, ...] | None = None
    dropout: float | None = None

    def build_kwargs(self) -> dict[str, Any]:
        """Keywords for ``build_model(self.arch, in_channels=..., out_channels=..., **kwargs)``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "arch" or value is None:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def as_params(self, prefix: str) -> dict[str, Any]:
        """The set fields as flat ``{prefix.key: value}`` (lists for tuples), for logging."""
        return {f"{prefix}.{k}": v for k, v in {"arch": self.arch, **self.build_kwargs()}.items()}


@dataclass(frozen=True)
class TeacherSpec:
    """The teacher: its model, how it is trained, or the checkpoint that replaces training."""

    model: ModelSpec
    train: TrainConfig
    checkpoint: str | None = None


@dataclass(frozen=True)
class StudentSpec:
    """The fixed part of the student; ``given`` holds the model keys the file set explicitly, so
    that a searched ``student.arch`` can fill the other keys with that architecture's defaults."""

    model: ModelSpec
    train: TrainConfig
    given: dict[str, Any] = field(default_factory=dict)

    def model_for(self, arch: str, overrides: Mapping[str, Any] | None = None) -> ModelSpec:
        """The student model for ``arch`` with ``overrides`` over the explicitly given keys."""
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


@dataclass(frozen=True)
class SearcherSpec:
    """How configurations are proposed."""

    algorithm: str = "tpe"
    num_samples: int = 10
    max_concurrent: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class Objective:
    """A metric to optimise and its direction."""

    metric: str
    mode: Literal["max", "min"]


@dataclass(frozen=True)
class SchedulerSpec:
    """An early-stopping scheduler; ``max_t`` ``None`` means the student's epochs."""

    type: str = "asha"
    grace_period: int = 10
    reduction_factor: float = 3.0
    max_t: int | None = None


@dataclass(frozen=True)
class ResourceSpec:
    """Per-trial resources; a fractional ``gpu`` lets trials share one."""

    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class LatencySpec:
    """How inference latency is timed."""

    repeats: int = 30
    warmup: int = 5
    threads: int = 1


@dataclass(frozen=True)
class FaultToleranceSpec:
    """How a trial survives interruption: a checkpoint every ``checkpoint_every`` epochs but not
    within ``checkpoint_min_seconds`` of the last one (what ``resume`` continues from; Tune
    snapshots the experiment at each, so fast epochs must not checkpoint every few seconds), and
    ``max_failures`` automatic restarts of a failing trial."""

    checkpoint_every: int = 20
    checkpoint_min_seconds: float = 30.0
    max_failures: int = 0


@dataclass(frozen=True)
class StudySpec:
    """A whole validated study. ``method_defaults`` holds, for every method of ``methods``, the
    built-in defaults overridden by the file's ``method_defaults``. ``search`` lists the
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
# Checking values: every failure is one line naming the file and the key path
# ---------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    text = repr(tuple(value) if isinstance(value, tuple) else value)
    if isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, default=repr) if _jsonable(value) else text
    text = " ".join(text.split())
    return text if len(text) <= 80 else text[:77] + "..."


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _type_word(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, numbers.Integral):
        return "an integer"
    if isinstance(value, numbers.Real):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def _bounds(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_num(low)}"
    if high is not None:
        return f"{'<' if high_open else '<='} {_num(high)}"
    return ""


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps booleans apart from 0 and 1."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


class _Check:
    """Value checks that fail with ``<source>: <path>: <message>``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> NoReturn:
        text = f"{self.source}: {path}: {message}" if path else f"{self.source}: {message}"
        raise UserInputError(" ".join(text.split()))

    def expected(self, path: str, what: str, value: Any) -> NoReturn:
        self.fail(path, f"expected {what}, got {_show(value)} ({_type_word(value)})")

    def mapping(
        self,
        value: Any,
        path: str,
        keys: Iterable[str] | None = None,
        required: Iterable[str] = (),
    ) -> dict[str, Any]:
        """A mapping with string keys, only ``keys`` (any if ``None``), ``required`` present."""
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            self.expected(path, "a mapping", value)
        valid = None if keys is None else sorted(keys)
        for key in value:
            if not isinstance(key, str):
                self.fail(path, f"keys must be strings, got {_show(key)} ({_type_word(key)})")
            if valid is not None and key not in valid:
                self.fail(_join(path, key), f"unknown key (valid: {', '.join(valid)})")
        for key in required:
            if value.get(key) is None:
                self.fail(_join(path, key), "required key is missing")
        return dict(value)

    def listing(self, value: Any, path: str, *, nonempty: bool = True) -> list[Any]:
        if not isinstance(value, (list, tuple)):
            self.expected(path, "a list", value)
        if nonempty and not value:
            self.fail(path, "expected a non-empty list, got []")
        return list(value)

    def string(self, value: Any, path: str) -> str:
        if not isinstance(value, str):
            self.expected(path, "a string", value)
        return value

    def name(self, value: Any, path: str, kind: str, valid: Iterable[str]) -> str:
        if not isinstance(value, str):
            self.expected(path, f"a {kind} name (one of {', '.join(sorted(valid))})", value)
        try:
            choose(kind, value, tuple(valid))
        except UserInputError as err:
            self.fail(path, str(err))
        return value

    def integer(
        self, value: Any, path: str, *, low: int | None = None, high: int | None = None
    ) -> int:
        bounds = _bounds(low, high, False, False)
        what = "an integer" + (f" {bounds}" if bounds else "")
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            self.expected(path, what, value)
        if (low is not None and value < low) or (high is not None and value > high):
            self.fail(path, f"expected {what}, got {_show(value)}")
        return int(value)

    def number(
        self,
        value: Any,
        path: str,
        *,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = False,
    ) -> float:
        bounds = _bounds(low, high, low_open, high_open)
        what = "a number" + (f" {bounds}" if bounds else "")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            self.expected(path, what, value)
        x = float(value)
        if not math.isfinite(x):
            self.fail(path, f"expected a finite number, got {_show(value)}")
        if low is not None and (x < low or (low_open and x == low)):
            self.fail(path, f"expected {what}, got {_show(value)}")
        if high is not None and (x > high or (high_open and x == high)):
            self.fail(path, f"expected {what}, got {_show(value)}")
        return x

    def plain(self, value: Any, path: str) -> Any:
        """A JSON-like value (str, number, bool, null, lists and string-keyed mappings of them)."""
        if value is None or isinstance(value, (str, bool)):
            return value
        if isinstance(value, numbers.Real):
            return self.number(value, path) if not isinstance(value, numbers.Integral) else value
        if isinstance(value, (list, tuple)):
            return [self.plain(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, Mapping):
            return {k: self.plain(v, _join(path, k)) for k, v in self.mapping(value, path).items()}
        self.expected(path, "a string, number, boolean, list or mapping", value)


@dataclass(frozen=True)
class _Param:
    """What one hyperparameter accepts."""

    kind: Literal["float", "int", "name"]
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    names: tuple[str, ...] = ()
    name_kind: str = ""
    nullable: bool = False
    whole: bool = False  # a float that must be a whole number (the poly degree)

    def check(self, chk: _Check, value: Any, path: str) -> Any:
        if value is None and self.nullable:
            return None
        if self.whole:
            x = chk.number(value, path, low=self.low, high=self.high)
            if not x.is_integer():
                chk.fail(
                    path,
                    f"expected a whole number {_bounds(self.low, self.high, False, False)}"
                    f" (a fractional power of a negative dot product is NaN), got {_show(value)}",
                )
            return x
        if self.kind == "name":
            return chk.name(value, path, self.name_kind, self.names)
        if self.kind == "int":
            low = None if self.low is None else int(self.low)
            high = None if self.high is None else int(self.high)
            return chk.integer(value, path, low=low, high=high)
        return chk.number(
            value,
            path,
            low=self.low,
            high=self.high,
            low_open=self.low_open,
            high_open=self.high_open,
        )


_POSITIVE = _Param("float", low=0.0, low_open=True)
_NONNEG = _Param("float", low=0.0)
_COUNT = _Param("int", low=1)

#: Hyperparameters per method (``layer_map`` is checked apart and cannot be searched).
METHOD_PARAMS: dict[str, dict[str, _Param]] = {
    "none": {},
    "kd": {"temperature": _POSITIVE, "alpha": _Param("float", low=0.0, high=1.0)},
    "fitnet": {"lambda": _NONNEG},
    "at": {"lambda": _NONNEG, "p": _POSITIVE},
    "lsp": {
        "lambda": _NONNEG,
        "kernel": _Param("name", names=KERNELS, name_kind="kernel"),
        "sigma": _POSITIVE,
        "degree": _Param("float", low=1.0, whole=True),
        "c": _Param("float"),
        "direction": _Param("name", names=DIRECTIONS, name_kind="direction"),
        "lsp_until_epoch": _Param("int", low=1, nullable=True),
    },
}
_LAYER_MAP_METHODS = ("fitnet", "at", "lsp")

#: Model keys of teacher and student (``arch`` and ``preset`` are checked apart).
MODEL_PARAMS: dict[str, _Param] = {
    "width": _COUNT,
    "depth": _COUNT,
    "heads": _COUNT,
    "k": _COUNT,
    "emb_dims": _COUNT,
    "dropout": _Param("float", low=0.0, high=1.0, high_open=True),
}
_MODEL_KEYS = ("arch", "preset", *MODEL_PARAMS, "mlp")

#: Training keys (TrainConfig's fields but ``device``, which the runner sets from resources).
TRAIN_PARAMS: dict[str, _Param] = {
    "epochs": _COUNT,
    "lr": _POSITIVE,
    "weight_decay": _NONNEG,
    "optimizer": _Param("name", names=OPTIMIZERS, name_kind="optimizer"),
    "momentum": _Param("float", low=0.0, high=1.0, high_open=True),
    "batch_size": _COUNT,
    "eval_every": _COUNT,
    "seed": _Param("int", low=0),
}
_TRAIN_KEYS = tuple(f.name for f in fields(TrainConfig) if f.name != "device")

#: Searchable student keys.
STUDENT_SEARCH_PARAMS: dict[str, _Param] = {
    "arch": _Param("name", names=ARCHS, name_kind="architecture"),
    **{k: MODEL_PARAMS[k] for k in ("width", "depth", "heads", "k", "dropout")},
    "lr": TRAIN_PARAMS["lr"],
    "weight_decay": TRAIN_PARAMS["weight_decay"],
}
_STUDENT_TRAIN_DIMS = ("lr", "weight_decay")

#: Every valid search key.
SEARCH_KEYS: tuple[str, ...] = tuple(
    sorted(
        [f"{m}.{k}" for m, params in METHOD_PARAMS.items() for k in params]
        + [f"student.{k}" for k in STUDENT_SEARCH_PARAMS]
    )
)
_CONDITIONING = ("student.arch", "lsp.kernel")


def _param_for(name: str) -> _Param:
    prefix, _, key = name.partition(".")
    if prefix == "student":
        return STUDENT_SEARCH_PARAMS[key]
    return METHOD_PARAMS[prefix][key]


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
# Parsing
# ---------------------------------------------------------------------------------------------

_TOP_KEYS = (
    "name",
    "description",
    "dataset",
    "teacher",
    "student",
    "methods",
    "method_defaults",
    "search",
    "seeds",
    "searcher",
    "objectives",
    "scheduler",
    "resources",
    "latency",
    "fault_tolerance",
)


def parse_study_spec(data: Any, source: str) -> StudySpec:
    """Validate a study mapping (as loaded from YAML) completely and build the spec.

    Args:
        data: the loaded YAML document.
        source: the file it came from, for messages; a relative ``teacher.checkpoint`` is taken
            relative to its folder.

    Raises:
        UserInputError: the first problem, as ``<source>: <key.path>: <message>``.
    """
    chk = _Check(source)
    if not isinstance(data, Mapping):
        chk.fail("", f"expected a mapping of study keys at the top level, got {_type_word(data)}")
    top = chk.mapping(data, "", _TOP_KEYS, required=("name", "dataset", "teacher", "student"))

    name = chk.string(top["name"], "name")
    if not _NAME_RE.fullmatch(name) or name in (".", ".."):
        chk.fail("name", f"expected letters, digits and _ . - only (a folder name), got {name!r}")
    description = (
        "" if top.get("description") is None else chk.string(top["description"], "description")
    )
    dataset = _parse_dataset(chk, top["dataset"])
    methods = _parse_methods(chk, top.get("methods"))
    method_defaults = _parse_method_defaults(chk, top.get("method_defaults"), methods)
    search_raw = chk.mapping(top.get("search"), "search")
    teacher = _parse_teacher(chk, top["teacher"], dataset, Path(source).parent)
    student = _parse_student(chk, top["student"], dataset, "student.arch" in search_raw)
    seeds = _parse_seeds(chk, top.get("seeds"))
    searcher = _parse_searcher(chk, top.get("searcher"))
    search = _parse_search(chk, search_raw, methods, method_defaults, student, dataset, searcher)
    objectives = _parse_objectives(chk, top.get("objectives"))
    scheduler = _parse_scheduler(chk, top.get("scheduler"), objectives, student.train.epochs)
    resources = _parse_resources(chk, top.get("resources"))
    latency = _parse_latency(chk, top.get("latency"))
    fault_tolerance = _parse_fault_tolerance(chk, top.get("fault_tolerance"))
    return StudySpec(
        name=name,
        description=description,
        dataset=dataset,
        teacher=teacher,
        student=student,
        methods=methods,
        method_defaults=method_defaults,
        search=search,
        seeds=seeds,
        searcher=searcher,
        objectives=objectives,
        scheduler=scheduler,
        resources=resources,
        latency=latency,
        source=source,
        fault_tolerance=fault_tolerance,
    )


def _parse_dataset(chk: _Check, raw: Any) -> DatasetSpec:
    d = chk.mapping(raw, "dataset", ("name", "options"), required=("name",))
    name = chk.name(d["name"], "dataset.name", "dataset", DATASETS)
    options = chk.mapping(d.get("options"), "dataset.options")
    return DatasetSpec(name, {k: chk.plain(v, f"dataset.options.{k}") for k, v in options.items()})


def _parse_methods(chk: _Check, raw: Any) -> tuple[str, ...]:
    if raw is None:
        return METHODS
    out: list[str] = []
    for i, value in enumerate(chk.listing(raw, "methods")):
        method = chk.name(value, f"methods[{i}]", "method", METHODS)
        if method in out:
            chk.fail(f"methods[{i}]", f"method {method!r} is listed twice")
        out.append(method)
    return tuple(out)


def _parse_layer_map(chk: _Check, raw: Any, path: str) -> tuple[tuple[int, int], ...]:
    if raw is None:
        return DEFAULT_LAYER_MAP
    pairs = []
    for i, pair in enumerate(chk.listing(raw, path)):
        where = f"{path}[{i}]"
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            chk.expected(where, "a [student layer, teacher layer] pair of integers", pair)
        pairs.append((chk.integer(pair[0], f"{where}[0]"), chk.integer(pair[1], f"{where}[1]")))
    return tuple(pairs)


def _parse_method_defaults(
    chk: _Check, raw: Any, methods: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    # Defaults of methods not in `methods` are validated too, then unused: toggling a method in
    # `methods` should not force editing this block.
    given = chk.mapping(raw, "method_defaults", METHODS)
    merged = {m: dict(BUILTIN_METHOD_DEFAULTS[m]) for m in methods}
    for method, values in given.items():
        path = f"method_defaults.{method}"
        params = METHOD_PARAMS[method]
        keys = [*params, *(("layer_map",) if method in _LAYER_MAP_METHODS else ())]
        checked = {}
        for key, value in chk.mapping(values, path, keys).items():
            if key == "layer_map":
                checked[key] = _parse_layer_map(chk, value, f"{path}.layer_map")
            else:
                checked[key] = params[key].check(chk, value, f"{path}.{key}")
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
    chk.mapping(d, path, [k for k in _TRAIN_KEYS if allow_seed or k != "seed"])
    values: dict[str, Any] = {}
    for key, value in d.items():
        if value is None:
            continue
        if key in TRAIN_PARAMS:
            values[key] = TRAIN_PARAMS[key].check(chk, value, f"{path}.{key}")
            continue
        # A TrainConfig field this module does not know yet: check the type of its default.
        default = next(f.default for f in fields(TrainConfig) if f.name == key)
        if isinstance(default, str):
            values[key] = chk.string(value, f"{path}.{key}")
        else:
            kind = "int" if isinstance(default, int) else "float"
            values[key] = _Param(kind).check(chk, value, f"{path}.{key}")
    return TrainConfig(**values)


def _check_arch_kind(chk: _Check, arch: str, path: str, dataset: DatasetSpec) -> None:
    kind = DATASET_KINDS[dataset.name]
    if ARCH_KINDS[arch] != kind:
        fitting = ", ".join(a for a in ARCHS if ARCH_KINDS[a] == kind)
        chk.fail(
            path,
            f"{arch} is a {_KIND_WORDS[ARCH_KINDS[arch]]} model, but dataset {dataset.name!r} is "
            f"a {_KIND_WORDS[kind]} task (valid here: {fitting})",
        )


def _archs_taking(key: str) -> tuple[str, ...]:
    return tuple(a for a in ARCHS if key in ARCH_DEFAULTS[a])


def _model_spec(arch: str, preset: str | None, given: Mapping[str, Any]) -> ModelSpec:
    """The model of ``arch``: a preset (plus its open keys) or sizes over the arch defaults."""
    if preset is not None:
        return ModelSpec(arch, preset, **{k: given[k] for k in PRESET_OVERRIDES if k in given})
    values = {k: given.get(k, default) for k, default in ARCH_DEFAULTS[arch].items()}
    if values.get("mlp") is not None:
        values["mlp"] = tuple(values["mlp"])
    return ModelSpec(arch, None, **values)


def _parse_model(
    chk: _Check,
    d: dict[str, Any],
    path: str,
    dataset: DatasetSpec,
    *,
    arch_searched: bool = False,
) -> tuple[ModelSpec, dict[str, Any]]:
    preset = None
    if d.get("preset") is not None:
        preset = chk.name(d["preset"], f"{path}.preset", "preset", PRESETS)
    if d.get("arch") is None:
        if preset is None:
            chk.fail(f"{path}.arch", f"required key is missing (valid: {', '.join(ARCHS)})")
        arch = PRESET_ARCH[preset]
    else:
        arch = chk.name(d["arch"], f"{path}.arch", "architecture", ARCHS)
        if preset is not None and PRESET_ARCH[preset] != arch:
            chk.fail(
                f"{path}.preset",
                f"preset {preset!r} builds a {PRESET_ARCH[preset]} model, but arch is {arch!r}",
            )
    _check_arch_kind(chk, arch, f"{path}.arch", dataset)
    given: dict[str, Any] = {}
    for key in (*MODEL_PARAMS, "mlp"):
        value = d.get(key)
        if value is None:
            continue
        where = f"{path}.{key}"
        if preset is not None and key not in PRESET_OVERRIDES:
            chk.fail(where, f"must be absent with a preset (preset {preset!r} fixes it)")
        takers = _archs_taking(key)
        if arch not in takers and not arch_searched:
            chk.fail(where, f"applies only to arch {'/'.join(takers)}, but {path}.arch is {arch!r}")
        if key == "mlp":
            widths = chk.listing(value, where, nonempty=False)
            given[key] = tuple(_COUNT.check(chk, w, f"{where}[{i}]") for i, w in enumerate(widths))
        else:
            given[key] = MODEL_PARAMS[key].check(chk, value, where)
    return _model_spec(arch, preset, given), given


def _parse_teacher(chk: _Check, raw: Any, dataset: DatasetSpec, base: Path) -> TeacherSpec:
    d = chk.mapping(raw, "teacher", (*_MODEL_KEYS, "checkpoint", "train"))
    model, _ = _parse_model(chk, d, "teacher", dataset)
    train = _parse_train(chk, d.get("train"), "teacher.train", allow_seed=True)
    checkpoint = None
    if d.get("checkpoint") is not None:
        given = Path(chk.string(d["checkpoint"], "teacher.checkpoint")).expanduser()
        # Absolute, so that Ray workers in other working directories find the same file.
        path = (given if given.is_absolute() else base / given).resolve()
        if not path.is_file():
            chk.fail("teacher.checkpoint", f"no such file {str(path)!r}")
        checkpoint = str(path)
    return TeacherSpec(model, train, checkpoint)


def _parse_student(chk: _Check, raw: Any, dataset: DatasetSpec, arch_searched: bool) -> StudentSpec:
    d = chk.mapping(raw, "student", (*_MODEL_KEYS, "train"))
    model, given = _parse_model(chk, d, "student", dataset, arch_searched=arch_searched)
    train = _parse_train(chk, d.get("train"), "student.train", allow_seed=False)
    return StudentSpec(model, train, given)


def _parse_seeds(chk: _Check, raw: Any) -> tuple[int, ...]:
    if raw is None:
        return (0,)
    out: list[int] = []
    for i, value in enumerate(chk.listing(raw, "seeds")):
        seed = chk.integer(value, f"seeds[{i}]", low=0)
        if seed in out:
            chk.fail(f"seeds[{i}]", f"seed {seed} is listed twice")
        out.append(seed)
    return tuple(out)


def _parse_searcher(chk: _Check, raw: Any) -> SearcherSpec:
    d = chk.mapping(raw, "searcher", ("algorithm", "num_samples", "max_concurrent", "seed"))
    algorithm = "tpe"
    if d.get("algorithm") is not None:
        algorithm = chk.name(d["algorithm"], "searcher.algorithm", "searcher", SEARCHERS)
    num_samples = 1 if algorithm == "grid" else SearcherSpec.num_samples
    if d.get("num_samples") is not None:
        num_samples = chk.integer(d["num_samples"], "searcher.num_samples", low=1)
    max_concurrent = None
    if d.get("max_concurrent") is not None:
        max_concurrent = chk.integer(d["max_concurrent"], "searcher.max_concurrent", low=1)
    seed = 0 if d.get("seed") is None else chk.integer(d["seed"], "searcher.seed", low=0)
    return SearcherSpec(algorithm, num_samples, max_concurrent, seed)


def _parse_dimension(chk: _Check, name: str, raw: Any, method: str | None) -> Dimension:
    path = f"search.{name}"
    forms = (
        "{choice: [...]}, {uniform: [lo, hi]}, {loguniform: [lo, hi]}, {int: [lo, hi]} or "
        "{logint: [lo, hi]}"
    )
    if not isinstance(raw, Mapping) or len(raw) != 1:
        chk.expected(path, f"one of {forms}", raw)
    ((kind, args),) = raw.items()
    if kind not in DIMENSION_KINDS:
        chk.fail(path, f"unknown dimension kind {kind!r} (valid: {', '.join(DIMENSION_KINDS)})")
    param = _param_for(name)
    if kind == "choice":
        values = chk.listing(args, f"{path}.choice")
        out: list[Any] = []
        for i, value in enumerate(values):
            if isinstance(value, (list, tuple, Mapping)):
                chk.expected(f"{path}.choice[{i}]", "a single value", value)
            checked = param.check(chk, value, f"{path}.choice[{i}]")
            if any(_same(checked, v) for v in out):
                chk.fail(f"{path}.choice[{i}]", f"value {_show(value)} is listed twice")
            out.append(checked)
        return Dimension(name, kind, tuple(out), method)
    if param.kind == "name":
        chk.fail(path, f"{kind} does not fit a name; use {{choice: [...]}}")
    if (param.kind == "int" or param.whole) and kind in ("uniform", "loguniform"):
        chk.fail(
            path, f"{kind} gives fractional values, but {name} is an integer; use int or logint"
        )
    if not isinstance(args, (list, tuple)) or len(args) != 2:
        chk.expected(path, f"{kind} with a [low, high] pair", args)
    integral = kind in ("int", "logint")
    for value in args:
        ok = isinstance(value, numbers.Integral if integral else numbers.Real)
        if isinstance(value, bool) or not ok or not math.isfinite(value):
            chk.fail(
                path,
                f"{kind} needs two {'integers' if integral else 'numbers'}, "
                f"got {_show(list(args))}",
            )
    low, high = (int(a) for a in args) if integral else (float(a) for a in args)
    if kind == "loguniform" and (low <= 0 or low >= high):
        chk.fail(path, f"loguniform needs 0 < low < high, got {_show(list(args))}")
    if kind == "logint" and (low < 1 or low >= high):
        chk.fail(path, f"logint needs 1 <= low < high, got {_show(list(args))}")
    if low >= high:
        chk.fail(path, f"{kind} needs low < high, got {_show(list(args))}")
    param.check(chk, low, f"{path}.{kind}[0]")
    param.check(chk, high, f"{path}.{kind}[1]")
    return Dimension(name, kind, (low, high), method)


def _parse_search(
    chk: _Check,
    raw: dict[str, Any],
    methods: tuple[str, ...],
    method_defaults: dict[str, dict[str, Any]],
    student: StudentSpec,
    dataset: DatasetSpec,
    searcher: SearcherSpec,
) -> tuple[Dimension, ...]:
    dims: dict[str, Dimension] = {}
    # Conditioning dimensions first, so conditions can refer to them.
    order = [n for n in _CONDITIONING if n in raw] + [n for n in raw if n not in _CONDITIONING]
    for name in order:
        path = f"search.{name}"
        if name in ("method", "seed"):
            chk.fail(path, f"the {name} is not searched here: it comes from `{name}s`")
        if name not in SEARCH_KEYS:
            chk.fail(path, f"unknown search dimension (valid: {', '.join(SEARCH_KEYS)})")
        prefix, _, key = name.partition(".")
        method = None if prefix == "student" else prefix
        if method is not None and method not in methods:
            chk.fail(
                path,
                f"searches a parameter of method {method!r}, which is not in methods "
                f"[{', '.join(methods)}]",
            )
        dim = _parse_dimension(chk, name, raw[name], method)
        if searcher.algorithm == "grid" and dim.kind != "choice":
            chk.fail(
                path, f"the grid searcher needs every dimension to be a choice, got {dim.kind}"
            )
        condition = None
        if method == "lsp" and key in ("sigma", "degree", "c"):
            kernels = tuple(k for k, ps in KERNEL_PARAMS.items() if key in ps)
            condition = _condition(
                chk,
                path,
                dims.get("lsp.kernel"),
                "lsp.kernel",
                method_defaults["lsp"]["kernel"],
                kernels,
                "kernel",
            )
        if method is None:
            condition = _check_student_dim(
                chk, path, key, dim, student, dataset, dims.get("student.arch")
            )
        dims[name] = replace(dim, condition=condition)
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


def _check_student_dim(
    chk: _Check,
    path: str,
    key: str,
    dim: Dimension,
    student: StudentSpec,
    dataset: DatasetSpec,
    arch_dim: Dimension | None,
) -> tuple[str, tuple[Any, ...]] | None:
    preset = student.model.preset
    if preset is not None and key not in (*PRESET_OVERRIDES, *_STUDENT_TRAIN_DIMS):
        chk.fail(path, f"student.preset {preset!r} fixes the {key}; drop the preset to search it")
    if key == "arch":
        for i, arch in enumerate(dim.args):
            _check_arch_kind(chk, arch, f"{path}.choice[{i}]", dataset)
        return None
    if key in ("heads", "k"):
        return _condition(
            chk, path, arch_dim, "student.arch", student.model.arch, _archs_taking(key), "arch"
        )
    return None


def _parse_objectives(chk: _Check, raw: Any) -> tuple[Objective, ...]:
    if raw is None:
        return (Objective(tracking.METRIC_VAL, "max"),)
    out: list[Objective] = []
    for i, item in enumerate(chk.listing(raw, "objectives")):
        path = f"objectives[{i}]"
        d = chk.mapping(item, path, ("metric", "mode"), required=("metric",))
        metric = chk.string(d["metric"], f"{path}.metric")
        if metric == tracking.METRIC_TEST:
            chk.fail(
                f"{path}.metric",
                "test_score cannot be an objective: selecting on the test "
                "split is dishonest (it leaks the test set into model selection); use "
                "val_score",
            )
        metric = chk.name(metric, f"{path}.metric", "objective metric", OBJECTIVE_MODES)
        if any(o.metric == metric for o in out):
            chk.fail(f"{path}.metric", f"metric {metric!r} is listed twice")
        mode = OBJECTIVE_MODES[metric]
        if d.get("mode") is not None:
            mode = chk.name(d["mode"], f"{path}.mode", "mode", MODES)
        out.append(Objective(metric, mode))  # type: ignore[arg-type]
    return tuple(out)


def _parse_scheduler(
    chk: _Check, raw: Any, objectives: tuple[Objective, ...], epochs: int
) -> SchedulerSpec | None:
    if raw is None:
        return None
    d = chk.mapping(raw, "scheduler", ("type", "grace_period", "reduction_factor", "max_t"))
    kind = (
        "asha"
        if d.get("type") is None
        else chk.name(d["type"], "scheduler.type", "scheduler", SCHEDULERS)
    )
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
            f"{kind} stops trials on a metric reported every epoch, which only "
            f"val_score is; the objective is {objectives[0].metric}",
        )
    spec = SchedulerSpec(type=kind)
    if d.get("grace_period") is not None:
        spec = replace(
            spec, grace_period=chk.integer(d["grace_period"], "scheduler.grace_period", low=1)
        )
    if d.get("reduction_factor") is not None:
        rf = chk.number(d["reduction_factor"], "scheduler.reduction_factor", low=1.0, low_open=True)
        spec = replace(spec, reduction_factor=rf)
    if d.get("max_t") is not None:
        spec = replace(spec, max_t=chk.integer(d["max_t"], "scheduler.max_t", low=1))
    max_t = spec.max_t if spec.max_t is not None else epochs
    if spec.grace_period > max_t:
        chk.fail(
            "scheduler.grace_period",
            f"expected at most max_t = {max_t} "
            f"({'scheduler.max_t' if spec.max_t else 'the student epochs'}), "
            f"got {spec.grace_period}",
        )
    return spec


def _parse_resources(chk: _Check, raw: Any) -> ResourceSpec:
    d = chk.mapping(raw, "resources", ("cpu", "gpu"))
    cpu = (
        1.0
        if d.get("cpu") is None
        else chk.number(d["cpu"], "resources.cpu", low=0.0, low_open=True)
    )
    gpu = 0.0 if d.get("gpu") is None else chk.number(d["gpu"], "resources.gpu", low=0.0)
    if gpu > 1 and not gpu.is_integer():
        chk.fail(
            "resources.gpu",
            f"Ray shares a GPU only in fractions below 1; above 1 use a whole "
            f"number, got {_num(gpu)}",
        )
    return ResourceSpec(cpu, gpu)


def _parse_latency(chk: _Check, raw: Any) -> LatencySpec:
    d = chk.mapping(raw, "latency", ("repeats", "warmup", "threads"))
    lows = {"repeats": 1, "warmup": 0, "threads": 1}
    values = {k: chk.integer(v, f"latency.{k}", low=lows[k]) for k, v in d.items() if v is not None}
    return LatencySpec(**values)


def _parse_fault_tolerance(chk: _Check, raw: Any) -> FaultToleranceSpec:
    path = "fault_tolerance"
    d = chk.mapping(raw, path, ("checkpoint_every", "checkpoint_min_seconds", "max_failures"))
    values: dict[str, Any] = {}
    for key, low in (("checkpoint_every", 1), ("max_failures", 0)):
        if d.get(key) is not None:
            values[key] = chk.integer(d[key], f"{path}.{key}", low=low)
    if d.get("checkpoint_min_seconds") is not None:
        key = "checkpoint_min_seconds"
        values[key] = chk.number(d[key], f"{path}.{key}", low=0.0)
    return FaultToleranceSpec(**values)


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

        def expand(
            i: int,
            partial: dict[str, Any],
            method: str = method,
            dims: tuple[Dimension, ...] = dims,
        ) -> None:
            if i == len(dims):
                out.append({"method": method, **partial})
            elif not dims[i].applies(method, partial):
                expand(i + 1, partial)
            else:
                for value in dims[i].args:
                    expand(i + 1, {**partial, dims[i].name: value})

        expand(0, {})
    return out


def _check_value(chk: _Check, dim: Dimension, value: Any, path: str) -> Any:
    param = _param_for(dim.name)
    if dim.kind == "choice":
        if not any(_same(value, v) for v in dim.args):
            chk.fail(path, f"expected one of {_show(list(dim.args))}, got {_show(value)}")
        return param.check(chk, value, path)
    low, high = dim.args
    # Samplers map through exp/log: allow the last bit of rounding at the ends.
    slack = 1e-9 * max(abs(low), abs(high), 1.0)
    if dim.kind in ("int", "logint"):
        x = chk.integer(value, path)
    else:
        x = chk.number(value, path)
    if not low - slack <= x <= high + slack:
        chk.fail(
            path, f"expected a value of {dim.kind} [{_num(low)}, {_num(high)}], got {_show(value)}"
        )
    return param.check(chk, min(max(x, low), high), path)


def _distill_config(method: str, values: Mapping[str, Any]) -> DistillConfig:
    if method == "none":
        return DistillConfig(method="none")
    if method == "kd":
        return DistillConfig(method="kd", temperature=values["temperature"], alpha=values["alpha"])
    if method in ("fitnet", "at"):
        extra = {"at_p": values["p"]} if method == "at" else {}
        return DistillConfig(
            method=method, lambda_=values["lambda"], layer_map=values["layer_map"], **extra
        )
    kernel = values["kernel"]
    return DistillConfig(
        method="lsp",
        lambda_=values["lambda"],
        kernel=kernel,
        kernel_params={k: values[k] for k in KERNEL_PARAMS.get(kernel, ())},
        direction=values["direction"],
        lsp_until_epoch=values["lsp_until_epoch"],
        layer_map=values["layer_map"],
    )


def _method_params(method: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The applicable ``<method>.*`` params: kernel parameters only for their kernel."""
    out = {}
    for key, value in values.items():
        if method == "lsp" and key in ("sigma", "degree", "c"):
            if key not in KERNEL_PARAMS.get(values["kernel"], ()):
                continue
        if key == "layer_map":
            value = [list(pair) for pair in value]
        out[f"{method}.{key}"] = value
    return out


def resolve_trial(spec: StudySpec, params: Mapping[str, Any]) -> TrialPlan:
    """Resolve one trial's flat sampled parameters against the spec.

    Args:
        spec: the study.
        params: ``{"method": ..., "seed": ..., "<dim>": value, ...}`` as the searcher gave them;
            values of dimensions that do not apply to the method (another method's, ``lsp.sigma``
            with a linear kernel) are ignored, those that apply must be present.

    Returns:
        The plan: student model with the sampled dimensions applied, its TrainConfig (trial seed,
        sampled ``lr``/``weight_decay``), the DistillConfig (built-in defaults < the file's
        ``method_defaults`` < sampled) and the flat params for logging.

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
    seed = chk.integer(params["seed"], "params.seed")
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
        sampled[dim.name] = _check_value(chk, dim, params[dim.name], f"params.{dim.name}")

    student_sampled = {
        d.key: v for d in spec.search if d.method is None and (v := sampled.get(d.name)) is not None
    }
    arch = student_sampled.pop("arch", spec.student.model.arch)
    train_overrides = {
        k: student_sampled.pop(k) for k in _STUDENT_TRAIN_DIMS if k in student_sampled
    }
    student = spec.student.model_for(arch, student_sampled)
    student_train = replace(spec.student.train, seed=seed, **train_overrides)

    values = dict(spec.method_defaults[method])
    values.update(
        {d.key: sampled[d.name] for d in spec.search if d.method == method and d.name in sampled}
    )
    distill = _distill_config(method, values)

    flat: dict[str, Any] = {"method": method, **_method_params(method, values)}
    flat.update(student.as_params("student"))
    flat["student.lr"] = student_train.lr
    flat["student.weight_decay"] = student_train.weight_decay
    flat["seed"] = seed
    return TrialPlan(method, seed, student, student_train, distill, flat, config_id(flat))


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
    """The hash a teacher is cached under: its model, training (seed included, device not) and
    checkpoint, and the dataset's name and options; the student and the search do not enter."""
    train = {
        f.name: getattr(spec.teacher.train, f.name)
        for f in fields(TrainConfig)
        if f.name != "device"
    }
    return stable_hash(
        {
            "version": TEACHER_HASH_VERSION,
            "dataset": {"name": spec.dataset.name, "options": spec.dataset.options},
            "teacher": {
                "model": spec.teacher.model,
                "train": train,
                "checkpoint": spec.teacher.checkpoint,
            },
        }
    )


__all__ = [
    "ARCHS",
    "DATASETS",
    "DIRECTIONS",
    "KERNELS",
    "METHODS",
    "PRESETS",
    "DatasetSpec",
    "Dimension",
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
    "resolve_trial",
    "stable_hash",
    "teacher_hash",
]
