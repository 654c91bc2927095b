"""Each searcher and ASHA through a real Ray Tune study on a tiny task, its signature asserted.

TPE's later samples concentrate near the best; NSGA-II leaves its first generation and its
Pareto set is the analysis' front over the same runs; ASHA stops some trials before ``max_t``,
and those runs end FINISHED, tagged ``gds.stopped_early``, out of the trials that count.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import ray
from mlflow.tracking import MlflowClient

from analysis.ablation import summarize
from analysis.pareto import pareto_front
from analysis.runs import finished_trials, load_runs
from study import runner
from study import tracking as tr
from study.tracking import TAG_STOPPED_EARLY
from tests.studies import tiny_student, write_study

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module's studies (each would start its own: seconds apiece), shut
    down after them (never `ray stop`: it kills every Ray)."""
    runner.start_ray()
    yield
    ray.shutdown()


@pytest.fixture
def searchers(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The searchers the runner builds (the driver's: Optuna's study lives in them)."""
    made: list[Any] = []
    make = runner.make_search

    def recording(spec: Any) -> Any:
        out = make(spec)
        made.append(out[0])
        return out

    monkeypatch.setattr(runner, "make_search", recording)
    return made


def trial_runs(uri: str, name: str) -> list[Any]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    assert exp is not None
    return client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{tr.TAG_ROLE}` = '{tr.ROLE_TRIAL}'"
    )


def test_tpe_later_samples_concentrate(
    tmp_path: Path, local_ray: None, searchers: list[Any]
) -> None:
    # One dimension, an objective that plainly prefers its low end (fewer parameters for a
    # narrower student, exactly): TPE's 10 random start-up trials, then 10 it chooses.
    path = write_study(
        tmp_path,
        "tpe",
        methods=["none"],
        search={"student.width": {"int": [2, 64]}},
        objectives=[{"metric": "num_params", "mode": "min"}],
        searcher={"algorithm": "tpe", "num_samples": 20, "max_concurrent": 2, "seed": 0},
    )
    outcome = runner.run_study(
        path, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", storage=tmp_path
    )
    assert outcome.complete
    study = searchers[0].searcher._ot_study
    widths = [t.params["student.width"] for t in sorted(study.trials, key=lambda t: t.number)]
    assert len(widths) == 20
    best = min(widths)
    first, second = widths[:10], widths[10:]
    spread = [sum(abs(w - best) for w in half) / len(half) for half in (first, second)]
    assert spread[1] < spread[0] / 2, (widths, spread)


def test_nsga2_leaves_generation_zero_and_its_front_is_the_analysis_front(
    tmp_path: Path, local_ray: None, searchers: list[Any]
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = write_study(
        tmp_path,
        "nsga2",
        methods=["none"],
        search={"student.width": {"int": [2, 32]}, "student.lr": {"loguniform": [1e-3, 0.1]}},
        objectives=[
            {"metric": "val_score", "mode": "max"},
            {"metric": "num_params", "mode": "min"},
        ],
        searcher={
            "algorithm": "nsga2",
            "num_samples": 12,
            "population_size": 4,
            "max_concurrent": 2,
            "seed": 0,
        },
    )
    outcome = runner.run_study(path, tracking_uri=uri, storage=tmp_path)
    assert outcome.complete
    study = searchers[0].searcher._ot_study
    assert study.sampler.population_size == 4
    # NSGA-II records each trial's generation in its system attrs ("NSGAIISampler:generation").
    generation_key = study.sampler._get_generation_key()
    generations = [t.system_attrs.get(generation_key) for t in study.trials]
    assert max(g for g in generations if g is not None) >= 1, generations

    def key(width: Any, lr: Any) -> tuple[int, float]:
        return int(width), round(float(lr), 9)

    optuna_front = {
        key(t.params["student.width"], t.params["student.lr"]) for t in study.best_trials
    }
    summary = summarize(load_runs("nsga2", tracking_uri=uri), by="config_id")
    front = pareto_front(summary, {"val_score_mean": "max", "num_params_mean": "min"})
    analysis_front = {
        key(w, lr) for w, lr in zip(front["student.width"], front["student.lr"], strict=True)
    }
    assert optuna_front == analysis_front


def test_asha_stops_trials_before_max_t_and_they_end_finished_and_tagged(
    tmp_path: Path, local_ray: None
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    max_t = 6
    student = tiny_student(8)  # max_t caps these 8 epochs
    path = write_study(
        tmp_path,
        "asha",
        student=student,
        methods=["none"],
        search={"student.lr": {"loguniform": [1e-4, 0.1]}},
        searcher={"algorithm": "random", "num_samples": 8, "max_concurrent": 2, "seed": 0},
        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2, "max_t": max_t},
    )
    outcome = runner.run_study(path, tracking_uri=uri, storage=tmp_path)
    assert outcome.errors == 0 and not outcome.failed

    client = MlflowClient(uri)
    runs = trial_runs(uri, "asha")
    assert len(runs) == 8
    stopped = []
    for run in runs:
        assert run.info.status == "FINISHED", run.data.tags
        history = client.get_metric_history(run.info.run_id, "train_loss")
        epochs = max(m.step for m in history) + 1
        if run.data.tags.get(TAG_STOPPED_EARLY) == "true":
            stopped.append(run.info.run_id)
            assert epochs < max_t
            assert tr.METRIC_TEST not in run.data.metrics  # never a fully trained result
        else:
            assert epochs == max_t  # max_t honoured: not the student's 8 epochs
            assert math.isfinite(run.data.metrics[tr.METRIC_TEST])
    assert stopped, "ASHA stopped no trial"
    # The study ended (stopped trials are an outcome, not an interruption): FINISHED, read-only.
    assert outcome.stopped_early == len(stopped) and outcome.complete
    assert client.get_run(outcome.parent_run_id).info.status == "FINISHED"
    counted = set(finished_trials(load_runs("asha", tracking_uri=uri))["run_id"])
    assert counted.isdisjoint(stopped) and len(counted) == 8 - len(stopped)

    # A Ctrl-C stops trials the way ASHA does, so they are tagged too; Tune's saved status
    # tells them apart. Stand-in for an interrupted trial: one whose trial id Tune does not
    # list as TERMINATED. It goes back to KILLED, untagged (resume continues it); the others stay.
    interrupted, *others = stopped
    client.set_tag(interrupted, tr.TAG_TRIAL_ID, "interrupted0")
    ctx = runner.read_context("asha", tmp_path)[0]
    runner.settle_stopped(outcome.path, client, ctx)
    back = client.get_run(interrupted)
    assert back.info.status == "KILLED" and TAG_STOPPED_EARLY not in back.data.tags
    for run_id in others:
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags[TAG_STOPPED_EARLY] == "true"


def test_the_nsga2_sampler_pickles_with_a_working_lock() -> None:
    """Ray Tune pickles the searcher when a study starts; Optuna 5's sampler holds a lock."""
    import pickle

    import optuna

    from study.search import PicklableNSGAIISampler

    sampler = pickle.loads(pickle.dumps(PicklableNSGAIISampler(population_size=4, seed=0)))
    study = optuna.create_study(sampler=sampler, directions=["maximize", "minimize"])
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), n_trials=6)
    assert len(study.trials) == 6  # the sampler ran (with its new lock) after the round trip
