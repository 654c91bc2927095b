"""From a study's dimensions to what Ray Tune samples: an Optuna define-by-run space or a grid.

Seeds are not searched: every sampled configuration is repeated once per seed. With Optuna,
:class:`SeedRepeater` asks for one configuration and hands it out ``len(seeds)`` times, then
tells Optuna the mean over seeds of every objective (Ray's ``Repeater`` handles one metric only).

The searcher's checkpoints are JSON (:class:`JsonOptunaSearch`, :meth:`SeedRepeater.get_state`):
Ray's ``OptunaSearch.save`` pickles the whole searcher, and a pickle read back from a study
folder runs whatever code the file names.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import threading
from pathlib import Path
from typing import Any, cast

import numpy as np
import optuna
from optuna.distributions import distribution_to_json, json_to_distribution
from optuna.trial import FrozenTrial, TrialState
from ray import tune
from ray.tune.search import Repeater, Searcher
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.repeater import TRIAL_INDEX, _TrialGroup

from study.config import Dimension, StudySpec, grid_configs


class DefineByRun:
    """Optuna define-by-run space: the method first, then only the dimensions that apply to it.

    A picklable callable (module-level class), since Tune checkpoints the searcher with it.
    """

    def __init__(self, methods: tuple[str, ...], dimensions: tuple[Dimension, ...]) -> None:
        self.methods = list(methods)
        self.dimensions = list(dimensions)

    def __call__(self, trial: Any) -> dict[str, Any] | None:
        fixed = None
        if len(self.methods) > 1:
            method = trial.suggest_categorical("method", self.methods)
        else:
            method = self.methods[0]
            fixed = {"method": method}
        sampled: dict[str, Any] = {}
        # Conditioning dimensions (student.arch, lsp.kernel) come first in the spec's order.
        for dim in self.dimensions:
            if dim.applies(method, sampled):
                sampled[dim.name] = suggest(trial, dim)
        return fixed


def suggest(trial: Any, dim: Dimension) -> Any:
    """Sample one dimension on an Optuna trial."""
    if dim.kind == "choice":
        return trial.suggest_categorical(dim.name, list(dim.args))
    low, high = dim.args
    if dim.kind in ("uniform", "loguniform"):
        return trial.suggest_float(dim.name, float(low), float(high), log=dim.kind == "loguniform")
    return trial.suggest_int(dim.name, int(low), int(high), log=dim.kind == "logint")


class SeedRepeater(Repeater):
    """``Repeater`` for one or several objectives that checkpoints its own trial groups."""

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False, **kwargs: Any
    ) -> None:
        group = self._trial_id_to_group.get(trial_id)
        if group is None:
            return
        metrics = (
            self.searcher.metric
            if isinstance(self.searcher.metric, list)
            else [self.searcher.metric]
        )
        scores = [float(result[m]) if result and m in result else math.nan for m in metrics]
        group.report(trial_id, scores)
        if group.finished_reporting():
            mean = (
                np.nanmean(np.asarray(group.scores(), dtype=float), axis=0)
                if _any_finite(group.scores())
                else None
            )
            summary = (
                None if mean is None else {m: float(v) for m, v in zip(metrics, mean, strict=True)}
            )
            self.searcher.on_trial_complete(
                group.primary_trial_id, result=summary, error=summary is None
            )

    def get_state(self) -> dict[str, Any]:
        """The trial groups as plain JSON values (Tune stores them beside its own state)."""
        groups = list(self._groups)
        current = self._current_group
        return {
            "version": STATE_VERSION,
            "metric": self._metric,
            "mode": self._mode,
            "repeat": self.repeat,
            "set_index": self._set_index,
            "groups": [
                {
                    "primary_trial_id": g.primary_trial_id,
                    "config": g.config,
                    "max_trials": g.max_trials,
                    # A trial's scores: one per objective, or None while it runs.
                    "trials": [[tid, score] for tid, score in g._trials.items()],
                }
                for g in groups
            ],
            "current": None if current is None else groups.index(current),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        _check_version(state, "SeedRepeater")
        self._metric, self._mode = state["metric"], state["mode"]
        self.repeat, self._set_index = int(state["repeat"]), bool(state["set_index"])
        self._groups = []
        self._trial_id_to_group = {}
        for g in state["groups"]:
            group = _TrialGroup(str(g["primary_trial_id"]), dict(g["config"]), int(g["max_trials"]))
            group._trials = {str(tid): score for tid, score in g["trials"]}
            self._groups.append(group)
            self._trial_id_to_group.update(dict.fromkeys(group._trials, group))
        current = state["current"]
        self._current_group = None if current is None else self._groups[int(current)]

    def save(self, checkpoint_path: str) -> None:
        """Both levels in one JSON file: these groups and the inner searcher's state."""
        inner = self.searcher.get_state() if isinstance(self.searcher, JsonOptunaSearch) else None
        write_json(Path(checkpoint_path), {"repeater": self.get_state(), "searcher": inner})

    def restore(self, checkpoint_path: str) -> None:
        state = read_json(Path(checkpoint_path))
        self.set_state(state["repeater"])
        if state.get("searcher") is not None:
            self.searcher.set_state(state["searcher"])


#: The layout of the JSON states written here; a state of another version is refused.
STATE_VERSION = 1


def _check_version(state: Any, what: str) -> None:
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise ValueError(f"{what}: not a searcher state of version {STATE_VERSION}")


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as JSON values (anything else is a bug: fail loudly)."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` as JSON atomically (a crash leaves the old file or the new one)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, default=_plain))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; a file that is not one is an error, never unpickled."""
    state = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a JSON object")
    return state


def _random_states(sampler: Any, prefix: str = "") -> dict[str, np.random.RandomState]:
    """The random states of an Optuna sampler and of the samplers inside it, by attribute path.

    Optuna keeps them in ``LazyRandomState._rng`` (``sampler._rng``,
    ``sampler._random_sampler._rng``); restoring them makes a resumed random or TPE search go on
    where it stopped rather than draw its first configurations again.
    """
    found: dict[str, np.random.RandomState] = {}
    for name, value in vars(sampler).items():
        if isinstance(getattr(value, "rng", None), np.random.RandomState):
            found[prefix + name] = value.rng
        elif isinstance(value, optuna.samplers.BaseSampler):
            found.update(_random_states(value, f"{prefix}{name}."))
    return found


def _trial_to_json(trial: FrozenTrial) -> dict[str, Any]:
    return {
        "number": trial.number,
        "state": trial.state.name,
        "values": trial.values,
        "datetime_start": _iso(trial.datetime_start),
        "datetime_complete": _iso(trial.datetime_complete),
        "params": trial.params,
        "distributions": {k: distribution_to_json(d) for k, d in trial.distributions.items()},
        "user_attrs": trial.user_attrs,
        "system_attrs": trial.system_attrs,
        "intermediate_values": [[step, v] for step, v in trial.intermediate_values.items()],
    }


def _trial_from_json(data: dict[str, Any]) -> FrozenTrial:
    return FrozenTrial(
        number=int(data["number"]),
        state=TrialState[data["state"]],
        value=None,
        values=data["values"],
        datetime_start=_from_iso(data["datetime_start"]),
        datetime_complete=_from_iso(data["datetime_complete"]),
        params=dict(data["params"]),
        distributions={k: json_to_distribution(d) for k, d in data["distributions"].items()},
        user_attrs=dict(data["user_attrs"]),
        system_attrs=dict(data["system_attrs"]),
        intermediate_values={int(step): float(v) for step, v in data["intermediate_values"]},
        trial_id=int(data["number"]),
    )


def _iso(when: datetime.datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def _from_iso(text: str | None) -> datetime.datetime | None:
    return None if text is None else datetime.datetime.fromisoformat(text)


class JsonOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that checkpoints to JSON what its sampler needs to go on.

    That is the Optuna study's trials (every sampler here derives its next suggestion from them),
    the study's system attributes (NSGA-II's parent populations), the samplers' random states, and
    which Tune trial is which Optuna trial. The space, sampler kind and objectives come from the
    study spec, not from the file.
    """

    # Tune names the file from this; ``.json`` so that a stray ``searcher-state-*.pkl`` is never
    # picked up by ``restore_from_dir``.
    CKPT_FILE_TMPL = "searcher-state-{}.json"

    def get_state(self) -> dict[str, Any]:
        # Set up by the constructor: make_search always passes the space.
        study = cast(optuna.Study, self._ot_study)
        storage, study_id = study._storage, study._study_id
        return {
            "version": STATE_VERSION,
            "directions": [d.name for d in study.directions],
            "study_system_attrs": storage.get_study_system_attrs(study_id),
            "study_user_attrs": storage.get_study_user_attrs(study_id),
            "trials": [_trial_to_json(t) for t in study.get_trials(deepcopy=False)],
            "tune_trials": {tid: t.number for tid, t in self._ot_trials.items()},
            "completed": sorted(self._completed_trials),
            # ("MT19937", 624 keys, pos, has_gauss, cached_gaussian) as a JSON list.
            "random_states": {
                path: list(rs.get_state()) for path, rs in _random_states(self._sampler).items()
            },
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Rebuild the study in memory from ``state``, on this searcher's sampler and space."""
        _check_version(state, "OptunaSearch")
        directions = [optuna.study.StudyDirection[d] for d in state["directions"]]
        study = optuna.create_study(
            sampler=self._sampler,
            pruner=optuna.pruners.NopPruner(),
            study_name=self._study_name,
            directions=directions,
        )
        storage, study_id = study._storage, study._study_id
        for key, value in state["study_system_attrs"].items():
            storage.set_study_system_attr(study_id, key, value)
        for key, value in state["study_user_attrs"].items():
            storage.set_study_user_attr(study_id, key, value)
        # Trials go back in their order, so each keeps its number (NSGA-II's attributes name them).
        for data in sorted(state["trials"], key=lambda d: int(d["number"])):
            study.add_trial(_trial_from_json(data))
        self._ot_study = study  # type: ignore[assignment]  # Ray declares it None
        self._completed_trials = set(state["completed"])
        # Only trials still running need a live handle (told later); the rest are done.
        self._ot_trials = {}
        for tid, number in state["tune_trials"].items():
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, int(number))
            if storage.get_trial(trial_id).state == TrialState.RUNNING:
                self._ot_trials[tid] = optuna.trial.Trial(study, trial_id)
        # Last: opening those handles may draw from the sampler (NSGA-II's before_trial).
        states = _random_states(self._sampler)
        for path, saved in state["random_states"].items():
            if path in states:
                name, keys, *rest = saved
                states[path].set_state((name, np.asarray(keys, dtype=np.uint32), *rest))

    def save(self, checkpoint_path: str) -> None:
        write_json(Path(checkpoint_path), self.get_state())

    def restore(self, checkpoint_path: str) -> None:
        self.set_state(read_json(Path(checkpoint_path)))


def _any_finite(scores: list[list[float]]) -> bool:
    return bool(np.isfinite(np.asarray(scores, dtype=float)).any())


def make_search(spec: StudySpec) -> tuple[Searcher | None, dict[str, Any], int]:
    """``(search_alg, param_space, num_samples)`` for the Tuner.

    ``num_samples`` counts trials: configurations times seeds (Optuna), or grid repeats (grid,
    where seeds are a grid axis of their own).
    """
    algorithm = spec.searcher.algorithm
    if algorithm == "grid":
        space = {
            "params": tune.grid_search(grid_configs(spec)),
            "seed": tune.grid_search(list(spec.seeds)),
        }
        return None, space, spec.searcher.num_samples

    seed = spec.searcher.seed
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "nsga2": lambda: PicklableNSGAIISampler(
            seed=seed, population_size=spec.searcher.population()
        ),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
    }
    metrics = [o.metric for o in spec.objectives]
    modes: list[str] = [o.mode for o in spec.objectives]
    optuna_search = JsonOptunaSearch(
        space=DefineByRun(spec.methods, spec.search),
        metric=metrics if len(metrics) > 1 else metrics[0],
        mode=modes if len(modes) > 1 else modes[0],
        sampler=samplers[algorithm](),
    )
    repeats = len(spec.seeds)
    return SeedRepeater(optuna_search, repeat=repeats), {}, spec.searcher.num_samples * repeats


class PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II, whose ``threading.Lock`` (Optuna 5) is left out of its pickle and made
    anew when read: Ray Tune pickles the searcher into its experiment state when a study starts,
    and a lock cannot be pickled. The lock guards one process's threads, so a new one is right."""

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def trial_params(config: dict[str, Any], seeds: tuple[int, ...] | list[int]) -> dict[str, Any]:
    """The flat hyperparameters of a trial, with its seed taken from the repeat index."""
    # Grid studies nest the configuration under "params" beside a "seed" axis.
    params = dict(config.get("params", {}))
    params.update(
        {
            k: v
            for k, v in config.items()
            if k not in ("params", TRIAL_INDEX) and not k.startswith("_")
        }
    )
    if "seed" not in params:
        params["seed"] = seeds[int(config.get(TRIAL_INDEX, 0)) % len(seeds)]
    return params
