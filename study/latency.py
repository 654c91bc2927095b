"""Inference latency of a model on its input (per forward and per sample), and model size.

Timed like ``torch_geometric.profile.benchmark`` (DESIGN.md section 5, item 8): warm-ups, then
repeated timed calls, a CUDA synchronisation around each, and the device name and thread count
recorded beside every figure so that points on one plot are comparable.

Rules, so that a figure can be read without this file:

- **What is timed.** One call of ``model(*inputs)`` (or of ``inputs()`` when ``inputs`` is a
  zero-argument callable), under ``model.eval()`` and ``torch.inference_mode()``. Pass the raw
  input: for DGCNN that is the points, so the kNN graph construction (which depends on K) is
  inside the timed region, as it is at deployment. Whatever ``forward`` returns (a tensor, a
  :class:`~study.models.base.ModelOutput`) is discarded.
- **Warm-up until stable.** At least ``warmup`` untimed calls; then more, one at a time, until the
  last :data:`STABLE_WINDOW` warm-up times all lie within :data:`STABLE_TOLERANCE` (10%) of their
  median, or until ``max_warmup`` calls in all. ``warmup=0`` skips warm-up entirely (a cold-start
  measurement). ``warmup_used`` reports how many were run.
- **Repeats.** ``repeats`` timed calls (default 30, the minimum the issue asks for a trustworthy
  p90), each timed on its own with ``time.perf_counter_ns``.
- **CUDA.** ``torch.cuda.synchronize(device)`` before the first call and after every call, with
  host timestamps, rather than CUDA events: it measures what a caller waits for (Python and
  launch overhead, and host-side work such as building a graph, included), and one clock for CPU
  and GPU keeps their figures comparable.
- **CPU threads.** On CPU, ``torch.set_num_threads(threads)`` for the measurement, and the
  previous value restored afterwards, even on error. ``threads=None`` keeps the current value.
- **Statistics.** Percentiles by ``numpy.percentile`` with linear interpolation (numpy's default,
  as ``torch.quantile``); ``std_ms`` is the sample standard deviation (``ddof=1``; 0 for one
  repeat).
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from study.errors import UserInputError
from study.tracking import TAG_LATENCY_QUIET as TAG_QUIET
from study.tracking import TAG_LATENCY_STABLE as TAG_STABLE

#: Warm-up stops once this many consecutive warm-up times agree (see the module docstring).
STABLE_WINDOW = 3
#: ... to within this fraction of their median.
STABLE_TOLERANCE = 0.10

# The clock, as a module attribute so that tests can drive the warm-up rule with a fake one.
_clock: Callable[[], int] = time.perf_counter_ns


@dataclass(frozen=True)
class LatencyResult:
    """Latency of one model on one input, in milliseconds per call (one forward).

    Attributes:
        p50_ms: median time per call.
        p90_ms: 90th percentile time per call (linear interpolation).
        mean_ms: mean time per call.
        std_ms: sample standard deviation of the time per call (0 for one repeat).
        min_ms: fastest call.
        repeats: number of timed calls.
        warmup_used: number of untimed warm-up calls actually run.
        per_sample_p50_ms: ``p50_ms / samples_per_call`` (e.g. per point cloud of a batch).
        device_name: the CPU model or CUDA device name the figures were taken on.
        threads: ``torch.get_num_threads()`` during the measurement.
        torch_version: ``torch.__version__``.
        samples_per_call: samples (graphs, clouds) in one call's input.
        times_ms: every timed call, in order.
    """

    p50_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    repeats: int
    warmup_used: int
    per_sample_p50_ms: float
    device_name: str
    threads: int
    torch_version: str
    samples_per_call: int = 1
    times_ms: tuple[float, ...] = field(default=(), repr=False)
    p50_ci_low_ms: float = float("nan")
    p50_ci_high_ms: float = float("nan")
    stable: bool = True
    quiet: bool = True

    @property
    def p50_ci_rel(self) -> float:
        """Half the width of the p50's 95% confidence interval, as a fraction of the p50."""
        return (self.p50_ci_high_ms - self.p50_ci_low_ms) / 2 / self.p50_ms

    def as_metrics(self, prefix: str = "latency_ms") -> dict[str, float]:
        """Float metrics for MLflow: ``{prefix}_p50``, ``_p90``, ``_mean``, ``_std``, ``_min``,
        ``_per_sample_p50``."""
        return {
            f"{prefix}_p50": self.p50_ms,
            f"{prefix}_p90": self.p90_ms,
            f"{prefix}_mean": self.mean_ms,
            f"{prefix}_std": self.std_ms,
            f"{prefix}_min": self.min_ms,
            f"{prefix}_per_sample_p50": self.per_sample_p50_ms,
            f"{prefix}_p50_ci_low": self.p50_ci_low_ms,
            f"{prefix}_p50_ci_high": self.p50_ci_high_ms,
        }

    def as_tags(self) -> dict[str, str]:
        """String tags saying where the figures were taken (MLflow tags are strings)."""
        return {
            "latency_device": self.device_name,
            "latency_threads": str(self.threads),
            "latency_torch_version": self.torch_version,
            "latency_repeats": str(self.repeats),
            TAG_STABLE: str(self.stable).lower(),
            TAG_QUIET: str(self.quiet).lower(),
        }

    @classmethod
    def from_logged(
        cls, metrics: dict[str, float], tags: dict[str, str], prefix: str = "latency_ms"
    ) -> LatencyResult:
        """The figure :meth:`as_metrics` and :meth:`as_tags` logged (without the call times)."""
        nan = float("nan")
        return cls(
            p50_ms=metrics[f"{prefix}_p50"],
            p90_ms=metrics.get(f"{prefix}_p90", nan),
            mean_ms=metrics.get(f"{prefix}_mean", nan),
            std_ms=metrics.get(f"{prefix}_std", nan),
            min_ms=metrics.get(f"{prefix}_min", nan),
            repeats=int(tags.get("latency_repeats", "0")),
            warmup_used=0,
            per_sample_p50_ms=metrics.get(f"{prefix}_per_sample_p50", nan),
            device_name=tags.get("latency_device", ""),
            threads=int(tags.get("latency_threads", "0")),
            torch_version=tags.get("latency_torch_version", ""),
            p50_ci_low_ms=metrics.get(f"{prefix}_p50_ci_low", nan),
            p50_ci_high_ms=metrics.get(f"{prefix}_p50_ci_high", nan),
            stable=tags.get(TAG_STABLE, "true") == "true",
            quiet=tags.get(TAG_QUIET, "true") == "true",
        )


def measure_latency(
    model: nn.Module,
    inputs: tuple | torch.Tensor | Callable[[], Any],
    *,
    warmup: int = 5,
    repeats: int = 30,
    max_warmup: int = 50,
    threads: int | None = 1,
    device: torch.device | str | None = None,
    samples_per_call: int = 1,
) -> LatencyResult:
    """Time inference of ``model`` on ``inputs`` (rules in the module docstring).

    Args:
        model: any module; put in eval mode for the measurement, each submodule's ``training``
            flag restored afterwards.
        inputs: positional arguments of ``model`` (a tuple, or one tensor), already on
            ``device``; or a zero-argument callable that runs the model itself (e.g.
            ``lambda: model(x, edge_index=ei)`` for keyword arguments). Must be the raw input, so
            input-dependent work inside ``forward`` (DGCNN's kNN) is timed.
        warmup: minimum number of warm-up calls (0: none at all).
        repeats: number of timed calls, at least 1 (default 30).
        max_warmup: cap on warm-up calls while waiting for stable times.
        threads: CPU threads for the measurement (CPU only); ``None`` keeps the current value.
        device: where the model runs; ``None`` infers it from the model's first parameter or
            buffer, then from the first tensor in ``inputs``, else CPU.
        samples_per_call: samples in one call's input, for ``per_sample_p50_ms``.

    Returns:
        The :class:`LatencyResult`.

    Raises:
        UserInputError: (a ``ValueError``) for ``repeats < 1``, a negative ``warmup``,
            ``max_warmup < warmup``, ``threads < 1``, ``samples_per_call < 1``, inputs that are
            neither a tuple, a tensor nor a callable, or a CUDA device without CUDA.
    """
    _check_counts(warmup, repeats, max_warmup, threads, samples_per_call)
    call = _make_call(model, inputs)
    dev = _resolve_device(model, inputs, device)
    on_cuda = dev.type == "cuda"

    def sync() -> None:
        if on_cuda:
            torch.cuda.synchronize(dev)

    def timed_call() -> float:
        start = _clock()
        call()
        sync()
        return (_clock() - start) / 1e6

    modes = [(m, m.training) for m in model.modules()]
    previous_threads = torch.get_num_threads()
    try:
        if threads is not None and dev.type == "cpu":
            torch.set_num_threads(threads)
        model.eval()
        with torch.inference_mode():
            sync()
            warmup_times: list[float] = []
            while len(warmup_times) < warmup or (
                len(warmup_times) < max_warmup and warmup > 0 and not _stable(warmup_times)
            ):
                warmup_times.append(timed_call())
            times = [timed_call() for _ in range(repeats)]
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous_threads)
        for module, mode in modes:
            module.training = mode

    return _summarise(times, len(warmup_times), dev, used_threads, samples_per_call)


def _summarise(
    times: list[float], warmup_used: int, dev: torch.device, threads: int, samples_per_call: int
) -> LatencyResult:
    arr = np.asarray(times, dtype=np.float64)
    repeats = len(times)
    p50, p90 = (float(v) for v in np.percentile(arr, [50, 90], method="linear"))
    low, high = median_ci(times)
    return LatencyResult(
        p50_ms=p50,
        p90_ms=p90,
        mean_ms=float(arr.mean()),
        std_ms=float(arr.std(ddof=1)) if repeats > 1 else 0.0,
        min_ms=float(arr.min()),
        repeats=repeats,
        warmup_used=warmup_used,
        per_sample_p50_ms=p50 / samples_per_call,
        device_name=device_name(dev),
        threads=threads,
        torch_version=torch.__version__,
        samples_per_call=samples_per_call,
        times_ms=tuple(times),
        p50_ci_low_ms=low,
        p50_ci_high_ms=high,
    )


def median_ci(
    times: list[float] | tuple[float, ...], confidence: float = 0.95
) -> tuple[float, float]:
    """A distribution-free confidence interval for the median of ``times``: the order
    statistics ``x_(l)`` and ``x_(u)`` with ``P(l <= B < u) >= confidence`` for
    ``B ~ Binomial(n, 1/2)`` (the count of draws below the true median). Timing noise is
    skewed (a few slow calls), so no normal approximation of the times is assumed.
    For ``n < 6`` no such pair exists at 95%: the whole range is returned.
    """
    x = np.sort(np.asarray(times, dtype=np.float64))
    n = len(x)
    if n == 0:
        raise UserInputError("median_ci: no times")
    # The largest l with P(B <= l - 1) <= (1 - confidence) / 2, 1-based; u = n - l + 1 by
    # symmetry. Exact integers throughout (2**n overflows a float past n = 1023).
    alpha = Fraction(1.0 - confidence).limit_denominator(10**6) / 2
    below, low, total = 0, 0, 2**n
    while low < n and (below + math.comb(n, low)) * alpha.denominator <= alpha.numerator * total:
        below += math.comb(n, low)
        low += 1
    if low < 1:
        return float(x[0]), float(x[-1])
    return float(x[low - 1]), float(x[n - low])


def measure_until_stable(
    model: nn.Module,
    inputs: tuple | torch.Tensor | Callable[[], Any],
    *,
    tolerance: float = 0.03,
    max_repeats: int = 300,
    max_seconds: float = 30.0,
    repeats: int = 30,
    **kwargs: Any,
) -> LatencyResult:
    """:func:`measure_latency`, repeated in rounds of ``repeats`` timed calls (warm-up only
    before the first) until the p50's 95% confidence interval (:func:`median_ci` over every
    call so far) lies within ``tolerance`` (a fraction) of the p50, or ``max_repeats`` calls or
    ``max_seconds`` of timing have been spent; then ``stable`` says which it was.

    Other keyword arguments (``warmup``, ``threads``, ``device``, ``samples_per_call``, ...) go to
    :func:`measure_latency`.
    """
    if not 0 < tolerance < 1:
        raise UserInputError(f"tolerance={tolerance}: must lie in (0, 1), e.g. 0.03")
    if max_repeats < repeats:
        raise UserInputError(f"max_repeats={max_repeats}: must be at least repeats={repeats}")
    first = measure_latency(model, inputs, repeats=repeats, **kwargs)
    times = list(first.times_ms)
    result = first
    while (
        not _within(result, tolerance)
        and len(times) + repeats <= max_repeats
        and sum(times) / 1e3 < max_seconds
    ):
        more = measure_latency(model, inputs, repeats=repeats, **{**kwargs, "warmup": 0})
        times.extend(more.times_ms)
        result = _summarise(
            times,
            first.warmup_used,
            _resolve_device(model, inputs, kwargs.get("device")),
            first.threads,
            first.samples_per_call,
        )
    return replace(result, stable=_within(result, tolerance))


def _within(result: LatencyResult, tolerance: float) -> bool:
    return (
        result.p50_ci_low_ms >= (1 - tolerance) * result.p50_ms
        and result.p50_ci_high_ms <= (1 + tolerance) * result.p50_ms
    )


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters counted once).

    Args:
        model: the module; lazy modules must have run one forward first.
        trainable_only: count only parameters with ``requires_grad``.
    """
    total = 0
    for name, p in model.named_parameters():
        if isinstance(p, nn.parameter.UninitializedParameter):
            raise UserInputError(
                f"parameter {name!r} is uninitialised (lazy module): run one forward first"
            )
        if p.requires_grad or not trainable_only:
            total += p.numel()
    return total


def model_size_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers (shared tensors counted once)."""
    tensors = [*model.parameters(), *model.buffers()]
    for t in tensors:
        if isinstance(t, (UninitializedParameter, UninitializedBuffer)):
            raise UserInputError("model has uninitialised (lazy) tensors: run one forward first")
    return sum(t.numel() * t.element_size() for t in tensors)


def device_name(device: torch.device | str) -> str:
    """A human-readable name of the hardware behind ``device``.

    CPU: the ``model name`` line of ``/proc/cpuinfo`` (Linux), else ``platform.processor()``,
    else ``platform.machine()``. CUDA: ``torch.cuda.get_device_name``. Other types: the type.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type != "cpu":
        return dev.type
    # /proc/cpuinfo first: on Linux platform.processor() says only "x86_64".
    return _cpuinfo_model_name() or platform.processor() or platform.machine() or "cpu"


def _cpuinfo_model_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return ""


def _stable(times: list[float]) -> bool:
    """Whether the last :data:`STABLE_WINDOW` times lie within the tolerance of their median."""
    if len(times) < STABLE_WINDOW:
        return False
    window = times[-STABLE_WINDOW:]
    median = statistics.median(window)
    return all(abs(t - median) <= STABLE_TOLERANCE * median for t in window)


def _check_counts(
    warmup: int, repeats: int, max_warmup: int, threads: int | None, samples_per_call: int
) -> None:
    if repeats < 1:
        raise UserInputError(f"repeats={repeats}: must be at least 1 (30 recommended)")
    if warmup < 0:
        raise UserInputError(f"warmup={warmup}: must be 0 or more")
    if max_warmup < warmup:
        raise UserInputError(f"max_warmup={max_warmup}: must be at least warmup={warmup}")
    if threads is not None and threads < 1:
        raise UserInputError(f"threads={threads}: must be at least 1, or None to keep the current")
    if samples_per_call < 1:
        raise UserInputError(f"samples_per_call={samples_per_call}: must be at least 1")


def _make_call(model: nn.Module, inputs: Any) -> Callable[[], Any]:
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if isinstance(inputs, tuple):
        args = inputs
        return lambda: model(*args)
    if callable(inputs):
        return inputs
    raise UserInputError(
        f"inputs of type {type(inputs).__name__}: expected a tuple of forward arguments, "
        "a tensor, or a zero-argument callable"
    )


def _resolve_device(
    model: nn.Module, inputs: Any, device: torch.device | str | None
) -> torch.device:
    if device is not None:
        dev = torch.device(device)
    else:
        first = next(iter([*model.parameters(), *model.buffers()]), None)
        if first is None and isinstance(inputs, (tuple, torch.Tensor)):
            items = (inputs,) if isinstance(inputs, torch.Tensor) else inputs
            first = next((a for a in items if isinstance(a, torch.Tensor)), None)
        dev = first.device if first is not None else torch.device("cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"device={str(dev)!r}: CUDA is not available (valid: cpu)")
    return dev
