"""Typed, validated study specs built from YAML: the contract between a study file and the runner.

A study file is read by :mod:`study.studyfile` (at most 1 MiB of UTF-8; a safe YAML loader: no
tags, no code, YAML 1.2 floats, duplicate keys refused, aliases bounded) and checked completely
before anything starts. Pydantic, strict (``true`` and ``"8"``
are not integers, NaN and infinity not numbers), checks types, ranges and unknown keys; every
name (dataset, architecture, preset, method, kernel) and every parameter schema and default comes
from the catalogs (:mod:`study.catalogs`). Every problem raises
:class:`~study.errors.UserInputError` with one line, ``<file>: <key.path>: <message>``::

    search_spaces/q.yaml: methods[1]: unknown method 'kdd' (valid: at, fitnet, kd, lsp, none)
    search_spaces/q.yaml: student.widht: unknown key (valid: arch, depth, ...)

The keys (``search_spaces/quickstart.yaml`` shows them with comments; defaults in brackets)::

    name: quickstart            # required; [A-Za-z0-9_.-]+: the MLflow experiment, Tune folder
    description: ""             # [""]
    dataset:                    # required: exactly one of name, path, factory
      name: cora                # a DATASETS entry; options checked by its schema, unset ones
      path: graph.pt            #   left to the loader | a saved graph (relative to this file)
      factory: "module:fn"      #   | a function returning the task (path, factory: node tasks)
      options: {}               # [{}] the loader's keyword options
      metric: accuracy          # [the dataset's] accuracy macro_f1 micro_f1 auroc (nodes);
                                #   accuracy mean_class_accuracy auroc (point clouds)
      split: {train_until: 0.6, val_until: 0.8, by: quantile}  # temporal graphs only (node_time,
                                #   edge_time): chronological cuts; by: quantile | time
      target_node_type: user    # a user's HeteroData (path, factory) only: the classified type
    teacher:                    # required: built-in keys or factory keys
      arch: gat                 # a MODELS entry (gat gcn sage mlp, rgcn on typed graphs: node
                                #   tasks; dgcnn: clouds)
      preset: null              # a preset of the arch (ppi_teacher, ...): then only dropout
      width: 8                  # the arch's size keys (width depth heads k emb_dims mlp
      dropout: 0.6              #   dropout), defaults from its schema
      factory: "module:fn"      # or a user model, fn(in_channels, out_channels, **options),
      options: {}               #   with keyword options and the submodules whose outputs are
      hidden: [conv1]           #   hidden features (non-empty when methods has fitnet/at/lsp)
      checkpoint: null          # a trained teacher (relative to this file) instead of training
      train: {epochs: 200, lr: 0.005, weight_decay: 5.0e-4, optimizer: adam, momentum: 0.9,
              batch_size: 32, eval_every: 1, seed: 0,    # TrainConfig's defaults
              num_neighbors: null}      # [15, 10]: mini-batches of batch_size seed nodes
    student: {...}              # required; the teacher's keys but checkpoint and train.seed
    methods: [none, kd, fitnet, at, lsp]   # [every METHODS entry but the opt-in edge_attention]
    method_defaults:            # per method, over the entry's defaults (LSP: and the kernels')
      lsp: {lambda: 100.0, kernel: rbf, sigma: 1.0, direction: student_teacher,
            lsp_until_epoch: null, layer_map: last}   # last | uniform | [[s, t], ...]
    search:                     # [{}] one dimension a line: {choice: [...]}, {uniform: [lo, hi]},
      lsp.lambda: {loguniform: [1.0, 1000.0]}  # {loguniform: ..}, {int: ..}, {logint: ..}
      student.width: {choice: [8, 16]}         # student.options.NAME: factory students only
    seeds: [0]                  # [[0]] each configuration runs once per seed
    searcher: {algorithm: tpe, num_samples: 10, max_concurrent: null, seed: 0}  # nsga2 random grid
                                # nsga2: population_size [max(2, num_samples // 4)]
    objectives: [{metric: val_score, mode: max}]  # val_score latency_ms_p50/p90 num_params
                                # serve_b1_ms_p50/p90 serve_b256_ms_p50/p90 (node tasks)
    scheduler: null             # or {type: asha, grace_period: 10, reduction_factor: 3, max_t: ..}
    resources: {cpu: 1, gpu: 0} # per trial; a fractional gpu shares one
    latency: {repeats: 30, warmup: 5, threads: 1,      # rounds of 30 timed calls until the
              tolerance: 0.03, max_repeats: 300,    # p50's 95% CI is within 3%, with the
              max_seconds: 30, quiet: true,         # machine's trials paused (quiet);
              windows: 3, window_gap: 2.0,          # the median of 3 windows 2 s apart;
              onnx: true}                           # also time under ONNX Runtime (CPU)
    fault_tolerance: {checkpoint_every: 20, checkpoint_min_seconds: 30, max_failures: 0}

Search: ``<method>.<param>`` (LSP: also its kernels' parameters) applies only to trials of that
method, which must be in ``methods``, and a kernel's parameter (``lsp.sigma``: rbf; ``lsp.degree``,
``lsp.c``: poly) only with that kernel; ``student.<key>`` applies to every trial, a size key
only to the architectures that take it (``heads``: gat, ``k``: dgcnn). Either condition is on the
searched ``lsp.kernel``/``student.arch``, or an error against the fixed one. Float parameters
take every kind, integers ``int``/``logint``/``choice``, names and booleans ``choice``, a
``layer_map`` ``choice`` only (``last``, ``uniform`` or lists of pairs, held as their JSON text
so that Optuna sees plain values: :mod:`study.layer_map`), and ``student.num_neighbors`` a
``choice`` of fan-out lists (``{choice: [[10, 5], [15, 10]]}``, likewise JSON text, each checked
as ``train.num_neighbors``; searching it turns mini-batch mode on, the first choice standing for
the study-level value where ``student.train.num_neighbors`` is null; each list must fit every
searched ``student.depth``, checked by the pre-flight). ``grid``
needs choices only and is enumerated per method (:func:`grid_configs`), ``num_samples`` [1]
repeating it; otherwise ``num_samples`` [10] counts configurations, each run once per seed.
``num_samples`` is at most :data:`MAX_NUM_SAMPLES` (100,000) and a study at most
:data:`MAX_TRIALS` (100,000) trials, configurations times seeds: about a day of one-second
trials on one core, and more than Tune's experiment state and one MLflow experiment serve
well; a typo'd ``1000000000000`` is refused before anything starts.
``test_score`` is never an objective (it leaks the test set into model selection); a scheduler
needs the one objective ``val_score``. Checks that need torch (a factory imports, its options
fit, a file's contents, checkpoint keys, hidden names) are not made here: this imports no torch.

A trial's flat dict (``{"method": "lsp", "lsp.lambda": 12.3, "student.width": 16, "seed": 1}``)
is checked and resolved by :func:`resolve_trial` into the student, its
:class:`~study.train_config.TrainConfig` and :class:`~study.train_config.DistillConfig`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import numbers
import re
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, Union, get_args, get_origin

import annotated_types as at
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic import dataclasses as pdc
from pydantic.fields import FieldInfo

from study import catalogs as cat
from study import studyfile, tracking
from study.catalog import FACTORY_RE
from study.errors import UserInputError, choose
from study.layer_map import layer_map_text
from study.train_config import DistillConfig, TrainConfig

DIMENSION_KINDS: tuple[str, ...] = ("choice", "uniform", "loguniform", "int", "logint")
#: Metrics a study may optimise, with their natural direction.
OBJECTIVE_MODES: dict[str, str] = {
    tracking.METRIC_VAL: "max",
    tracking.METRIC_LATENCY_P50: "min",
    tracking.METRIC_LATENCY_P90: "min",
    tracking.METRIC_PARAMS: "min",
    **{metric: "min" for metric in tracking.SERVE_METRICS},
}
#: The most configurations a searcher proposes (``searcher.num_samples``).
MAX_NUM_SAMPLES = 100_000
#: The most trials (configurations times seeds) one study runs.
MAX_TRIALS = 100_000
TEACHER_HASH_VERSION = 1  # bump when a teacher trained from the same spec would differ
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
_NonNegInt = Annotated[int, Field(ge=0)]
_Factory = Annotated[str, AfterValidator(lambda v: _factory_ref(v))]


def _factory_ref(value: str) -> str:
    if not FACTORY_RE.fullmatch(value):
        raise ValueError(f"expected 'module:function' (e.g. my_models:build), got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# The specs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """A catalog dataset ``name``, a saved graph at ``path`` or a ``factory``, with the loader's
    ``options``; ``metric`` (node tasks) and ``base_dir`` (the study file's folder)."""

    name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    factory: str | None = None
    metric: str | None = None
    base_dir: str = ""
    #: A user's HeteroData (path or factory): the node type that is classified.
    target_node_type: str | None = None
    split: dict[str, Any] | None = None  # a temporal graph's cuts (TemporalSplit), every one set

    @property
    def label(self) -> str:
        """For tags: the name, the file's stem or the factory."""
        return self.name or (Path(self.path).stem if self.path else str(self.factory))

    @property
    def kind(self) -> str:
        """``"node"`` or ``"pointcloud"``; a path or factory dataset is a node task."""
        return cat.DATASETS.get(self.name).info.get("kind", cat.NODE) if self.name else cat.NODE


@dataclass(frozen=True)
class ModelSpec:
    """A catalog ``arch`` with a preset or its ``sizes`` (the parameters of its catalog entry's
    schema, e.g. ``{"width": 8, "depth": 2, "heads": 8, "dropout": 0.6}``), or a user
    ``factory`` (``arch`` ``None``) with its ``options`` and ``hidden`` submodules."""

    arch: str | None
    preset: str | None = None
    sizes: dict[str, Any] = field(default_factory=dict)
    factory: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    hidden: tuple[str, ...] = ()
    base_dir: str | None = None

    def __hash__(self) -> int:  # sizes and options are dicts
        return hash(stable_hash(self, 32))

    @property
    def label(self) -> str:
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
        values = {"preset": self.preset, **self.sizes}
        return {k: _listed(v) for k, v in values.items() if v is not None}

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
    """The fixed student; ``given``: the size keys the file set (a searched arch fills the rest)."""

    model: ModelSpec
    train: TrainConfig
    given: dict[str, Any] = field(default_factory=dict)

    def model_for(self, arch: str | None, overrides: Mapping[str, Any] | None = None) -> ModelSpec:
        """The model for ``arch`` with ``overrides`` over the given keys (for a factory student
        ``arch`` is ignored and ``overrides`` are options)."""
        if self.model.factory is not None:
            return replace(self.model, options={**self.model.options, **(overrides or {})})
        return _model_spec(str(arch), self.model.preset, {**self.given, **(overrides or {})})


@dataclass(frozen=True)
class Dimension:
    """One search dimension: ``name`` (``"lsp.lambda"``), ``kind`` (:data:`DIMENSION_KINDS`),
    ``args`` (the choices, or ``(low, high)`` both included), the ``method`` whose trials it
    applies to (``None``: all) and ``condition`` ``(key, values)``: it applies only where the
    searched dimension ``key`` took one of ``values``."""

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
    """``population_size`` (nsga2 only): trials per NSGA-II generation; ``None`` means
    :meth:`population`'s default, a quarter of ``num_samples`` (at least 2)."""

    algorithm: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    num_samples: Annotated[int, Field(ge=1, le=MAX_NUM_SAMPLES)] = 10
    max_concurrent: cat.Count | None = None
    seed: _NonNegInt = 0
    population_size: Annotated[int, Field(ge=2)] | None = None

    def population(self) -> int:
        """NSGA-II's population: as given, else ``max(2, num_samples // 4)`` (several
        generations)."""
        if self.population_size is not None:
            return self.population_size
        return max(2, self.num_samples // 4)

    def generations_warning(self) -> str | None:
        """One line when an NSGA-II search cannot leave its first generation or two (fewer than
        two populations of samples), else ``None``."""
        if self.algorithm != "nsga2" or self.num_samples >= 2 * self.population():
            return None
        return (
            f"searcher: nsga2 with population_size {self.population()} and num_samples "
            f"{self.num_samples} runs fewer than 2 generations (the first is random); use "
            f"num_samples >= {2 * self.population()} or a smaller population_size"
        )


@pdc.dataclass(frozen=True, config=_STRICT)
class Objective:
    metric: str
    mode: Literal["max", "min"]


@pdc.dataclass(frozen=True, config=_STRICT)
class SchedulerSpec:
    """An early-stopping scheduler (ASHA, in epochs): every trial trains ``max_t`` epochs
    (``None``: the student's, at most those) unless the scheduler stops it before."""

    type: Literal["asha"] = "asha"
    grace_period: cat.Count = 10
    reduction_factor: Annotated[float, Field(gt=1)] = 3.0
    max_t: cat.Count | None = None

    def epochs(self, student_epochs: int) -> int:
        """The most epochs a trial trains: ``max_t``, else the student's epochs."""
        return student_epochs if self.max_t is None else min(self.max_t, student_epochs)


@pdc.dataclass(frozen=True, config=_STRICT)
class ResourceSpec:
    cpu: cat.Positive = 1.0
    gpu: cat.NonNegative = 0.0


@pdc.dataclass(frozen=True, config=_STRICT)
class LatencySpec:
    """How each student's latency is timed (see study.latency_service): rounds of ``repeats``
    calls after ``warmup``, until the p50's 95% CI is within ``tolerance`` of it or
    ``max_repeats`` calls / ``max_seconds`` are spent; ``quiet``: with the machine's trials
    paused (off only to measure what that buys); ``windows`` such windows ``window_gap`` seconds
    apart, the figure being the median window (this machine's speed drifts between windows)."""

    repeats: cat.Count = 30
    warmup: _NonNegInt = 5
    threads: cat.Count = 1
    tolerance: Annotated[float, Field(gt=0, lt=1)] = 0.03
    max_repeats: cat.Count = 300
    max_seconds: cat.Positive = 30.0
    quiet: bool = True
    windows: cat.Count = 3
    window_gap: cat.NonNegative = 2.0
    onnx: bool = True  # also time each student under ONNX Runtime on CPU (study.onnx_runtime)

    @model_validator(mode="after")
    def _rounds_fit(self) -> LatencySpec:
        if self.max_repeats < self.repeats:
            raise ValueError(f"max_repeats {self.max_repeats} is below repeats {self.repeats}")
        return self


@pdc.dataclass(frozen=True, config=_STRICT)
class FaultToleranceSpec:
    """A checkpoint every ``checkpoint_every`` epochs, not within ``checkpoint_min_seconds`` of
    the last (Tune snapshots the experiment at each); ``max_failures`` restarts of a trial."""

    checkpoint_every: cat.Count = 20
    checkpoint_min_seconds: cat.NonNegative = 30.0
    max_failures: _NonNegInt = 0


@dataclass(frozen=True)
class StudySpec:
    """A validated study. ``method_defaults``: per method of ``methods``, the catalog's defaults
    under the file's. ``search``: conditioning dimensions (``student.arch``, ``lsp.kernel``) first.
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
        return [o.metric for o in self.objectives]

    @property
    def modes(self) -> list[str]:
        return [o.mode for o in self.objectives]

    def dimension(self, name: str) -> Dimension | None:
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
        """Each configuration once per seed."""
        return self.num_configs * len(self.seeds)


@dataclass(frozen=True)
class TrialPlan:
    """One trial resolved. ``params``: what applies to it, flat, for logging (``method``, its
    ``<method>.*`` keys, every ``student.*`` key, ``seed``); ``config_id`` that without seed."""

    method: str
    seed: int
    student: ModelSpec
    student_train: TrainConfig
    distill: DistillConfig
    params: dict[str, Any]
    config_id: str


class _Top(BaseModel):
    model_config = _STRICT
    name: str
    description: str = ""
    dataset: dict[str, Any]
    teacher: dict[str, Any]
    student: dict[str, Any]
    methods: Annotated[list[str], Field(min_length=1)] | None = None
    method_defaults: dict[str, Any] = {}
    search: dict[str, Any] = {}
    seeds: Annotated[list[_NonNegInt], Field(min_length=1)] = [0]
    searcher: dict[str, Any] = {}
    objectives: Annotated[list[Any], Field(min_length=1)] | None = None
    scheduler: dict[str, Any] | None = None
    resources: dict[str, Any] = {}
    latency: dict[str, Any] = {}
    fault_tolerance: dict[str, Any] = {}


class _Dataset(cat.Params):
    name: str | None = None
    path: str | None = None
    factory: _Factory | None = None
    options: dict[str, Any] = {}
    metric: str | None = None
    split: dict[str, Any] | None = None
    target_node_type: Annotated[str, Field(min_length=1)] | None = None


class _UserModel(cat.Params):
    factory: _Factory
    options: dict[str, Any] = {}
    hidden: list[Annotated[str, Field(min_length=1)]] = []


class _Train(cat.Params):
    """TrainConfig's keys but ``device`` (the runner sets it from ``resources``)."""

    epochs: cat.Count = TrainConfig.epochs
    lr: cat.Positive = TrainConfig.lr
    weight_decay: cat.NonNegative = TrainConfig.weight_decay
    optimizer: Literal["adam", "sgd"] = TrainConfig.optimizer
    momentum: Annotated[float, Field(ge=0, lt=1)] = TrainConfig.momentum
    batch_size: cat.Count = TrainConfig.batch_size
    eval_every: cat.Count = TrainConfig.eval_every
    seed: _NonNegInt = TrainConfig.seed
    # Mini-batch mode (node tasks): one positive fan-out per layer of the model.
    num_neighbors: Annotated[list[cat.Count], Field(min_length=1)] | None = None


# ---------------------------------------------------------------------------------------------
# Checking: every failure is one line naming the file and the key path
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
    for kind, word in (
        (bool, "a boolean"),
        (numbers.Integral, "an integer"),
        (numbers.Real, "a number"),
        (str, "a string"),
        (list, "a list"),
        (Mapping, "a mapping"),
    ):
        if isinstance(value, kind):
            return word
    return "null" if value is None else "a value"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def _join(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps booleans apart from 0 and 1."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


def _listed(value: Any) -> Any:
    return [_listed(v) for v in value] if isinstance(value, (list, tuple)) else value


def _fields(cls: Any) -> dict[str, tuple[str, FieldInfo]]:
    """A pydantic model's or dataclass's fields by the keys files use: ``{key: (name, info)}``."""
    found = getattr(cls, "__pydantic_fields__", None) or {}
    return {info.alias or name: (name, info) for name, info in found.items()}


def _unwrap(ann: Any) -> tuple[Any, list[Any], bool]:
    """``(type, constraints, nullable)`` of an annotation, ``Annotated`` and ``| None`` off."""
    meta: list[Any] = []
    nullable = False
    while True:
        if get_origin(ann) is Annotated:
            ann, *extra = get_args(ann)
            meta += [x for m in extra for x in (m.metadata if isinstance(m, FieldInfo) else [m])]
        elif get_origin(ann) in (Union, types.UnionType) and type(None) in get_args(ann):
            rest = [a for a in get_args(ann) if a is not type(None)]
            nullable, ann = True, rest[0] if len(rest) == 1 else Union[tuple(rest)]  # noqa: UP007
        else:
            return ann, meta, nullable


def _ann_at(cls: Any, loc: tuple[Any, ...]) -> tuple[Any, list[Any]]:
    """The annotation and constraints of the value at ``loc`` (pydantic's) inside ``cls``."""
    ann: Any = cls
    meta: list[Any] = []
    for item in loc:
        ann = _unwrap(ann)[0]
        if isinstance(item, str) and item in _fields(ann):
            info = _fields(ann)[item][1]
            ann, meta = info.annotation, list(info.metadata)
        elif get_origin(ann) is dict:
            ann, meta = get_args(ann)[1], []
        elif isinstance(item, int) and get_args(ann):
            args = get_args(ann)
            ann, meta = (args[0] if args[-1] is Ellipsis or len(args) == 1 else args[item]), []
    return ann, meta


def _expect(ann: Any, meta: list[Any] | None = None) -> str:
    """What an annotation accepts, in words: ``"an integer >= 1"``, ``"a list of strings"``."""
    ann, more, nullable = _unwrap(ann)
    meta = [*(meta or []), *more]
    origin, args = get_origin(ann), get_args(ann)
    nonempty = any(isinstance(m, at.MinLen) and m.min_length > 0 for m in meta)
    if origin is Literal:
        word = "one of " + ", ".join(map(str, args))
    elif origin in (list, tuple):
        size = f"{len(args)} " if origin is tuple and args[-1] is not Ellipsis else ""
        elem = _expect(args[0]).split(" ", 1)[1]
        elem = re.sub(r"(integer|number|string|mapping|boolean)", r"\1s", elem, count=1)
        word = f"a {'non-empty ' if nonempty else ''}list of {size}{elem}"
    else:
        types_ = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
        word = "a whole number" if cat.WHOLE in meta else types_.get(ann, "a mapping")
        word = word.replace("a ", "a non-empty ", 1) if nonempty else word
        lo = next((m for m in meta if isinstance(m, (at.Ge, at.Gt))), None)
        hi = next((m for m in meta if isinstance(m, (at.Le, at.Lt))), None)
        low = None if lo is None else getattr(lo, "ge", getattr(lo, "gt", None))
        high = None if hi is None else getattr(hi, "le", getattr(hi, "lt", None))
        if low is not None and high is not None:
            word += f" in {'(' if isinstance(lo, at.Gt) else '['}{_num(low)}, {_num(high)}"
            word += ")" if isinstance(hi, at.Lt) else "]"
        elif low is not None:
            word += f" {'>' if isinstance(lo, at.Gt) else '>='} {_num(low)}"
        elif high is not None:
            word += f" {'<' if isinstance(hi, at.Lt) else '<='} {_num(high)}"
    return f"{word} or null" if nullable else word


@cache
def _adapter(cls: Any) -> TypeAdapter[Any]:
    return TypeAdapter(cls)


class _Check:
    """Checks that fail with ``<source>: <path>: <message>``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> NoReturn:
        text = f"{self.source}: {path}: {message}" if path else f"{self.source}: {message}"
        raise UserInputError(" ".join(text.split()))

    def expected(self, path: str, what: str, value: Any) -> NoReturn:
        self.fail(path, f"expected {what}, got {_show(value)} ({_type_word(value)})")

    def mapping(self, value: Any, path: str, keys: Any = None) -> dict[str, Any]:
        """A mapping (``null``: empty) with only ``keys`` (any if ``None``), nulls dropped (a
        null takes the default)."""
        if not isinstance(value, Mapping | None):
            self.expected(path, "a mapping", value)
        for key in value or {}:
            if keys is not None and key not in keys:
                self.fail(_join(path, key), f"unknown key (valid: {', '.join(sorted(keys))})")
        return {k: v for k, v in (value or {}).items() if v is not None}

    def plain(self, value: Any, path: str) -> Any:
        """A JSON-like value: strings, finite numbers, booleans, null, lists, string-keyed maps."""
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
        if not isinstance(value, Mapping):
            self.expected(path, "a string, number, boolean, list or mapping", value)
        for key in value:
            if not isinstance(key, str):
                self.fail(path, f"keys must be strings, got {_show(key)} ({_type_word(key)})")
        return {k: self.plain(v, _join(path, k)) for k, v in value.items()}

    def validate(self, cls: Any, data: Any, path: str, strip: int = 0) -> Any:
        """Plain ``data`` validated by the pydantic type ``cls``; its first error becomes one line
        at ``path`` plus the error's location (but its first ``strip`` parts)."""
        try:
            return _adapter(cls).validate_json(json.dumps(data), strict=True)
        except ValidationError as err:
            error = err.errors(include_url=False)[0]
        loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
        where = path
        for item in loc[strip:]:
            where = _join(where, item)
        ann, meta = _ann_at(cls, loc)
        if kind in ("extra_forbidden", "unexpected_keyword_argument"):
            valid = ", ".join(sorted(_fields(_unwrap(_ann_at(cls, loc[:-1])[0])[0])))
            self.fail(where, f"unknown key (valid: {valid})")
        if kind == "missing":
            self.fail(where, "required key is missing")
        if kind in ("value_error", "assertion_error"):  # a catalog's or our own validator
            message = error["msg"].split(", ", 1)[1]
            self.fail(where, message + ("" if "got" in message else f", got {_show(value)}"))
        if kind == "literal_error" and isinstance(value, str) and isinstance(loc[-1], str):
            word = {"algorithm": "searcher", "type": "scheduler"}.get(loc[-1], loc[-1])
            self.name(value, where, word, get_args(_unwrap(ann)[0]))
        if kind.endswith(("_type", "_parsing")) or kind == "literal_error":
            self.expected(where, _expect(ann, meta), value)
        self.fail(where, f"expected {_expect(ann, meta)}, got {_show(value)}")

    def param(self, cls: Any, key: str, value: Any, path: str) -> Any:
        """The parameter ``key`` of the schema ``cls``, validated, at ``path``."""
        return getattr(self.validate(cls, {key: value}, path, strip=1), _fields(cls)[key][0])

    def name(self, value: Any, path: str, kind: str, valid: Any) -> str:
        if not isinstance(value, str):
            self.expected(path, f"a {kind} name (one of {', '.join(sorted(valid))})", value)
        try:
            choose(kind, value, tuple(valid))
        except UserInputError as err:
            self.fail(path, str(err))
        return value

    def file(self, given: str, base: Path, path: str) -> str:
        """An existing file, relative to the study file's folder, made absolute (for Ray workers
        in other working directories)."""
        where = Path(given).expanduser()
        where = (where if where.is_absolute() else base / where).resolve()
        if not where.is_file():
            self.fail(path, f"no such file {str(where)!r}")
        return str(where)


# ---------------------------------------------------------------------------------------------
# Reading (the file's text and YAML: study.studyfile)
# ---------------------------------------------------------------------------------------------


def load_study_spec(path: str | Path) -> StudySpec:
    """Read and validate a study file.

    Raises:
        UserInputError: a missing, unreadable, oversized or binary file, invalid YAML (with its
            line number), aliases over the bound (see :mod:`study.studyfile`), or any key that
            does not validate (see :func:`parse_study_spec`).
    """
    return parse_study_text(studyfile.read_study_file(path), str(path))


def parse_study_text(text: str, source: str) -> StudySpec:
    """Validate a study file's text (see :func:`load_study_spec`); ``source`` names it in errors."""
    return parse_study_spec(read_study_mapping(text, source), source)


def read_study_mapping(text: str, source: str) -> Any:
    """The YAML of a study file as plain data (:func:`study.studyfile.load_study_yaml`)."""
    return studyfile.load_study_yaml(text, source)


# ---------------------------------------------------------------------------------------------
# What the catalogs offer
# ---------------------------------------------------------------------------------------------


def _method_params(method: str) -> dict[str, tuple[Any, Any]]:
    """``{parameter: (schema, default)}`` of a method; LSP's kernels' parameters beside its own."""
    entry = cat.METHODS.get(method)
    out = {k: (entry.params, v) for k, v in entry.defaults().items()}
    for kernel in cat.KERNELS if cat.takes_kernel(entry) else ():
        out.update({k: (kernel.params, v) for k, v in kernel.defaults().items() if k not in out})
    return out


def _kernel_keys() -> set[str]:
    return {k for kernel in cat.KERNELS for k in kernel.param_names()}


def _archs_taking(key: str) -> tuple[str, ...]:
    return tuple(e.name for e in cat.MODELS if key in e.param_names())


def _size_keys() -> list[str]:
    return sorted({k for e in cat.MODELS for k in e.param_names()})


def _kinds(schema: Any, key: str) -> tuple[str, ...]:
    """The dimension kinds a parameter takes, from its annotation."""
    info = _fields(schema)[key][1]
    ann, meta, _ = _unwrap(info.annotation)
    if ann is float and cat.WHOLE not in [*info.metadata, *meta]:
        return DIMENSION_KINDS
    return ("choice", "int", "logint") if ann in (int, float) else ("choice",)


def _search_params() -> dict[str, Any]:
    """Every searchable key (not ``student.options.*``) and the schema that checks it."""
    out: dict[str, Any] = {
        "student.arch": None,
        "student.lr": _Train,
        "student.weight_decay": _Train,
        "student.batch_size": _Train,
        "student.num_neighbors": _Train,
    }
    for e in cat.MODELS:
        out.update({f"student.{k}": e.params for k in e.param_names() if f"student.{k}" not in out})
    for m in cat.METHODS:
        out.update({f"{m.name}.{k}": s for k, (s, _) in _method_params(m.name).items()})
    return {k: s for k, s in out.items() if s is None or _searchable(s, k.partition(".")[2])}


def _searchable(schema: Any, key: str) -> bool:
    """Whether a search dimension may sample the parameter: one value (:func:`_scalar`), or a
    list held as its JSON text in a ``choice``: a ``layer_map`` (names and explicit pairs, see
    :mod:`study.layer_map`) or a ``num_neighbors`` fan-out list."""
    return key in _LIST_CHOICES or _scalar(schema, key)


#: List-valued keys a ``choice`` may search: each value is kept as its JSON text (Optuna's
#: categorical choices must be plain values) and read back where it is used.
_LIST_CHOICES = ("layer_map", "num_neighbors")


def _scalar(schema: Any, key: str) -> bool:
    """Whether a parameter holds one value, not a list (``layer_map``, ``mlp``)."""
    ann = _unwrap(_fields(schema)[key][1].annotation)[0]
    return ann in (int, float, str, bool) or get_origin(ann) is Literal


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------

_CONDITIONING = ("student.arch", "lsp.kernel")
_TRAIN_DIMS = ("lr", "weight_decay", "batch_size", "num_neighbors")


def parse_study_spec(data: Any, source: str) -> StudySpec:
    """Validate a study mapping (as loaded from YAML) completely and build the spec; relative
    paths (``dataset.path``, ``teacher.checkpoint``) are taken from the folder of ``source``.

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
    methods = cat.default_methods() if top.methods is None else top.methods
    for i, method in enumerate(methods):
        chk.name(method, f"methods[{i}]", "method", cat.METHODS.names())
    methods = _unique(chk, methods, "methods", "method")
    defaults = _parse_method_defaults(chk, top.method_defaults, methods)
    hidden_for = tuple(m for m in methods if cat.reads_hidden(m))
    teacher = _parse_model(chk, top.teacher, "teacher", dataset, base, hidden_for)
    searched = "student.arch" in top.search
    student = _parse_model(chk, top.student, "student", dataset, base, hidden_for, searched)
    sd = chk.mapping(top.searcher, "searcher")
    if sd.get("algorithm") == "grid":
        sd.setdefault("num_samples", 1)  # the grid once
    n = sd.get("num_samples")
    if isinstance(n, int) and not isinstance(n, bool) and n > MAX_NUM_SAMPLES:
        chk.fail(
            "searcher.num_samples",
            f"at most {MAX_NUM_SAMPLES:,} configurations per study, got {n:,}; "
            "search fewer or split the study",
        )
    searcher = chk.validate(SearcherSpec, sd, "searcher")
    if searcher.population_size is not None and searcher.algorithm != "nsga2":
        chk.fail(
            "searcher.population_size",
            f"only the nsga2 searcher has a population, the algorithm is {searcher.algorithm}",
        )
    search = _parse_search(chk, top.search, methods, defaults, student[0], dataset, searcher)
    fanout_dim = next((d for d in search if d.name == "student.num_neighbors"), None)
    if fanout_dim is not None and student[1].num_neighbors is None:
        # A searched fan-out turns mini-batch mode on for every trial: the study-level value
        # (which every check of mini-batch mode reads) is the first choice.
        student = (
            student[0],
            replace(student[1], num_neighbors=fanouts_of(fanout_dim.args[0])),
            *student[2:],
        )
    _check_attention(chk, methods, defaults, search, teacher[0], student[0])
    _check_trials(chk, searcher, methods, search, len(top.seeds))
    objectives = _parse_objectives(chk, top.objectives)
    resources = chk.validate(ResourceSpec, chk.mapping(top.resources, "resources"), "resources")
    if resources.gpu > 1 and not resources.gpu.is_integer():
        chk.fail(
            "resources.gpu",
            "Ray shares a GPU only in fractions below 1; above 1 use a whole number, "
            f"got {_num(resources.gpu)}",
        )
    ft = chk.mapping(top.fault_tolerance, "fault_tolerance")
    return StudySpec(
        name=top.name,
        description=top.description,
        dataset=dataset,
        teacher=TeacherSpec(teacher[0], teacher[1], teacher[3]),
        student=StudentSpec(student[0], student[1], student[2]),
        methods=methods,
        method_defaults=defaults,
        search=search,
        seeds=_unique(chk, top.seeds, "seeds", "seed"),
        searcher=searcher,
        objectives=objectives,
        scheduler=_parse_scheduler(chk, top.scheduler, objectives, student[1].epochs),
        resources=resources,
        latency=chk.validate(LatencySpec, chk.mapping(top.latency, "latency"), "latency"),
        source=source,
        fault_tolerance=chk.validate(FaultToleranceSpec, ft, "fault_tolerance"),
    )


def _check_attention(
    chk: _Check,
    methods: tuple[str, ...],
    defaults: dict[str, dict[str, Any]],
    search: tuple[Dimension, ...],
    teacher: ModelSpec,
    student: ModelSpec,
) -> None:
    """A method that matches attention over edges (edge_attention) needs built-in students
    that have attention, and a teacher that has it unless the method is told to use the
    teacher's gradient-based importance. Factory models are checked by the pre-flight forward."""
    for method in (m for m in methods if cat.reads_attention(m)):
        with_attention = "/".join(e.name for e in cat.MODELS if cat.has_attention_layers(e.name))
        searched = next((d for d in search if d.name == "student.arch"), None)
        archs = (
            [("student.arch", student.arch)]
            if searched is None
            else [(f"search.student.arch.choice[{i}]", a) for i, a in enumerate(searched.args)]
        )
        for path, arch in archs:
            if arch is not None and not cat.has_attention_layers(arch):
                chk.fail(
                    path,
                    f"method {method} matches the student's attention over edges, but {arch} "
                    f"has none; expected an architecture with attention ({with_attention}) or "
                    f"drop {method} from methods",
                )
        if teacher.arch is None or cat.has_attention_layers(teacher.arch):
            continue
        source = next((d for d in search if d.name == f"{method}.teacher_source"), None)
        if source is not None and "attention" in source.args:
            chk.fail(
                f"search.{method}.teacher_source",
                f"teacher {teacher.arch} has no attention; expected only gradient",
            )
        if source is None and defaults[method].get("teacher_source") == "attention":
            chk.fail(
                f"method_defaults.{method}.teacher_source",
                f"teacher {teacher.arch} has no attention to match; expected gradient "
                "(the teacher's gradient-based edge importance) or a teacher with attention "
                f"({with_attention})",
            )


def _check_trials(
    chk: _Check,
    searcher: SearcherSpec,
    methods: tuple[str, ...],
    search: tuple[Dimension, ...],
    seeds: int,
) -> None:
    """At most :data:`MAX_TRIALS` trials, counted before the seeds are compared pairwise and
    without enumerating a huge grid."""
    configs, path = searcher.num_samples, "searcher.num_samples"
    what = f"{configs:,} configurations"
    if searcher.algorithm == "grid":
        grid = _grid_size(methods, search, MAX_TRIALS)
        configs, path = grid * searcher.num_samples, "search"
        more = "+" if grid > MAX_TRIALS else ""
        what = f"a grid of {grid:,}{more} configurations x num_samples {searcher.num_samples:,}"
    if configs * seeds > MAX_TRIALS:
        chk.fail(
            path,
            f"{what} x {seeds:,} seeds is over the maximum of {MAX_TRIALS:,} trials per study; "
            "search fewer configurations or seeds, or split the study",
        )


def _grid_size(methods: tuple[str, ...], search: tuple[Dimension, ...], limit: int) -> int:
    """Configurations of a grid, counted up to ``limit`` + 1 and no further."""
    return sum(1 for _ in itertools.islice(_grid(methods, search), limit + 1))


def _unique(chk: _Check, values: Any, path: str, word: str) -> tuple[Any, ...]:
    for i, value in enumerate(values):
        if value in values[:i]:
            chk.fail(f"{path}[{i}]", f"{word} {_show(value)} is listed twice")
    return tuple(values)


def _parse_dataset(chk: _Check, raw: dict[str, Any], base: Path) -> DatasetSpec:
    d = chk.validate(_Dataset, chk.mapping(raw, "dataset"), "dataset")
    given = [k for k in ("name", "path", "factory") if getattr(d, k) is not None]
    if len(given) != 1:
        got = " and ".join(given) or "none of them"
        chk.fail("dataset", f"expected exactly one of name, path or factory, got {got}")
    kind, options, path = cat.NODE, d.options, None
    if d.name is not None:
        entry = cat.DATASETS.get(chk.name(d.name, "dataset.name", "dataset", cat.DATASETS.names()))
        kind = entry.info.get("kind", cat.NODE)
        if "root" in options:
            chk.fail("dataset.options.root", "the data folder is GDS_DATA_ROOT, not a study option")
        if entry.params is None and options:
            chk.fail(f"dataset.options.{next(iter(options))}", f"{d.name} takes no options")
        if entry.params is not None:
            options = chk.validate(entry.params, options, "dataset.options").model_dump(
                by_alias=True, exclude_unset=True, exclude_none=True
            )
    elif d.path is not None:
        if options:  # the loader would drop them: say so rather than ignore a setting
            chk.fail(f"dataset.options.{next(iter(options))}", "a saved graph takes no options")
        path = chk.file(d.path, base, "dataset.path")
    if d.metric is not None:
        valid = cat.TASK_METRICS[kind]
        if d.metric in cat.NODE_METRICS + cat.POINTCLOUD_METRICS and d.metric not in valid:
            what = f"dataset {d.name!r} is a {cat.TASK_WORDS[kind]} task"
            chk.fail("dataset.metric", f"{what}; expected one of {', '.join(valid)}")
        chk.name(d.metric, "dataset.metric", "metric", valid)
    if d.target_node_type is not None and d.name is not None:
        chk.fail(
            "dataset.target_node_type",
            f"only for a user's HeteroData (path or factory); {d.name} names its own target",
        )
    split = None
    if d.split is not None:
        if d.name is not None and not cat.DATASETS.get(d.name).info.get("temporal", False):
            temporal = [e.name for e in cat.DATASETS if e.info.get("temporal", False)]
            chk.fail(
                "dataset.split",
                f"{d.name} has no times; split is for temporal graphs ({', '.join(temporal)}, "
                "or a path/factory Data with node_time and edge_time)",
            )
        # Every cut spelled out: a split written with or without its defaults is one teacher.
        split = chk.validate(cat.TemporalSplit, d.split, "dataset.split").model_dump()
    return DatasetSpec(
        d.name, options, path, d.factory, d.metric, str(base), d.target_node_type, split
    )


def _parse_method_defaults(
    chk: _Check, raw: dict[str, Any], methods: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    # Defaults of methods not in `methods` are validated too, then unused: toggling a method in
    # `methods` should not force editing this block.
    merged = {m: {k: v for k, (_, v) in _method_params(m).items()} for m in methods}
    for method, values in chk.mapping(raw, "method_defaults", cat.METHODS.names()).items():
        path, params = f"method_defaults.{method}", _method_params(method)
        for k, v in chk.mapping(values, path, params).items():
            merged.get(method, {})[k] = chk.param(params[k][0], k, v, f"{path}.{k}")
    for values in merged.values():
        # Added after config ids existed: absent unless set, so LSP trials keep their ids.
        if "relation_weights" in values and values["relation_weights"] is None:
            del values["relation_weights"]
    return merged


def _parse_train(chk: _Check, raw: Any, path: str, *, allow_seed: bool) -> TrainConfig:
    d = chk.mapping(raw, path)
    if not allow_seed and "seed" in d:
        chk.fail(f"{path}.seed", "the student's seed comes from `seeds` (one run per seed)")
    if "device" in d:
        chk.fail(f"{path}.device", "the runner sets the device from `resources` (gpu > 0: cuda)")
    values = chk.validate(_Train, d, path).model_dump(exclude_unset=True)
    if values.get("num_neighbors") is not None:
        values["num_neighbors"] = tuple(values["num_neighbors"])
    return TrainConfig(**values)


def _check_arch_kind(chk: _Check, arch: str, path: str, dataset: DatasetSpec) -> None:
    kind, arch_kind = dataset.kind, cat.MODELS.get(arch).info.get("kind", cat.NODE)
    if arch_kind != kind:
        fitting = ", ".join(e.name for e in cat.MODELS if e.info.get("kind", cat.NODE) == kind)
        chk.fail(
            path,
            f"{arch} is a {cat.TASK_WORDS[arch_kind]} model, but dataset {dataset.label!r} is "
            f"a {cat.TASK_WORDS[kind]} task (valid here: {fitting})",
        )


def _model_spec(arch: str, preset: str | None, given: Mapping[str, Any]) -> ModelSpec:
    """The model of ``arch``: a preset (plus its open keys) or sizes over the arch's defaults."""
    if preset is not None:
        return ModelSpec(arch, preset, {k: given[k] for k in cat.PRESET_OVERRIDES if k in given})
    defaults = cat.MODELS.get(arch).defaults()
    return ModelSpec(arch, None, {k: _frozen(given.get(k, v)) for k, v in defaults.items()})


def _parse_model(
    chk: _Check,
    raw: dict[str, Any],
    path: str,
    dataset: DatasetSpec,
    base: Path,
    hidden_for: tuple[str, ...],
    arch_searched: bool = False,
) -> tuple[ModelSpec, TrainConfig, dict[str, Any], str | None]:
    """``(model, train, the size keys given, checkpoint)`` of ``teacher`` or ``student``."""
    teacher = path == "teacher"
    keys = ["arch", "preset", "factory", "options", "hidden", "train", *_size_keys()]
    d = chk.mapping(raw, path, keys + ["checkpoint"] * teacher)
    train = _parse_train(chk, d.pop("train", None), f"{path}.train", allow_seed=teacher)
    checkpoint = d.pop("checkpoint", None)
    if checkpoint is not None:
        where = f"{path}.checkpoint"
        checkpoint = chk.file(chk.validate(str, checkpoint, where), base, where)
    if "factory" in d:
        other = next((k for k in d if k not in ("factory", "options", "hidden")), None)
        if other is not None:
            chk.fail(
                f"{path}.{other}",
                "a model is either built in (arch, preset, sizes) or a factory with options "
                f"and hidden, not both ({path}.factory is set)",
            )
        user = chk.validate(_UserModel, d, path)
        if hidden_for and not user.hidden:
            chk.fail(
                f"{path}.hidden",
                f"expected a non-empty list of submodule names ({'/'.join(hidden_for)} in "
                f"methods match hidden features), got {_show(d.get('hidden', []))}",
            )
        model = ModelSpec(None, factory=user.factory, options=user.options, base_dir=str(base))
        return replace(model, hidden=tuple(user.hidden)), train, {}, checkpoint
    for key in ("options", "hidden"):
        if key in d:
            chk.fail(f"{path}.{key}", f"applies only to a factory model ({path}.factory)")
    presets = [p for e in cat.MODELS for p in e.info.get("presets", {})]
    preset = chk.name(d["preset"], f"{path}.preset", "preset", presets) if "preset" in d else None
    if "arch" not in d:
        if preset is None:
            names = ", ".join(cat.MODELS.names())
            chk.fail(f"{path}.arch", f"required key is missing (valid: {names})")
        arch = str(cat.preset_arch(preset))
    else:
        arch = chk.name(d["arch"], f"{path}.arch", "architecture", cat.MODELS.names())
        if preset is not None and cat.preset_arch(preset) != arch:
            builds = f"builds a {cat.preset_arch(preset)} model, but arch is {arch!r}"
            chk.fail(f"{path}.preset", f"preset {preset!r} {builds}")
    _check_arch_kind(chk, arch, f"{path}.arch", dataset)
    given: dict[str, Any] = {}
    for key in (k for k in _size_keys() if k in d):
        where, takers = f"{path}.{key}", _archs_taking(key)
        if preset is not None and key not in cat.PRESET_OVERRIDES:
            chk.fail(where, f"must be absent with a preset (preset {preset!r} fixes it)")
        if arch not in takers and not arch_searched:
            chk.fail(where, f"applies only to arch {'/'.join(takers)}, but {path}.arch is {arch!r}")
        schema = cat.MODELS.get(arch if arch in takers else takers[0]).params
        given[key] = chk.param(schema, key, d[key], where)
    return _model_spec(arch, preset, given), train, given, checkpoint


def _param_check(chk: _Check, name: str, arch: str | None) -> tuple[Callable[..., Any], Any]:
    """``(check(value, path) -> value, the dimension kinds it takes)`` of a search key."""
    prefix, _, key = name.partition(".")
    if name.startswith("student.options."):
        return chk.plain, DIMENSION_KINDS
    if name == "student.arch":
        return (lambda v, p: chk.name(v, p, "architecture", cat.MODELS.names())), ("choice",)
    if name == "student.num_neighbors":
        return (lambda v, p: _fanout_text(chk, v, p)), ("choice",)
    schema = _search_params()[name]
    if prefix == "student" and arch is not None and key in cat.MODELS.get(arch).param_names():
        schema = cat.MODELS.get(arch).params
    return (lambda v, p: chk.param(schema, key, v, p)), _kinds(schema, key)


def _fanout_text(chk: _Check, value: Any, path: str) -> str:
    """A searched fan-out list (a list, or its JSON text as the searcher hands it back),
    checked as ``train.num_neighbors`` is, as canonical JSON text (``"[15, 10]"``)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if not isinstance(value, list):
        chk.expected(
            path, "a list of fan-outs, one positive integer per layer (e.g. [15, 10])", value
        )
    return json.dumps(list(chk.param(_Train, "num_neighbors", value, path)))


def fanouts_of(text: str) -> tuple[int, ...]:
    """The fan-out tuple of a searched ``student.num_neighbors`` value (its JSON text)."""
    return tuple(int(k) for k in json.loads(text))


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
        pairs = name.endswith(".layer_map")  # a choice of maps: names or lists of pairs
        lists = pairs or name.partition(".")[2] in _LIST_CHOICES  # values are lists (as text)
        for i, value in enumerate(args):
            where = f"{path}.choice[{i}]"
            if isinstance(value, Mapping) or (isinstance(value, list) and not lists):
                chk.expected(where, "a single value", value)
            out.append(layer_map_text(check(value, where)) if pairs else check(value, where))
            if any(_same(out[-1], v) for v in out[:-1]):
                chk.fail(where, f"value {_show(value)} is listed twice")
        return Dimension(name, kind, tuple(out))
    if "int" not in kinds:
        what = "a list" if name.partition(".")[2] in _LIST_CHOICES else "a name"
        chk.fail(path, f"{kind} does not fit {what}; use {{choice: [...]}}")
    if kind not in kinds:
        chk.fail(
            path, f"{kind} gives fractional values, but {name} is an integer; use int or logint"
        )
    if not isinstance(args, list) or len(args) != 2:
        chk.expected(path, f"{kind} with a [low, high] pair", args)
    integral = kind in ("int", "logint")
    number = int if integral else (int, float)
    if any(isinstance(a, bool) or not isinstance(a, number) for a in args):
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
    defaults: dict[str, dict[str, Any]],
    student: ModelSpec,
    dataset: DatasetSpec,
    searcher: SearcherSpec,
) -> tuple[Dimension, ...]:
    dims: dict[str, Dimension] = {}
    valid = _search_params()
    # Conditioning dimensions first, so conditions can refer to them.
    for name in [n for n in _CONDITIONING if n in raw] + [n for n in raw if n not in _CONDITIONING]:
        path = f"search.{name}"
        if name in ("method", "seed"):
            chk.fail(path, f"the {name} is not searched here: it comes from `{name}s`")
        prefix, _, key = name.partition(".")
        option = name.startswith("student.options.") and len(name) > 16
        if name not in valid and not option:
            keys = ", ".join([*sorted(valid), "student.options.<name>"])
            chk.fail(path, f"unknown search dimension (valid: {keys})")
        method = None if prefix == "student" else prefix
        if method is not None and method not in methods:
            listed = f"which is not in methods [{', '.join(methods)}]"
            chk.fail(path, f"searches a parameter of method {method!r}, {listed}")
        if method is None and key not in _TRAIN_DIMS and (student.factory is None) == option:
            chk.fail(
                path,
                "applies only to a factory student, but student.factory is not set"
                if option
                else f"applies only to a built-in student, but student.factory is "
                f"{student.factory!r}; search its options as student.options.<name>",
            )
        if method is None and student.preset and key not in (*cat.PRESET_OVERRIDES, *_TRAIN_DIMS):
            fixes = f"student.preset {student.preset!r} fixes the {key}"
            chk.fail(path, f"{fixes}; drop the preset to search it")
        dim = _parse_dimension(chk, name, raw[name], *_param_check(chk, name, student.arch))
        if searcher.algorithm == "grid" and dim.kind != "choice":
            needs = "the grid searcher needs every dimension to be a choice"
            chk.fail(path, f"{needs}, got {dim.kind}")
        condition = None
        own = set(cat.METHODS.get(method).param_names()) if method else set()
        if method is not None and key in _kernel_keys() - own:  # lsp.sigma: only with rbf
            kernels = tuple(e.name for e in cat.KERNELS if key in e.param_names())
            on, fixed = f"{method}.kernel", defaults[method]["kernel"]
            condition = _condition(chk, path, dims.get(on), on, fixed, kernels, "kernel")
        if name == "student.arch":
            for i, arch in enumerate(dim.args):
                _check_arch_kind(chk, arch, f"{path}.choice[{i}]", dataset)
        elif method is None and not option and key not in _TRAIN_DIMS:
            on, takers = "student.arch", _archs_taking(key)
            condition = _condition(chk, path, dims.get(on), on, student.arch, takers, "arch")
        dims[name] = replace(dim, method=method, condition=condition)
    return tuple(dims.values())


def _condition(
    chk: _Check, path: str, searched: Dimension | None, on: str, fixed: Any, needed: Any, what: str
) -> tuple[str, tuple[Any, ...]] | None:
    """The condition of a dimension that applies only when ``on`` is one of ``needed``."""
    if searched is None:
        if fixed not in needed:
            chk.fail(path, f"applies only to {what} {'/'.join(needed)}, but {on} is {fixed!r}")
        return None
    useful = tuple(v for v in searched.args if v in needed)
    if not useful:
        never = f"search.{on} never chooses ({_show(list(searched.args))})"
        chk.fail(path, f"applies only to {what} {'/'.join(needed)}, which {never}")
    return None if len(useful) == len(searched.args) else (on, useful)


def _parse_objectives(chk: _Check, raw: list[Any] | None) -> tuple[Objective, ...]:
    out: list[Objective] = []
    for i, item in enumerate([{"metric": tracking.METRIC_VAL}] if raw is None else raw):
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
        mode = OBJECTIVE_MODES.get(str(metric), "max")
        out.append(chk.validate(Objective, {"mode": mode, **d}, path))
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
            f"Ray Tune schedulers take a single metric, but this study has {len(objectives)} "
            f"objectives ({', '.join(o.metric for o in objectives)}); drop the scheduler or keep "
            "one objective",
        )
    if objectives[0].metric != tracking.METRIC_VAL:
        chk.fail(
            "scheduler",
            f"{spec.type} stops trials on a metric reported every epoch, which only val_score "
            f"is; the objective is {objectives[0].metric}",
        )
    max_t = spec.max_t if spec.max_t is not None else epochs
    if max_t > epochs:
        chk.fail(
            "scheduler.max_t",
            f"expected at most the student's train.epochs ({epochs}): a trial trains at most "
            f"max_t epochs, got {max_t}",
        )
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
    """Every configuration of a grid (all dimensions ``choice``), without seeds, enumerated per
    method over the dimensions that apply to it (so not multiplied by other methods' dimensions,
    nor an rbf trial by the poly degree).

    Raises:
        ValueError: a dimension is not a ``choice``.
    """
    for dim in spec.search:
        if dim.kind != "choice":
            raise ValueError(f"grid_configs: {dim.name} is {dim.kind}, not a choice")
    return list(_grid(spec.methods, spec.search))


def _grid(methods: tuple[str, ...], search: tuple[Dimension, ...]) -> Iterator[dict[str, Any]]:
    """The grid's configurations, one at a time (so a huge grid can be counted up to a bound)."""

    def expand(
        method: str, dims: tuple[Dimension, ...], partial: dict[str, Any]
    ) -> Iterator[dict[str, Any]]:
        if not dims:
            yield {"method": method, **partial}
        elif not dims[0].applies(method, partial):
            yield from expand(method, dims[1:], partial)
        else:
            for value in dims[0].args:
                yield from expand(method, dims[1:], {**partial, dims[0].name: value})

    for method in methods:
        yield from expand(method, tuple(d for d in search if d.method in (None, method)), {})


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
        chk.fail(path, f"expected a value of {dim.kind} [{_num(low)}, {_num(high)}], got {value}")
    value = int(value) if integral else float(value)  # type: ignore[call-overload]
    return check(min(max(value, low), high), path)


def resolve_trial(spec: StudySpec, params: Mapping[str, Any]) -> TrialPlan:
    """Resolve one trial's flat sampled parameters (``{"method": ..., "seed": ..., "<dim>":
    value}``, as the searcher gave them) against the spec. Values of dimensions that do not apply
    to the method (another method's, ``lsp.sigma`` with a linear kernel) are ignored; those that
    apply must be present.

    Returns:
        The student with the sampled dimensions (a factory student's sampled options merged into
        its options), its TrainConfig (the trial's seed, sampled ``lr``/``weight_decay``), the
        DistillConfig (catalog defaults < the file's ``method_defaults`` < sampled; for LSP only
        the chosen kernel's parameters) and the flat params for logging.

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
    known = {d.name for d in spec.search} | {"method", "seed"}
    for key in params:
        if key not in known:
            valid = ", ".join(sorted(known))
            chk.fail(f"params.{key}", f"not a parameter of study {spec.name!r} (valid: {valid})")
    sampled: dict[str, Any] = {}
    for dim in spec.search:  # conditioning dimensions come first
        if dim.applies(method, sampled):
            if dim.name not in params:
                chk.fail(f"params.{dim.name}", f"missing: a search dimension of {method} trials")
            sampled[dim.name] = _check_value(chk, spec, dim, params[dim.name], f"params.{dim.name}")

    ours = {d.key: sampled[d.name] for d in spec.search if d.method is None and d.name in sampled}
    arch = ours.pop("arch", spec.student.model.arch)
    train = {k: ours.pop(k) for k in _TRAIN_DIMS if k in ours}
    fanouts = train.pop("num_neighbors", None)  # JSON text, as the searcher holds it
    if fanouts is not None:
        train["num_neighbors"] = fanouts_of(fanouts)
    student = spec.student.model_for(arch, {k.removeprefix("options."): v for k, v in ours.items()})
    student_train = replace(spec.student.train, seed=int(seed), **train)
    values = dict(spec.method_defaults[method])
    values.update({d.key: sampled[d.name] for d in spec.search if d.method and d.name in sampled})
    if "kernel" in cat.METHODS.get(method).param_names():  # only the chosen kernel's
        other = _kernel_keys() - set(cat.kernel_params(values["kernel"]))
        values = {k: v for k, v in values.items() if k not in other}
    flat: dict[str, Any] = {
        "method": method,
        **{f"{method}.{k}": _listed(v) for k, v in values.items()},
    }
    flat.update(student.as_params("student"))
    flat.update(
        {"student.lr": student_train.lr, "student.weight_decay": student_train.weight_decay}
    )
    if "batch_size" in train:  # only when searched: other studies keep their config ids
        flat["student.batch_size"] = student_train.batch_size
    if fanouts is not None:  # likewise; a list, as layer maps are logged
        flat["student.num_neighbors"] = list(fanouts_of(fanouts))
    flat["seed"] = int(seed)
    distill = DistillConfig(method=method, params=values)
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
    """A short hash of ``obj``, stable across processes, machines and key order: SHA-256 of
    canonical JSON (sorted keys; dataclasses as dicts, tuples as lists, integral floats as ints),
    first ``length`` hex characters."""
    text = json.dumps(_canonical(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def config_id(params: Mapping[str, Any]) -> str:
    """:func:`stable_hash` of a configuration's params without ``seed``, so the runs of one
    configuration over several seeds share it (pass :attr:`TrialPlan.params`)."""
    return stable_hash({k: v for k, v in params.items() if k != "seed"})


_V1_SIZES = ("width", "depth", "heads", "k", "emb_dims", "mlp", "dropout")
_USER_KEYS = ("factory", "options", "hidden", "base_dir")


def teacher_hash(spec: StudySpec) -> str:
    """The hash a teacher is cached under: its model (a factory's options and hidden names too),
    training (seed included, device not), checkpoint and the dataset (name, path or factory,
    options, metric); not the student or the search. Unset keys are left out, so built-in
    teachers keep the hashes they had before user models and datasets existed."""
    train = {f.name: getattr(spec.teacher.train, f.name) for f in fields(TrainConfig)}
    del train["device"]
    if train["num_neighbors"] is None:
        del train["num_neighbors"]  # full batch: the hash teachers had before mini-batches
    m = spec.teacher.model
    # Version 1 hashed the sizes as fields of their own, null where an arch takes none: kept, so
    # built-in teachers cached before keep their hashes; a plugin's other sizes are added.
    sizes = {k: m.sizes.get(k) for k in _V1_SIZES} | m.sizes
    model = {"arch": m.arch, "preset": m.preset, **_canonical(sizes)}
    model |= {k: _canonical(getattr(m, k)) for k in _USER_KEYS if getattr(m, k)}
    ds = spec.dataset
    dataset = {"name": ds.name, "options": ds.options}
    dataset.update(
        {
            k: getattr(ds, k)
            for k in ("path", "factory", "metric", "target_node_type", "split")
            if getattr(ds, k)
        }
    )
    teacher = {"model": model, "train": train, "checkpoint": spec.teacher.checkpoint}
    return stable_hash({"version": TEACHER_HASH_VERSION, "dataset": dataset, "teacher": teacher})
