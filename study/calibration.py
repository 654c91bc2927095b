"""Latency on a quiet machine: re-measure every student architecture after the study's trials.

Trials measure their student's latency in place, while other trials train beside them on the
same cores or GPU, so identical architectures can differ by tens of percent (seen: 5.9 to 8.3 ms
for one GAT on 2 shared cores). Latency depends on the architecture and the input, not on the
trained weights, so once all trials are done one Ray task (on the trial resources, so on the
same kind of device) times each distinct student architecture, and the teacher, one after the
other with nothing else running. The figures are logged to every run as ``latency_ms_p50``/``p90``
at a later step, so they are the values MLflow reports; the in-trial figures stay in the history
and as ``latency_ms_p50_in_trial``. Runs are tagged ``gds.latency=calibrated``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import ray
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from study import tracking as tr
from study.config import StudySpec, resolve_trial
from study.context import load_study_task, study_latency, trial_device
from study.data.base import io_channels
from study.models import build_model
from study.search import trial_params
from study.teachers import read_checkpoint, teacher_cache_path

TAG_LATENCY = "gds.latency"


def student_key(spec: StudySpec, config: dict[str, Any]) -> str:
    """The student architecture a trial's config builds, as a canonical JSON string."""
    plan = resolve_trial(spec, trial_params(config, spec.seeds))
    return json.dumps({"arch": plan.student.arch, **plan.student.build_kwargs()}, sort_keys=True)


def teacher_model_spec(tracking_uri: str, teacher_run_id: str) -> dict[str, Any]:
    """The ``build_model`` kwargs of the study's teacher, from its checkpoint artifact (the spec
    travels with the weights; the run's ``teacher.*`` params are only text for people).

    The checkpoint is taken from this machine's teacher cache, where the trials put it, else
    downloaded into it."""
    path = teacher_cache_path(teacher_run_id)
    if not path.is_file():
        tr.download_artifact(tracking_uri, teacher_run_id, tr.TEACHER_CHECKPOINT_ARTIFACT, path)
    return dict(read_checkpoint(path)["spec"])


def _measure_all(
    spec: StudySpec, keys: list[str], teacher_spec: dict[str, Any] | None, data_root: str | None
) -> dict[str, dict[str, Any]]:
    """In a Ray task: time each architecture in turn (random weights; timing ignores them).

    Returns, per key (and ``"teacher"``): ``latency_ms_p50``/``p90`` (float), ``device`` (its
    name) and ``threads``.
    """
    device = trial_device(spec.resources.gpu)
    task = load_study_task(spec, data_root)
    out: dict[str, dict[str, Any]] = {}
    models: dict[str, dict[str, Any]] = {key: json.loads(key) for key in keys}
    if teacher_spec is not None:
        models["teacher"] = teacher_spec
    for key, model_spec in models.items():
        # The channels come from the data the model is timed on, whatever the spec says.
        kwargs: dict[str, Any] = {**model_spec, **io_channels(task)}
        model = build_model(**kwargs).to(device)
        lat = study_latency(model, task, spec, device)
        out[key] = {**lat.as_metrics(), "device": lat.device_name, "threads": lat.threads}
    return out


def calibrate_latency(
    spec: StudySpec,
    rows: list[dict[str, Any]],
    client: MlflowClient,
    teacher_run_id: str,
    data_root: str | None,
) -> int:
    """Re-measure and log the latency of every finished trial and the teacher.

    ``rows`` are the trials' final Tune results (with ``config`` and ``mlflow_run_id``); their
    latency entries are updated in place. Returns the number of runs updated.
    """
    finished = [r for r in rows if r.get("mlflow_run_id") and r.get(tr.METRIC_TEST) is not None]
    if not finished:
        return 0
    keys = {r["mlflow_run_id"]: student_key(spec, r["config"]) for r in finished}
    teacher_spec = teacher_model_spec(client.tracking_uri, teacher_run_id)
    remote = ray.remote(_measure_all).options(
        num_cpus=spec.resources.cpu, num_gpus=spec.resources.gpu
    )
    figures = ray.get(remote.remote(spec, sorted(set(keys.values())), teacher_spec, data_root))
    now = int(time.time() * 1000)
    updates = dict(keys)
    if "teacher" in figures:
        updates[teacher_run_id] = "teacher"
    for run_id, key in updates.items():
        run = client.get_run(run_id)
        step = 1 + max(
            (m.step for m in client.get_metric_history(run_id, tr.METRIC_LATENCY_P50)), default=0
        )
        fig = figures[key]
        metrics = [
            Metric(tr.METRIC_LATENCY_P50, fig["latency_ms_p50"], now, step),
            Metric(tr.METRIC_LATENCY_P90, fig["latency_ms_p90"], now, step),
        ]
        if tr.METRIC_LATENCY_P50 in run.data.metrics:
            metrics.append(
                Metric("latency_ms_p50_in_trial", run.data.metrics[tr.METRIC_LATENCY_P50], now, 0)
            )
        tags = [
            RunTag(TAG_LATENCY, "calibrated"),
            RunTag("latency_device", str(fig["device"])),
            RunTag("latency_threads", str(fig["threads"])),
        ]
        client.log_batch(run_id, metrics=metrics, tags=tags)
    for row in finished:
        fig = figures[keys[row["mlflow_run_id"]]]
        row[tr.METRIC_LATENCY_P50], row[tr.METRIC_LATENCY_P90] = (
            fig["latency_ms_p50"],
            fig["latency_ms_p90"],
        )
    return len(updates)
