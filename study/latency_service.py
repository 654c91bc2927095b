"""One latency figure per architecture, input and device in a study, measured in a quiet window.

Latency depends on the architecture, the input and the device, not on the trained weights. So a
study keeps one figure per *signature* (:func:`signature`: the model's ``spec``, the input's
shapes, the device name, the CPU threads and the timing settings): the first trial whose student
has a signature measures it, in a :func:`study.quiet.measurement_window` (every trial on the
machine paused at an epoch's end), repeated until the p50's 95% confidence interval lies within
``latency.tolerance`` (:func:`study.latency.measure_until_stable`), or marked unstable, and
timed under ONNX Runtime in the same window (:class:`Figure`). This VM's speed drifts by tens of
percent between windows seconds apart, so it takes ``latency.windows`` windows and keeps the
median one (:func:`median_window`); every
later trial with that signature reads the same figure from the study's :class:`LatencyCache`
actor. So the objective a searcher sees, the figure the report draws and the one ``select``
compares with a budget are one number. A resumed study seeds its cache from the figures its
finished trials logged (:func:`logged_figures`), so it never measures an architecture twice.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, cast

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
from study.serving_latency import study_serving_metrics

#: Seconds after which a claim whose trial never delivered (it died) may be taken by another.
CLAIM_TIMEOUT = 900.0
_WAIT_SECONDS = 0.2

HIT, MEASURE, WAIT = "hit", "measure", "wait"
_T = TypeVar("_T")


@dataclass(frozen=True)
class Figure:
    """What a study measures once per signature: the PyTorch latency, and the other runtimes'
    and serving figures measured in the same quiet window (``extra_metrics``/``extra_tags``,
    logged as they are: serving latency, ONNX Runtime)."""

    latency: LatencyResult
    extra_metrics: dict[str, float] = field(default_factory=dict)
    extra_tags: dict[str, str] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """The figures as trial metrics (the PyTorch p50/p90 and CI, then the extras)."""
        lat = self.latency
        return {
            tr.METRIC_LATENCY_P50: lat.p50_ms,
            tr.METRIC_LATENCY_P90: lat.p90_ms,
            tr.METRIC_LATENCY_CI_LOW: lat.p50_ci_low_ms,
            tr.METRIC_LATENCY_CI_HIGH: lat.p50_ci_high_ms,
            **self.extra_metrics,
        }

    def tags(self) -> dict[str, str]:
        return {**self.latency.as_tags(), **self.extra_tags}


class FigureCache:
    """The study's figures by signature; one trial measures each, the others wait for it.
    Runs as the Ray actor :data:`LatencyCache`."""

    def __init__(
        self, seeded: dict[str, Figure], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        self.figures = dict(seeded)
        self.claims: dict[str, float] = {}

    def claim(self, sig: str) -> tuple[str, Figure | None]:
        """``(HIT, figure)``; ``(MEASURE, None)``: the caller measures and :meth:`put`s it;
        ``(WAIT, None)``: another trial is measuring it, ask again."""
        if sig in self.figures:
            return HIT, self.figures[sig]
        now = self.clock()
        if sig in self.claims and now - self.claims[sig] < CLAIM_TIMEOUT:
            return WAIT, None
        self.claims[sig] = now
        return MEASURE, None

    def put(self, sig: str, figure: Figure) -> Figure:
        """Store a measured figure (the first one wins) and return the stored one."""
        self.claims.pop(sig, None)
        return self.figures.setdefault(sig, figure)

    def release(self, sig: str) -> None:
        """Give a claim back (its measurement failed): the next trial measures."""
        self.claims.pop(sig, None)

    def snapshot(self) -> dict[str, Figure]:
        return dict(self.figures)


LatencyCache = ray.remote(num_cpus=0)(FigureCache)


def cache_name(parent_run_id: str) -> str:
    """The named actor of a study's cache (one per study run)."""
    return f"gds-latency-{parent_run_id}"


def start_cache(parent_run_id: str, seeded: dict[str, Figure]) -> Any:
    """Create the study's cache actor (in the driver, after Ray started); returns its handle,
    which must be kept alive for the study's duration."""
    return LatencyCache.options(name=cache_name(parent_run_id), get_if_exists=True).remote(seeded)


def signature(model: nn.Module, task: Task, spec: StudySpec, device: str) -> str:
    """What a latency figure depends on, hashed: the model's architecture (``model.spec``), the
    shapes of the timed input, the device and threads, and the timing settings."""
    inputs = latency_input(task, model=model)
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
            "windows": spec.latency.windows,
            "onnx": spec.latency.onnx,
        },
    }
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def measure_figure(model: nn.Module, task: Task, spec: StudySpec, device: str) -> Figure:
    """A student's :class:`Figure`: PyTorch on ``device`` (the whole graph, and serving 1 and
    256 nodes with their k-hop fetch: study.serving_latency), and ONNX Runtime on CPU unless
    ``latency.onnx`` is off, each timed in ``latency.windows`` quiet windows (when
    ``latency.quiet``) ``latency.window_gap`` seconds apart, combined by :func:`median_window`;
    the ONNX export is work, done before the first window."""
    s = spec.latency
    onnx_model, onnx_tags = None, {tr.TAG_ONNX: "off (latency.onnx: false)"}
    if s.onnx:
        from study.onnx_runtime import prepare_onnx  # onnxruntime only when asked

        onnx_model, onnx_tags = prepare_onnx(model, latency_input(task, model=model), s.threads)

    def measure() -> Figure:
        lat = study_latency(model, task, spec, device)
        extra = study_serving_metrics(model, task, spec, device)  # B=1, B=256 with the fetch
        if onnx_model is not None:
            from study.onnx_runtime import onnx_metrics

            extra.update(onnx_metrics(onnx_model, s.repeats, s.warmup, s.threads))
        return Figure(lat, extra, onnx_tags)

    windows: list[Figure] = []
    for i in range(s.windows):
        if i:
            time.sleep(s.window_gap)  # the trials train meanwhile
        figure, quiet = _in_window(spec, measure)
        windows.append(replace(figure, latency=replace(figure.latency, quiet=quiet)))
    return median_window(windows)


def median_window(windows: list[Figure]) -> Figure:
    """One figure from several windows' (``n >= 1``): the PyTorch latency of the window with the
    median p50 (the lower middle one for even ``n``), so its p90 and CI belong to that window;
    every other metric is the median over windows. Quiet and stable only if every window was;
    the windows' p50s and their spread, ``(max - min) / median``, are logged beside it."""
    p50s = [w.latency.p50_ms for w in windows]
    middle = sorted(range(len(windows)), key=lambda i: p50s[i])[(len(windows) - 1) // 2]
    lat = replace(
        windows[middle].latency,
        quiet=all(w.latency.quiet for w in windows),
        stable=all(w.latency.stable for w in windows),
    )
    keys = set.intersection(*(set(w.extra_metrics) for w in windows))
    extra = {k: float(statistics.median(w.extra_metrics[k] for w in windows)) for k in keys}
    extra[tr.METRIC_LATENCY_WINDOW_SPREAD] = (max(p50s) - min(p50s)) / lat.p50_ms
    tags = {
        **windows[middle].extra_tags,
        tr.TAG_LATENCY_WINDOWS: ",".join(f"{p:.4g}" for p in p50s),
    }
    return Figure(lat, extra, tags)


def _in_window(spec: StudySpec, measure: Callable[[], _T]) -> tuple[_T, bool]:
    """``measure()`` in a quiet window when ``latency.quiet``; and whether it was quiet."""
    if not spec.latency.quiet:
        return measure(), False
    with measurement_window() as window:
        out = measure()
    return out, window.quiet


def study_figure(
    parent_run_id: str, model: nn.Module, task: Task, spec: StudySpec, device: str
) -> tuple[str, Figure, bool]:
    """The study's figure for ``model``: ``(signature, figure, measured_here)``.

    Reads the study's cache actor; without one (a trial run outside a study) it measures.
    Must be called outside a :class:`study.quiet.Worker` block."""
    sig = signature(model, task, spec, device)
    try:
        cache = ray.get_actor(cache_name(parent_run_id))
    except ValueError:  # no study cache: measure, uncached
        return sig, measure_figure(model, task, spec, device), True
    while True:
        state, figure = cast(tuple[str, Figure | None], ray.get(cache.claim.remote(sig)))
        if state == HIT:
            assert figure is not None
            return sig, figure, False
        if state == MEASURE:
            break
        time.sleep(_WAIT_SECONDS)
    try:
        measured = measure_figure(model, task, spec, device)
    except BaseException:
        cache.release.remote(sig)
        raise
    return sig, ray.get(cache.put.remote(sig, measured)), True


def logged_figures(
    client: MlflowClient, experiment_id: str, parent_run_id: str
) -> dict[str, Figure]:
    """The figures a study's trials logged, by signature (to seed a resumed study): finished
    ones, and interrupted ones that got as far as logging their figure."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{tr.TAG_PARENT}` = '{parent_run_id}' and tags.`{tr.TAG_ROLE}` = "
            f"'{tr.ROLE_TRIAL}'"
        ),
        max_results=50_000,
    )
    out: dict[str, Figure] = {}
    for run in runs:
        sig = run.data.tags.get(tr.TAG_LATENCY_SIGNATURE)
        metrics, tags = run.data.metrics, run.data.tags
        if sig and tr.METRIC_LATENCY_P50 in metrics:
            extra = {k: metrics[k] for k in tr.EXTRA_LATENCY_METRICS if k in metrics}
            extra_tags = {k: tags[k] for k in tr.EXTRA_LATENCY_TAGS if k in tags}
            lat = LatencyResult.from_logged(metrics, tags)
            out.setdefault(sig, Figure(lat, extra, extra_tags))
    return out
