"""Fill a real MLflow store with a study of known runs, in the layout of :mod:`study.tracking`.

Used by the analysis tests (and reusable by any test that needs a study to read back)::

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ids = fill_study(uri, "demo", [
        {"method": "lsp", "seed": 0, "params": {"lsp.lambda": 100.0, "lsp.kernel": "rbf"},
         "metrics": {"test_score": 0.9, "latency_ms_p50": 3.0, "num_params": 1000},
         "history": {"train_loss": [1.0, 0.5]}},
        {"method": "kd", "seed": 1, "status": "FAILED"},
    ])

Each trial dict may hold: ``method`` (required), ``dataset`` (default ``"ppi"``), ``seed``
(default 0), ``params`` (hyperparameters without method and seed; logged as text with
``method`` and ``seed`` added, by :func:`study.tracking.encode_param` as the trials log them, or
by ``fill_study(..., encode=str)`` as runs logged before it did), ``metrics`` (final metrics),
``history`` (key -> list of per-epoch values, step = index), ``status`` (``FINISHED`` default,
``FAILED``, ``KILLED`` or ``RUNNING``), ``config_id`` (default: a hash of dataset, method and
params, i.e. everything but the seed), ``device`` (default ``"cpu"``), ``student_arch``,
``teacher`` (index into ``teachers``, default: the teacher of the trial's dataset), ``run_name``,
``class_table`` (the per-class table, ``{column: values}`` as ``study.per_class`` gives it).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from study.tracking import (
    CLASS_TABLE_ARTIFACT,
    ROLE_STUDY,
    ROLE_TEACHER,
    ROLE_TRIAL,
    TAG_CONFIG_ID,
    TAG_DATASET,
    TAG_DEVICE,
    TAG_METHOD,
    TAG_PARENT,
    TAG_ROLE,
    TAG_SEED,
    TAG_STUDENT_ARCH,
    TAG_STUDY,
    TAG_TEACHER_HASH,
    TAG_TEACHER_RUN,
    encode_param,
)

DEFAULT_TEACHER_METRICS = {"test_score": 0.976, "num_params": 3_640_000.0, "latency_ms_p50": 8.72}


def config_id_of(dataset: str, method: str, params: dict[str, Any]) -> str:
    """The configuration hash the fixture gives a trial: everything but the seed."""
    blob = json.dumps({"dataset": dataset, "method": method, **params}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def artifact_root(tracking_uri: str) -> str | None:
    """An artifact folder beside a sqlite store's file (``None`` for other stores).

    Without one, MLflow puts a sqlite store's artifacts in ``./mlruns`` of the current folder,
    which in a test run is the checkout.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(unquote(tracking_uri[len("sqlite:///") :].split("?", 1)[0]))
    return (db.parent / f"{db.stem}-artifacts").absolute().as_uri()


def _log(
    client: MlflowClient,
    run_id: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    history: dict[str, list[float]],
    encode: Callable[[Any], str],
) -> None:
    now = int(time.time() * 1000)
    ms = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
    for key, values in history.items():
        ms += [Metric(key, float(v), now + i, i) for i, v in enumerate(values)]
    ps = [Param(k, encode(v)) for k, v in params.items()]
    client.log_batch(run_id, metrics=ms, params=ps)


def fill_study(
    tracking_uri: str,
    study: str,
    trials: list[dict[str, Any]],
    *,
    teachers: list[dict[str, Any]] | None = None,
    encode: Callable[[Any], str] = encode_param,
) -> dict[str, Any]:
    """Create (or extend) experiment ``study``: a parent run, teacher runs and trial child runs.

    Args:
        tracking_uri: Where to write, e.g. ``f"sqlite:///{tmp_path}/mlflow.db"``.
        study: Study (experiment) name.
        trials: One dict per trial run (keys in the module docstring).
        teachers: Teacher runs, dicts with ``dataset``, ``metrics``, ``params``, ``hash``,
            ``status``; default one teacher per dataset of the trials with
            :data:`DEFAULT_TEACHER_METRICS`.
        encode: How params become text: :func:`study.tracking.encode_param` (default), or
            ``str`` for runs as logged before it.

    Returns:
        ``{"experiment_id", "parent_run_id", "teacher_run_ids": [...],
        "trial_run_ids": [...], "config_ids": [...]}``, lists aligned with the inputs.
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(study)
    if exp is not None:
        exp_id = exp.experiment_id
    else:
        exp_id = client.create_experiment(study, artifact_location=artifact_root(tracking_uri))
    parent = client.create_run(
        exp_id, run_name=study, tags={TAG_ROLE: ROLE_STUDY, TAG_STUDY: study}
    ).info.run_id

    if teachers is None:
        datasets = list(dict.fromkeys(t.get("dataset", "ppi") for t in trials))
        teachers = [{"dataset": d, "metrics": dict(DEFAULT_TEACHER_METRICS)} for d in datasets]
    teacher_ids: list[str] = []
    for i, t in enumerate(teachers):
        thash = t.get("hash", f"teacher{i}")
        run = client.create_run(
            exp_id,
            run_name=f"teacher-{thash}",
            tags={
                TAG_ROLE: ROLE_TEACHER,
                TAG_STUDY: study,
                TAG_PARENT: parent,
                TAG_DATASET: t.get("dataset", "ppi"),
                TAG_DEVICE: t.get("device", "cpu"),
                TAG_TEACHER_HASH: thash,
            },
        )
        _log(client, run.info.run_id, t.get("params", {}), t.get("metrics", {}), {}, encode)
        client.set_terminated(run.info.run_id, t.get("status", "FINISHED"))
        teacher_ids.append(run.info.run_id)
    teacher_of = {
        t.get("dataset", "ppi"): rid for t, rid in zip(teachers, teacher_ids, strict=True)
    }

    trial_ids: list[str] = []
    config_ids: list[str] = []
    for i, t in enumerate(trials):
        method = t["method"]
        dataset = t.get("dataset", "ppi")
        seed = int(t.get("seed", 0))
        params = dict(t.get("params", {}))
        config_id = t.get("config_id") or config_id_of(dataset, method, params)
        teacher = teacher_ids[t["teacher"]] if "teacher" in t else teacher_of.get(dataset, "")
        run = client.create_run(
            exp_id,
            run_name=t.get("run_name", f"{method}-{i}"),
            tags={
                TAG_ROLE: ROLE_TRIAL,
                TAG_STUDY: study,
                TAG_PARENT: parent,
                TAG_METHOD: method,
                TAG_DATASET: dataset,
                TAG_SEED: str(seed),
                TAG_CONFIG_ID: config_id,
                TAG_TEACHER_RUN: teacher,
                TAG_DEVICE: t.get("device", "cpu"),
                TAG_STUDENT_ARCH: t.get("student_arch", "student"),
            },
        )
        logged = {"method": method, "seed": seed, **params}
        metrics, history = t.get("metrics", {}), t.get("history", {})
        _log(client, run.info.run_id, logged, metrics, history, encode)
        if "class_table" in t:  # as study.trial logs it: {column: values}
            client.log_table(
                run.info.run_id, data=t["class_table"], artifact_file=CLASS_TABLE_ARTIFACT
            )
        status = t.get("status", "FINISHED")
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status)
        trial_ids.append(run.info.run_id)
        config_ids.append(config_id)
    client.set_terminated(parent, "FINISHED")
    return {
        "experiment_id": exp_id,
        "parent_run_id": parent,
        "teacher_run_ids": teacher_ids,
        "trial_run_ids": trial_ids,
        "config_ids": config_ids,
    }


def example_trials(dataset: str = "ppi") -> list[dict[str, Any]]:
    """A small study with hand-checkable numbers (scores and latencies exact in binary).

    Configurations (config_id = ``cfgA`` ...), finished unless noted:

    - A ``lsp`` rbf lambda=100, seeds 0,1,2: test .8125/.875/.9375 (mean .875, std .0625),
      val .75/.8125/.875 (mean .8125), latency 2.5/3.0/3.5 (mean 3.0, std .5), 1000 params.
    - B ``lsp`` poly lambda=10, seed 0: test .9375, val .875, latency 4.0, 1000 params.
    - C ``kd`` T=4, seeds 0,1: test .875 twice, val .5, latency 3.0 twice (ties A), 1000 params.
    - D ``none``, seed 0: test .75, val .75, latency 2.0, 500 params.
    - E ``fitnet``, seed 0: test .8125, latency 3.5, 1200 params (dominated by A).
    - F ``at``, seed 0: test .9375, latency 4.5, 800 params (dominated by B in 2-D, not in 3-D).
    - G ``lsp`` rbf lambda=1: FAILED (test 1.0, latency 1.0), RUNNING (nothing), KILLED (test
      1.0, latency .5): none of them counts.

    Front on (test max, latency min): D, A, C, B. Adding params (min): D, A, C, B, F.

    Param types: ``lsp.lambda`` float (NaN off LSP), ``student.width`` int, ``student.dropout``
    0 and 0.5 (float), ``student.residual`` True/False/missing (boolean), ``at.p`` int/missing
    (Int64), ``kd.alpha`` None on LSP and 0.5 on KD (float, NaN), ``lsp.kernel`` str.
    """

    def trial(cfg, method, seed, params, test, val, lat, n_params, **extra):
        metrics = {
            "test_score": test,
            "val_score": val,
            "latency_ms_p50": lat,
            "latency_ms_p90": None if lat is None else lat + 1.0,
            "num_params": n_params,
            "train_seconds": None if test is None else 10.0,
        }
        metrics = {k: v for k, v in metrics.items() if v is not None}
        return {
            "method": method,
            "dataset": dataset,
            "seed": seed,
            "config_id": cfg,
            "params": params,
            "metrics": metrics,
            **extra,
        }

    rbf100 = {
        "lsp.lambda": 100.0,
        "lsp.kernel": "rbf",
        "student.width": 16,
        "kd.alpha": None,
        "student.residual": True,
    }
    poly10 = {
        "lsp.lambda": 10.0,
        "lsp.kernel": "poly",
        "student.width": 16,
        "kd.alpha": None,
        "student.residual": False,
    }
    kd = {"kd.temperature": 4.0, "kd.alpha": 0.5, "student.width": 16}
    rbf1 = {"lsp.lambda": 1.0, "lsp.kernel": "rbf", "student.width": 16}
    curve = {"epoch_val_score": [0.5, 0.7, 0.8], "train_loss": [1.0, 0.6, 0.4]}
    return [
        trial("cfgA", "lsp", 0, rbf100, 0.8125, 0.75, 2.5, 1000, history=curve),
        trial("cfgA", "lsp", 1, rbf100, 0.875, 0.8125, 3.0, 1000, history=curve),
        trial("cfgA", "lsp", 2, rbf100, 0.9375, 0.875, 3.5, 1000, history=curve),
        trial("cfgB", "lsp", 0, poly10, 0.9375, 0.875, 4.0, 1000, history=curve),
        trial("cfgC", "kd", 0, kd, 0.875, 0.5, 3.0, 1000, history=curve),
        trial("cfgC", "kd", 1, kd, 0.875, 0.5, 3.0, 1000),
        trial(
            "cfgD",
            "none",
            0,
            {"student.width": 8, "student.dropout": 0},
            0.75,
            0.75,
            2.0,
            500,
            history=curve,
        ),
        trial(
            "cfgE",
            "fitnet",
            0,
            {"student.width": 16, "student.dropout": 0.5},
            0.8125,
            0.8,
            3.5,
            1200,
        ),
        trial("cfgF", "at", 0, {"student.width": 16, "at.p": 1}, 0.9375, 0.7, 4.5, 800),
        trial("cfgG", "lsp", 0, rbf1, 1.0, 1.0, 1.0, 100, status="FAILED"),
        trial("cfgG", "lsp", 1, rbf1, None, None, None, None, status="RUNNING"),
        trial("cfgG", "lsp", 2, rbf1, 1.0, 1.0, 0.5, 100, status="KILLED"),
    ]
