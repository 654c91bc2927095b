"""Latency on a quiet machine: re-measure every student architecture after the study's trials.

Trials measure their student's latency in place, while other trials train beside them on the
same cores or GPU, so identical architectures can differ by tens of percent (seen: 5.9 to 8.3 ms
for one GAT on 2 shared cores). Latency depends on the architecture and the input, not on the
trained weights, so once all trials are done one Ray task (on the trial resources, so on the
same kind of device) times each distinct student architecture, and the teacher, one after the
other with nothing else running. The figures are logged to every run as ``latency_ms_p50``/``p90``
at a later step, so they are the values MLflow reports; the in-trial figures stay in the history
and as ``latency_ms_p50_in_trial``. Runs are tagged ``gds.latency=calibrated``, and a run so
tagged is never measured or written again (a resumed study, a teacher run another study reuses):
a figure a report has read is not replaced.
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


METRIC_IN_TRIAL = "latency_ms_p50_in_trial"
CALIBRATED = "calibrated"


def is_calibrated(run: Any) -> bool:
    """Whether a run's latency was already calibrated (tag ``gds.latency=calibrated``)."""
    return run.data.tags.get(TAG_LATENCY) == CALIBRATED


def calibrate_latency(
    spec: StudySpec,
    rows: list[dict[str, Any]],
    client: MlflowClient,
    teacher_run_id: str,
    data_root: str | None,
) -> int:
    """Measure and log the latency of every finished trial and the teacher not yet calibrated.

    ``rows`` are the trials' final Tune results (with ``config`` and ``mlflow_run_id``); their
    latency entries are set in place to the run's calibrated figures. Once calibrated, a run is
    never calibrated again (a resumed study, or a teacher run another study reuses, keeps the
    figures a report may have read): its row takes the figures already logged. The new figures
    are logged at a later step beside the in-trial ones, which stay in the history and, once,
    as ``latency_ms_p50_in_trial`` (never rewritten). Returns the number of runs updated.
    """
    finished = [r for r in rows if r.get("mlflow_run_id") and r.get(tr.METRIC_TEST) is not None]
    if not finished:
        return 0
    runs = {r["mlflow_run_id"]: client.get_run(r["mlflow_run_id"]) for r in finished}
    keys = {
        r["mlflow_run_id"]: student_key(spec, r["config"])
        for r in finished
        if not is_calibrated(runs[r["mlflow_run_id"]])
    }
    teacher = client.get_run(teacher_run_id) if teacher_run_id else None
    teacher_due = teacher is not None and not is_calibrated(teacher)
    figures: dict[str, dict[str, Any]] = {}
    if keys or teacher_due:
        teacher_spec = (
            teacher_model_spec(client.tracking_uri, teacher_run_id) if teacher_due else None
        )
        remote = ray.remote(_measure_all).options(
            num_cpus=spec.resources.cpu, num_gpus=spec.resources.gpu
        )
        figures = ray.get(remote.remote(spec, sorted(set(keys.values())), teacher_spec, data_root))
    now = int(time.time() * 1000)
    updates = dict(keys)
    if teacher is not None and "teacher" in figures:
        updates[teacher_run_id] = "teacher"
        runs[teacher_run_id] = teacher
    for run_id, key in updates.items():
        _log_calibration(client, runs[run_id], figures[key], now)
    for row in finished:
        run_id = row["mlflow_run_id"]
        if run_id in keys:
            fig = figures[keys[run_id]]
            p50, p90 = fig["latency_ms_p50"], fig["latency_ms_p90"]
        else:  # calibrated before: the figures already logged
            logged = runs[run_id].data.metrics
            p50 = logged.get(tr.METRIC_LATENCY_P50, row.get(tr.METRIC_LATENCY_P50))
            p90 = logged.get(tr.METRIC_LATENCY_P90, row.get(tr.METRIC_LATENCY_P90))
        row[tr.METRIC_LATENCY_P50], row[tr.METRIC_LATENCY_P90] = p50, p90
    return len(updates)


def _log_calibration(client: MlflowClient, run: Any, fig: dict[str, Any], now: int) -> None:
    """Log one run's calibrated figures at the step after its last latency; keep the in-trial
    figure as ``latency_ms_p50_in_trial`` unless that is already set."""
    run_id = run.info.run_id
    step = 1 + max(
        (m.step for m in client.get_metric_history(run_id, tr.METRIC_LATENCY_P50)), default=0
    )
    metrics = [
        Metric(tr.METRIC_LATENCY_P50, fig["latency_ms_p50"], now, step),
        Metric(tr.METRIC_LATENCY_P90, fig["latency_ms_p90"], now, step),
    ]
    logged = run.data.metrics
    if tr.METRIC_LATENCY_P50 in logged and METRIC_IN_TRIAL not in logged:
        metrics.append(Metric(METRIC_IN_TRIAL, logged[tr.METRIC_LATENCY_P50], now, 0))
    tags = [
        RunTag(TAG_LATENCY, CALIBRATED),
        RunTag("latency_device", str(fig["device"])),
        RunTag("latency_threads", str(fig["threads"])),
    ]
    client.log_batch(run_id, metrics=metrics, tags=tags)
