"""study.latency_service: one figure per signature (the cache's claims), signatures that tell
architectures apart, and a resumed study's cache seeded from what its trials logged. The real
study path (four trials, one measured, three cached) is in tests/test_runner.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from study import tracking as tr
from study.config import load_study_spec
from study.context import load_study_task
from study.data.base import io_channels
from study.latency import measure_latency
from study.latency_service import (
    CLAIM_TIMEOUT,
    HIT,
    MEASURE,
    WAIT,
    Figure,
    FigureCache,
    logged_figures,
    measure_figure,
    median_window,
    signature,
)
from study.models import build_model
from tests.mlflow_fixtures import fill_study
from tests.studies import write_study


def _figure(p50: float):  # type: ignore[no-untyped-def]
    res = measure_latency(torch.nn.Identity(), (torch.zeros(1),), warmup=0, repeats=3)
    from dataclasses import replace

    return replace(res, p50_ms=p50)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_trial_measures_others_wait_then_read_the_same_figure() -> None:
    clock = Clock()
    cache = FigureCache({}, clock=clock)
    assert cache.claim("a") == (MEASURE, None)
    assert cache.claim("a") == (WAIT, None)  # the first is measuring
    assert cache.claim("b") == (MEASURE, None)  # another architecture: its own measurement
    fig = _figure(5.0)
    assert cache.put("a", fig) is fig
    assert cache.claim("a") == (HIT, fig)
    assert cache.put("a", _figure(9.0)) is fig  # the first figure stays
    cache.release("b")  # its measurement failed: the next asker measures
    assert cache.claim("b") == (MEASURE, None)


def test_a_claim_whose_trial_died_is_taken_over() -> None:
    clock = Clock()
    cache = FigureCache({}, clock=clock)
    assert cache.claim("a")[0] == MEASURE
    clock.now = CLAIM_TIMEOUT - 1
    assert cache.claim("a")[0] == WAIT
    clock.now = CLAIM_TIMEOUT + 1
    assert cache.claim("a")[0] == MEASURE


def test_signature_tells_architectures_and_inputs_apart(tmp_path: Path) -> None:
    spec = load_study_spec(write_study(tmp_path, "sig"))
    task = load_study_task(spec, None)
    channels = io_channels(task)
    small = build_model("gcn", width=8, depth=2, **channels)
    small_again = build_model("gcn", width=8, depth=2, **channels)
    wide = build_model("gcn", width=16, depth=2, **channels)
    assert signature(small, task, spec, "cpu") == signature(small_again, task, spec, "cpu")
    assert signature(small, task, spec, "cpu") != signature(wide, task, spec, "cpu")
    slower = type(spec)(**{**spec.__dict__, "latency": type(spec.latency)(threads=2)})
    assert signature(small, task, spec, "cpu") != signature(small, task, slower, "cpu")


def test_median_window_keeps_the_middle_windows_figure_and_medians_the_rest() -> None:
    windows = [
        Figure(replace(_figure(p50), stable=stable, quiet=quiet), {"serve": serve, "only1": 1.0})
        for p50, serve, stable, quiet in [
            (3.0, 10.0, True, True),
            (1.0, 30.0, True, False),
            (2.0, 20.0, False, True),
        ]
    ]
    combined = median_window(windows)
    assert combined.latency.p50_ms == 2.0  # the middle window's own figure, CI included
    assert combined.latency.p50_ci_low_ms == windows[2].latency.p50_ci_low_ms
    assert combined.extra_metrics["serve"] == 20.0
    assert "only1" in combined.extra_metrics
    assert combined.extra_metrics[tr.METRIC_LATENCY_WINDOW_SPREAD] == (3.0 - 1.0) / 2.0
    assert combined.extra_tags[tr.TAG_LATENCY_WINDOWS] == "3,1,2"
    assert not combined.latency.quiet  # one window was not quiet
    assert not combined.latency.stable  # one window did not reach its tolerance
    even = median_window(windows[:2])  # the lower middle of two
    assert even.latency.p50_ms == 1.0


def test_a_figure_is_timed_in_the_studys_number_of_windows(tmp_path: Path) -> None:
    spec = load_study_spec(write_study(tmp_path, "windows"))
    timing = replace(spec.latency, windows=4, window_gap=0.0, quiet=False, onnx=False)
    spec = replace(spec, latency=timing)
    task = load_study_task(spec, None)
    model = build_model("gcn", width=8, depth=2, **io_channels(task))
    figure = measure_figure(model, task, spec, "cpu")
    p50s = [float(p) for p in figure.extra_tags[tr.TAG_LATENCY_WINDOWS].split(",")]
    assert len(p50s) == 4
    # the second of four (the lower middle), logged to 4 significant digits
    assert abs(sorted(p50s)[1] - figure.latency.p50_ms) / figure.latency.p50_ms < 1e-3
    assert figure.metrics()[tr.METRIC_LATENCY_WINDOW_SPREAD] >= 0
    one = replace(spec, latency=replace(timing, windows=1))
    assert signature(model, task, one, "cpu") != signature(model, task, spec, "cpu")


def test_resumed_study_is_seeded_with_its_logged_figures(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    fig = _figure(7.5)
    metrics = {"val_score": 0.5, "test_score": 0.5, **fig.as_metrics()}
    ids = fill_study(
        uri,
        "seeded",
        [
            {"method": "none", "seed": 0, "metrics": metrics},
            {"method": "none", "seed": 1, "metrics": {"val_score": 0.4}},  # no figure
        ],
    )
    client = MlflowClient(uri)
    done, _ = ids["trial_run_ids"]
    client.set_tag(done, tr.TAG_LATENCY_SIGNATURE, "sig-a")
    for key, value in fig.as_tags().items():
        client.set_tag(done, key, value)
    seeded = logged_figures(client, ids["experiment_id"], ids["parent_run_id"])
    assert set(seeded) == {"sig-a"}
    assert seeded["sig-a"].latency.p50_ms == 7.5
    assert seeded["sig-a"].latency.p50_ci_high_ms == fig.p50_ci_high_ms
    assert seeded["sig-a"].metrics()[tr.METRIC_LATENCY_P50] == 7.5
