"""From a study's dimensions to what Ray Tune samples: an Optuna define-by-run space or a grid.

Seeds are not searched: every sampled configuration is repeated once per seed. With Optuna,
:class:`SeedRepeater` asks for one configuration and hands it out ``len(seeds)`` times, then
tells Optuna the mean over seeds of every objective (Ray's ``Repeater`` handles one metric only).
"""

from __future__ import annotations

import math
import pickle
from typing import Any

import numpy as np
from ray import tune
from ray.tune.search import Repeater, Searcher
from ray.tune.search.repeater import TRIAL_INDEX

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

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


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

    import optuna
    from ray.tune.search.optuna import OptunaSearch

    seed = spec.searcher.seed
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(
            seed=seed, population_size=spec.searcher.population()
        ),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
    }
    metrics = [o.metric for o in spec.objectives]
    modes: list[str] = [o.mode for o in spec.objectives]
    optuna_search = OptunaSearch(
        space=DefineByRun(spec.methods, spec.search),
        metric=metrics if len(metrics) > 1 else metrics[0],
        mode=modes if len(modes) > 1 else modes[0],
        sampler=samplers[algorithm](),
    )
    repeats = len(spec.seeds)
    return SeedRepeater(optuna_search, repeat=repeats), {}, spec.searcher.num_samples * repeats


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
