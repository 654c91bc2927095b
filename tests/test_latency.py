"""Tests for study.latency: no wall-clock assertions; the warm-up rule is driven by a fake clock."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import study.latency as latency
from study.errors import UserInputError
from study.latency import (
    LatencyResult,
    count_parameters,
    device_name,
    measure_latency,
    model_size_bytes,
)
from study.models.base import ModelOutput


class Counting(nn.Module):
    """Counts forward calls and records the mode and grad state each call ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.calls = 0
        self.seen_training: set[bool] = set()
        self.seen_inference: set[bool] = set()

    def forward(self, x: torch.Tensor) -> ModelOutput:
        self.calls += 1
        self.seen_training.add(self.training)
        self.seen_inference.add(torch.is_inference_mode_enabled())
        h = self.lin(x)
        return ModelOutput(logits=h, hidden=[h])


class FakeClock:
    """A clock that a model advances by scripted durations (ms) on each forward call."""

    def __init__(self, durations_ms: list[float]) -> None:
        self.now = 0
        self.durations = list(durations_ms)

    def __call__(self) -> int:
        return self.now

    def advance(self) -> None:
        self.now += int(round(self.durations.pop(0) * 1e6))


class Scripted(nn.Module):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.clock.advance()
        return x


def test_fields_consistent_and_calls_counted() -> None:
    model = Counting()
    res = measure_latency(model, (torch.randn(4, 3),), warmup=2, repeats=7, samples_per_call=4)
    assert isinstance(res, LatencyResult)
    assert res.repeats == 7 and len(res.times_ms) == 7
    assert 2 <= res.warmup_used <= 50
    # Every call of the timed callable is either a warm-up or a repeat, nothing else.
    assert model.calls == res.warmup_used + res.repeats
    assert res.min_ms <= res.p50_ms <= res.p90_ms
    assert res.min_ms == min(res.times_ms)
    assert res.per_sample_p50_ms == pytest.approx(res.p50_ms / 4)
    assert res.std_ms >= 0
    assert res.device_name and res.torch_version == torch.__version__
    assert model.seen_training == {False} and model.seen_inference == {True}


def test_callable_inputs_counted() -> None:
    model = Counting()
    x = torch.randn(2, 3)
    calls = []

    def run() -> ModelOutput:
        calls.append(1)
        return model(x)

    res = measure_latency(model, run, warmup=1, repeats=3, max_warmup=4)
    assert len(calls) == model.calls == res.warmup_used + 3
    assert 1 <= res.warmup_used <= 4


def test_single_tensor_input_and_tensor_output() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    res = measure_latency(model, torch.randn(2, 3), warmup=0, repeats=2)
    assert res.warmup_used == 0 and res.repeats == 2


def test_threads_and_training_restored() -> None:
    before = torch.get_num_threads()
    other = 2 if before != 2 else 1
    torch.set_num_threads(other)
    try:
        model = Counting()
        model.train()
        model.lin.eval()  # mixed modes must come back exactly
        res = measure_latency(model, (torch.randn(2, 3),), warmup=1, repeats=2, threads=1)
        assert res.threads == 1
        assert res.as_tags()["latency_threads"] == "1"
        assert torch.get_num_threads() == other
        assert model.training is True and model.lin.training is False
    finally:
        torch.set_num_threads(before)


def test_threads_none_keeps_current() -> None:
    before = torch.get_num_threads()
    res = measure_latency(nn.Linear(3, 1), (torch.randn(1, 3),), repeats=1, threads=None)
    assert res.threads == before == torch.get_num_threads()


def test_restored_after_error() -> None:
    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    before = torch.get_num_threads()
    other = 2 if before != 2 else 1
    torch.set_num_threads(other)
    try:
        model = Boom().train()
        with pytest.raises(RuntimeError, match="boom"):
            measure_latency(model, (torch.zeros(1),), threads=1)
        assert torch.get_num_threads() == other
        assert model.training is True
    finally:
        torch.set_num_threads(before)


def test_warmup_stops_when_stable(monkeypatch: pytest.MonkeyPatch) -> None:
    # Warm-ups 100, 50, 20, 12, 10, 10.5: the window (12, 10, 10.5) has median 10.5 and 12 is
    # 14% off, so not yet; (10, 10.5, 10.2) is within 10% -> 7 warm-ups. Then 30 repeats 1..30.
    warm = [100, 50, 20, 12, 10, 10.5, 10.2]
    timed = list(range(1, 31))
    clock = FakeClock(warm + timed)
    monkeypatch.setattr(latency, "_clock", clock)
    model = Scripted(clock)
    res = measure_latency(model, (torch.zeros(1),), warmup=2, max_warmup=50)
    assert res.warmup_used == 7
    assert model.calls == 37
    arr = np.arange(1, 31, dtype=float)
    # Linear interpolation: rank q*(n-1) between sorted values.
    assert res.p50_ms == pytest.approx(15.5)
    assert res.p90_ms == pytest.approx(1 + 0.9 * 29)
    assert res.mean_ms == pytest.approx(arr.mean())
    assert res.std_ms == pytest.approx(np.sqrt(((arr - arr.mean()) ** 2).sum() / 29))
    assert res.min_ms == pytest.approx(1.0)
    assert res.as_metrics() == {
        "latency_ms_p50": res.p50_ms,
        "latency_ms_p90": res.p90_ms,
        "latency_ms_mean": res.mean_ms,
        "latency_ms_std": res.std_ms,
        "latency_ms_min": res.min_ms,
        "latency_ms_per_sample_p50": res.per_sample_p50_ms,
        "latency_ms_p50_ci_low": 10.0,  # order statistics 10 and 21 of 30 (median_ci)
        "latency_ms_p50_ci_high": 21.0,
    }
    assert set(res.as_metrics(prefix="lat")) == {
        "lat_p50",
        "lat_p90",
        "lat_mean",
        "lat_std",
        "lat_min",
        "lat_per_sample_p50",
        "lat_p50_ci_low",
        "lat_p50_ci_high",
    }


def test_warmup_capped_when_never_stable(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock([10, 30] * 6 + [1, 2, 3])
    monkeypatch.setattr(latency, "_clock", clock)
    model = Scripted(clock)
    res = measure_latency(model, (torch.zeros(1),), warmup=3, repeats=3, max_warmup=12)
    assert res.warmup_used == 12
    assert res.times_ms == pytest.approx((1.0, 2.0, 3.0))
    assert res.std_ms == pytest.approx(1.0)


def test_minimum_warmup_honoured_even_if_stable(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock([5.0] * 8 + [5.0])
    monkeypatch.setattr(latency, "_clock", clock)
    res = measure_latency(Scripted(clock), (torch.zeros(1),), warmup=8, repeats=1)
    assert res.warmup_used == 8
    assert res.std_ms == 0.0 and res.p50_ms == res.p90_ms == pytest.approx(5.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"repeats": 0},
        {"repeats": -3},
        {"warmup": -1},
        {"warmup": 10, "max_warmup": 5},
        {"threads": 0},
        {"samples_per_call": 0},
    ],
)
def test_bad_counts_raise(kwargs: dict) -> None:
    model = Counting()
    with pytest.raises(ValueError):
        measure_latency(model, (torch.zeros(1, 3),), **kwargs)
    assert model.calls == 0


def test_bad_inputs_raise() -> None:
    with pytest.raises(UserInputError, match="inputs"):
        measure_latency(nn.Linear(3, 1), [torch.zeros(1, 3)])  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_cuda_raises() -> None:
    with pytest.raises(UserInputError, match="CUDA"):
        measure_latency(nn.Linear(3, 1), (torch.zeros(1, 3),), device="cuda")


def test_count_parameters_and_size() -> None:
    lin = nn.Linear(3, 4)
    assert count_parameters(lin) == 16
    lin.bias.requires_grad_(False)
    assert count_parameters(lin, trainable_only=True) == 12
    assert count_parameters(lin) == 16
    # Shared parameters counted once.
    shared = nn.Sequential(lin, lin)
    assert count_parameters(shared) == 16
    bn = nn.BatchNorm1d(5)  # 10 params + running_mean, running_var (5 floats) + num_batches_tracked
    assert model_size_bytes(bn) == 10 * 4 + 10 * 4 + 8
    assert model_size_bytes(lin.double()) == 16 * 8


def test_lazy_module_rejected() -> None:
    lazy = nn.LazyLinear(4)
    with pytest.raises(UserInputError, match="forward"):
        count_parameters(lazy)
    with pytest.raises(UserInputError, match="forward"):
        model_size_bytes(lazy)


def test_device_name_cpu() -> None:
    name = device_name("cpu")
    assert isinstance(name, str) and name.strip()


@pytest.mark.parametrize("n", [6, 7, 10, 30, 31, 100, 301, 1500])
def test_median_ci_is_the_narrowest_symmetric_order_statistic_interval(n: int) -> None:
    # Independent: scipy's binomial. [x_(l), x_(n-l+1)] covers the median with probability
    # P(l <= B <= n - l) for B ~ Binomial(n, 1/2); l is the largest with coverage >= 95%.
    from scipy.stats import binom

    times = [float(i) for i in range(1, n + 1)]
    low, high = latency.median_ci(list(reversed(times)))  # order of the calls does not matter
    rank = int(low)
    assert high == n - rank + 1
    coverage = binom.cdf(n - rank, n, 0.5) - binom.cdf(rank - 1, n, 0.5)
    assert coverage >= 0.95
    narrower = binom.cdf(n - rank - 1, n, 0.5) - binom.cdf(rank, n, 0.5)
    assert narrower < 0.95


def test_median_ci_of_too_few_calls_is_the_range() -> None:
    assert latency.median_ci([3.0, 1.0, 2.0]) == (1.0, 3.0)
    with pytest.raises(UserInputError):
        latency.median_ci([])


def test_until_stable_stops_after_one_round_when_tight(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock([10.0] * 5 + [10.0 + 0.01 * (i % 3) for i in range(300)])
    monkeypatch.setattr(latency, "_clock", clock)
    model = Scripted(clock)
    res = latency.measure_until_stable(model, (torch.zeros(1),), warmup=5, repeats=30)
    assert res.stable and res.repeats == 30 and model.calls == 35
    assert res.p50_ci_low_ms >= 0.97 * res.p50_ms and res.p50_ci_high_ms <= 1.03 * res.p50_ms


def test_until_stable_adds_rounds_then_marks_unstable(monkeypatch: pytest.MonkeyPatch) -> None:
    # Calls alternate 5 and 15 ms: the median's CI spans both values however many calls.
    clock = FakeClock([10.0] * 5 + [5.0, 15.0] * 100)
    monkeypatch.setattr(latency, "_clock", clock)
    model = Scripted(clock)
    res = latency.measure_until_stable(
        model, (torch.zeros(1),), warmup=5, repeats=30, max_repeats=90, max_seconds=1e6
    )
    assert not res.stable
    assert res.repeats == 90 and len(res.times_ms) == 90 and model.calls == 5 + 90
    assert res.warmup_used == 5  # warm-up only before the first round
    assert (res.p50_ci_low_ms, res.p50_ci_high_ms) == (5.0, 15.0)


def test_until_stable_converges_when_more_calls_narrow_the_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 30 calls spread 9..11 ms are too wide; later calls all 10 ms pull the CI onto 10.
    first = [9.0 + 2.0 * i / 29 for i in range(30)]
    clock = FakeClock([10.0] * 5 + first + [10.0] * 270)
    monkeypatch.setattr(latency, "_clock", clock)
    res = latency.measure_until_stable(
        Scripted(clock), (torch.zeros(1),), warmup=5, repeats=30, max_seconds=1e6
    )
    assert res.stable and 30 < res.repeats < 300 and res.repeats % 30 == 0


def test_until_stable_stops_at_the_time_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock([10.0] * 5 + [5.0, 15.0] * 150)
    monkeypatch.setattr(latency, "_clock", clock)
    res = latency.measure_until_stable(
        Scripted(clock), (torch.zeros(1),), warmup=5, repeats=30, max_seconds=0.5
    )
    # 30 calls of 10 ms on average are 0.3 s; the second round passes 0.5 s, no third.
    assert res.repeats == 60 and not res.stable


def test_logged_figure_reads_back() -> None:
    res = measure_latency(Counting(), (torch.zeros(4, 3),), warmup=1, repeats=8)
    back = LatencyResult.from_logged(res.as_metrics(), res.as_tags())
    assert back.p50_ms == res.p50_ms and back.p90_ms == res.p90_ms
    assert (back.p50_ci_low_ms, back.p50_ci_high_ms) == (res.p50_ci_low_ms, res.p50_ci_high_ms)
    assert (back.repeats, back.threads, back.stable, back.quiet) == (8, res.threads, True, True)
