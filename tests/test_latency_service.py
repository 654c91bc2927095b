"""study.latency_service: one figure per signature (the cache's claims), signatures that tell
architectures apart, and a resumed study's cache seeded from what its trials logged. The real
study path (four trials, one measured, three cached) is in tests/test_runner.py."""

from __future__ import annotations

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
    FigureCache,
    logged_figures,
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
