"""Readable MLflow run names for trials, built from a trial's resolved parameters.

A name reads method, its key hyperparameters, the student and the seed, for example
``lsp-rbf-lam12.3-gat-w16-s0``, ``kd-T4.0-gat-w8-s1`` or ``none-mlp-w4-s0``. It is derived only
from :attr:`study.config.TrialPlan.params` and the names of the study's search dimensions, so the
same trial always gets the same name. Names are for reading, not for finding runs: two trials can
share one (the same configuration sampled twice); the ``gds.*`` tags identify runs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

# Short prefixes of hyperparameter names; a value-only entry ("") shows just the value.
_ABBREV = {
    "kernel": "",
    "lambda": "lam",
    "temperature": "T",
    "alpha": "a",
    "sigma": "sig",
    "degree": "deg",
    "coef0": "c",
    "p": "p",
    "direction": "",
    "lsp_until_epoch": "until",
    "width": "w",
    "depth": "d",
    "heads": "h",
    "k": "k",
    "emb_dims": "emb",
    "dropout": "drop",
    "lr": "lr",
    "weight_decay": "wd",
}
# Method hyperparameters named even when the study does not search them.
_KEY_METHOD_PARAMS = ("kernel", "lambda", "temperature")
# Never in a name (structure, not a hyperparameter one compares by).
_SKIP = frozenset({"layer_map", "hidden", "factory", "arch", "preset"})


def format_value(value: Any) -> str:
    """A short, stable rendering: ``12.3`` (3 significant digits), ``4.0`` for a whole float,
    ``1000`` for large ones, ints and strings as they are, lists joined with ``x``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        x = float(value)
        if not math.isfinite(x):
            return str(x)
        if abs(x) >= 100:
            return str(round(x))
        text = f"{x:.3g}"
        return f"{text}.0" if text.lstrip("-").isdigit() else text
    if isinstance(value, (list, tuple)):
        return "x".join(format_value(v) for v in value)
    return str(value)


def _short(key: str) -> str:
    """The prefix of a hyperparameter (``lam``) or a factory option (``hidden_channels`` ->
    ``hc``, ``width`` -> ``width``)."""
    if key in _ABBREV:
        return _ABBREV[key]
    parts = [p for p in key.split("_") if p]
    return "".join(p[0] for p in parts) if len(parts) > 1 else key


def _part(key: str, value: Any) -> str:
    return f"{_short(key)}{format_value(value)}"


def trial_run_name(params: Mapping[str, Any], searched: Iterable[str] = ()) -> str:
    """The run name of one trial.

    Args:
        params: the trial's flat parameters (:attr:`TrialPlan.params`: ``method``, its
            ``<method>.*`` keys, ``student.*``, ``seed``).
        searched: the names of the study's search dimensions (``"lsp.lambda"``,
            ``"student.width"``, ``"student.options.hidden_channels"``); their values are named
            besides the key ones (kernel, lambda, temperature, architecture, width).

    Returns:
        ``<method>[-<method params>]-<student>[-<student params>]-s<seed>``.
    """
    searched = set(searched)
    method = str(params.get("method", "trial"))
    parts = [method]
    prefix = f"{method}."
    ours = {n[len(prefix) :]: v for n, v in params.items() if n.startswith(prefix)}
    first = [k for k in _KEY_METHOD_PARAMS if k in ours]  # kernel, lambda, temperature
    for key in first + [k for k in ours if k not in first]:
        if key in _SKIP or (key not in first and f"{prefix}{key}" not in searched):
            continue
        parts.append(_part(key, ours[key]))

    if "student.factory" in params:  # a user's model: its searched options say which
        for name, value in params.items():
            if name.startswith("student.options.") and name in searched:
                parts.append(_part(name.removeprefix("student.options."), value))
    else:
        if params.get("student.arch"):
            parts.append(str(params["student.arch"]))
        if "student.width" in params:
            parts.append(_part("width", params["student.width"]))
    for name, value in params.items():
        key = name.removeprefix("student.")
        if (
            name.startswith("student.")
            and name in searched
            and not name.startswith("student.options.")
            and key not in _SKIP
            and key != "width"
        ):
            parts.append(_part(key, value))
    if "seed" in params:
        parts.append(f"s{params['seed']}")
    return "-".join(p for p in parts if p)
