"""One latency figure per architecture, input and device in a study, measured in a quiet window.

Latency depends on the architecture, the input and the device, not on the trained weights. So a
study keeps one figure per *signature* (:func:`signature`: the model's ``spec``, the input's
shapes, the device name, the CPU threads and the timing settings): the first trial whose student
has a signature measures it, in a :func:`study.quiet.measurement_window` (every trial on the
machine paused at an epoch's end), repeated until the p50's 95% confidence interval lies within
``latency.tolerance`` (:func:`study.latency.measure_until_stable`), or marked unstable; every
later trial with that signature reads the same figure from the study's :class:`LatencyCache`
actor. So the objective a searcher sees, the figure the report draws and the one ``select``
compares with a budget are one number. A resumed study seeds its cache from the figures its
finished trials logged (:func:`logged_figures`), so it never measures an architecture twice.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import ray
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from study import tracking as tr
from study.config import StudySpec
from study.context import latency_input, study_latency
from study.data.base import Task
from study.latency import LatencyResult, device_name
from study.quiet import measurement_window

#: Seconds after which a claim whose trial never delivered (it died) may be taken by another.
CLAIM_TIMEOUT = 900.0
_WAIT_SECONDS = 0.2

HIT, MEASURE, WAIT = "hit", "measure", "wait"


class FigureCache:
    """The study's figures by signature; one trial measures each, the others wait for it.
    Runs as the Ray actor :data:`LatencyCache`."""

    def __init__(
        self, seeded: dict[str, LatencyResult], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        self.figures = dict(seeded)
        self.claims: dict[str, float] = {}

    def claim(self, sig: str) -> tuple[str, LatencyResult | None]:
        """``(HIT, figure)``; ``(MEASURE, None)``: the caller measures and :meth:`put`s it;
        ``(WAIT, None)``: another trial is measuring it, ask again."""
        if sig in self.figures:
            return HIT, self.figures[sig]
        now = self.clock()
        if sig in self.claims and now - self.claims[sig] < CLAIM_TIMEOUT:
            return WAIT, None
        self.claims[sig] = now
        return MEASURE, None

    def put(self, sig: str, figure: LatencyResult) -> LatencyResult:
        """Store a measured figure (the first one wins) and return the stored one."""
        self.claims.pop(sig, None)
        return self.figures.setdefault(sig, figure)

    def release(self, sig: str) -> None:
        """Give a claim back (its measurement failed): the next trial measures."""
        self.claims.pop(sig, None)

    def snapshot(self) -> dict[str, LatencyResult]:
        return dict(self.figures)


LatencyCache = ray.remote(num_cpus=0)(FigureCache)


def cache_name(parent_run_id: str) -> str:
    """The named actor of a study's cache (one per study run)."""
    return f"gds-latency-{parent_run_id}"


def start_cache(parent_run_id: str, seeded: dict[str, LatencyResult]) -> Any:
    """Create the study's cache actor (in the driver, after Ray started); returns its handle,
    which must be kept alive for the study's duration."""
    return LatencyCache.options(name=cache_name(parent_run_id), get_if_exists=True).remote(seeded)


def signature(model: nn.Module, task: Task, spec: StudySpec, device: str) -> str:
    """What a latency figure depends on, hashed: the model's architecture (``model.spec``), the
    shapes of the timed input, the device and threads, and the timing settings."""
    inputs = latency_input(task)
    threads = spec.latency.threads if device == "cpu" else torch.get_num_threads()
    key = {
        "model": getattr(model, "spec", type(model).__name__),
        "inputs": [list(t.shape) for t in inputs],
        "device": device_name(device),
        "threads": threads,
        "torch": torch.__version__,
        "latency": {
            "repeats": spec.latency.repeats,
            "warmup": spec.latency.warmup,
            "tolerance": spec.latency.tolerance,
            "quiet": spec.latency.quiet,
        },
    }
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def quiet_latency(model: nn.Module, task: Task, spec: StudySpec, device: str) -> LatencyResult:
    """:func:`study.context.study_latency` in a quiet window (when ``latency.quiet``); the
    result's ``quiet`` says whether the window was quiet."""
    if not spec.latency.quiet:
        return replace(study_latency(model, task, spec, device), quiet=False)
    with measurement_window() as window:
        lat = study_latency(model, task, spec, device)
    return replace(lat, quiet=window.quiet)


def study_figure(
    parent_run_id: str, model: nn.Module, task: Task, spec: StudySpec, device: str
) -> tuple[str, LatencyResult, bool]:
    """The study's figure for ``model``: ``(signature, figure, measured_here)``.

    Reads the study's cache actor; without one (a trial run outside a study) it measures.
    Must be called outside a :class:`study.quiet.Worker` block."""
    sig = signature(model, task, spec, device)
    try:
        cache = ray.get_actor(cache_name(parent_run_id))
    except ValueError:  # no study cache: measure, uncached
        return sig, quiet_latency(model, task, spec, device), True
    while True:
        answer: tuple[str, LatencyResult | None] = ray.get(cache.claim.remote(sig))  # type: ignore[assignment]
        state, figure = answer
        if state == HIT:
            assert figure is not None
            return sig, figure, False
        if state == MEASURE:
            break
        time.sleep(_WAIT_SECONDS)
    try:
        measured = quiet_latency(model, task, spec, device)
    except BaseException:
        cache.release.remote(sig)
        raise
    return sig, ray.get(cache.put.remote(sig, measured)), True


def logged_figures(
    client: MlflowClient, experiment_id: str, parent_run_id: str
) -> dict[str, LatencyResult]:
    """The figures a study's finished trials logged, by signature (to seed a resumed study)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{tr.TAG_PARENT}` = '{parent_run_id}' and tags.`{tr.TAG_ROLE}` = "
            f"'{tr.ROLE_TRIAL}' and attributes.status = 'FINISHED'"
        ),
        max_results=50_000,
    )
    out: dict[str, LatencyResult] = {}
    for run in runs:
        sig = run.data.tags.get(tr.TAG_LATENCY_SIGNATURE)
        if sig and tr.METRIC_LATENCY_P50 in run.data.metrics:
            out.setdefault(sig, LatencyResult.from_logged(run.data.metrics, run.data.tags))
    return out
