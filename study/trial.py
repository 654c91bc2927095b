"""The one Ray Tune trainable: config -> teacher -> student -> metrics, logged to MLflow.

Everything below this module is plain PyTorch; this is where Ray and MLflow meet it. A trial
finds (or, after a resume, continues) its own MLflow child run by the tag ``gds.trial_id``, so an
interrupted study ends with exactly one run per trial and none left RUNNING.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray import tune
from torch import nn

from study import tracking as tr
from study.config import StudySpec, TrialPlan, resolve_trial
from study.context import (
    StudyContext,
    latency_input,
    load_study_task,
    study_latency,
    trial_device,
)
from study.data.base import Task, io_channels
from study.export import export_student
from study.latency import LatencyResult, count_parameters
from study.models import build_model
from study.search import trial_params
from study.teachers import load_teacher, teacher_cache_path
from study.train import TrainResult, distill_student, seed_everything, with_device

SNAPSHOT_FILE = "trial_state.pt"
METRIC_FLUSH_SECONDS = 5.0  # per-epoch MLflow metrics are sent in batches this often
TUNE_REPORT_SECONDS = 1.0  # without a scheduler, progress reaches Tune at most this often


def fetch_teacher(ctx: StudyContext, task: Task) -> nn.Module:
    """The study's teacher: from this machine's cache, else downloaded from its MLflow run."""
    path = teacher_cache_path(ctx.teacher_run_id)
    if not path.is_file():
        tr.download_artifact(
            ctx.tracking_uri, ctx.teacher_run_id, tr.TEACHER_CHECKPOINT_ARTIFACT, path
        )
    model, _ = load_teacher(path, **io_channels(task))
    return model


def _find_or_start_run(
    client: MlflowClient,
    ctx: StudyContext,
    trial_id: str,
    plan: TrialPlan,
    device: str,
    trial_name: str,
) -> str:
    found = client.search_runs(
        [ctx.experiment_id],
        filter_string=(
            f"tags.`{tr.TAG_TRIAL_ID}` = '{trial_id}' "
            f"and tags.`{tr.TAG_PARENT}` = '{ctx.parent_run_id}'"
        ),
        max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    tags = {
        tr.TAG_ROLE: tr.ROLE_TRIAL,
        tr.TAG_PARENT: ctx.parent_run_id,
        tr.TAG_TRIAL_ID: trial_id,
        tr.TAG_STUDY: ctx.spec.name,
        tr.TAG_METHOD: plan.method,
        tr.TAG_DATASET: ctx.spec.dataset.label,
        tr.TAG_SEED: str(plan.seed),
        tr.TAG_CONFIG_ID: plan.config_id,
        tr.TAG_TEACHER_RUN: ctx.teacher_run_id,
        tr.TAG_DEVICE: device,
        tr.TAG_STUDENT_ARCH: plan.student.label,
        tr.TAG_NODE: ray.get_runtime_context().get_node_id(),
    }
    run = client.create_run(ctx.experiment_id, run_name=trial_name, tags=tags)
    run_id = run.info.run_id
    client.log_batch(
        run_id, params=[Param(k, tr.encode_param(v)) for k, v in sorted(plan.params.items())]
    )
    return run_id


def _resume_state() -> dict[str, Any] | None:
    """The training snapshot of this trial's last Tune checkpoint, if it is being resumed."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as ckpt_dir:
        state: dict[str, Any] = torch.load(
            Path(ckpt_dir) / SNAPSHOT_FILE, map_location="cpu", weights_only=True
        )
    return state


class EpochReporter:
    """The ``on_epoch`` callback of a trial: per-epoch metrics to MLflow in batches, progress to
    Tune, and a checkpoint every ``checkpoint_every`` epochs but not within
    ``checkpoint_min_seconds`` of the last one.

    MLflow calls cost milliseconds each, so epochs go in batches (every few seconds, before each
    checkpoint, and at the end). A scheduler compares trials epoch by epoch; without one, Tune
    hears of progress at most every :data:`TUNE_REPORT_SECONDS`.
    """

    def __init__(self, client: MlflowClient, run_id: str, spec: StudySpec, best_val: float) -> None:
        self.client, self.run_id = client, run_id
        self.policy = spec.fault_tolerance
        self.report_every_epoch = spec.scheduler is not None
        self.best_val = best_val
        self.pending: list[Metric] = []
        now = time.monotonic()
        self.last = {"checkpoint": now, "flush": now, "report": 0.0}

    def flush(self) -> None:
        """Send the metrics not yet logged."""
        if self.pending:
            self.client.log_batch(self.run_id, metrics=list(self.pending))
            self.pending.clear()
        self.last["flush"] = time.monotonic()

    def __call__(
        self, epoch: int, record: dict[str, float], snapshot: Callable[[], dict[str, Any]]
    ) -> None:
        now_ms, now = int(time.time() * 1000), time.monotonic()
        self.pending.extend(Metric(k, float(v), now_ms, epoch) for k, v in record.items())
        self.best_val = max(self.best_val, record.get("epoch_val_score", -float("inf")))
        report = {"epoch": epoch, tr.METRIC_VAL: self.best_val, **record}
        due = (epoch + 1) % self.policy.checkpoint_every == 0
        checkpoint = due and now - self.last["checkpoint"] >= self.policy.checkpoint_min_seconds
        if (
            checkpoint
            or now - self.last["flush"] >= METRIC_FLUSH_SECONDS
            or len(self.pending) >= 900
        ):
            self.flush()
        if checkpoint:
            self.last["checkpoint"] = self.last["report"] = now
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(snapshot(), Path(tmp) / SNAPSHOT_FILE)
                tune.report(report, checkpoint=tune.Checkpoint.from_directory(tmp))
        elif self.report_every_epoch or now - self.last["report"] >= TUNE_REPORT_SECONDS:
            self.last["report"] = now
            tune.report(report)


def final_metrics(result: TrainResult, lat: LatencyResult) -> dict[str, float]:
    """What a finished trial logs once: scores, latency, size, training time, split metrics."""
    return {
        tr.METRIC_VAL: result.val_score,
        tr.METRIC_TEST: result.test_score,
        tr.METRIC_LATENCY_P50: lat.p50_ms,
        tr.METRIC_LATENCY_P90: lat.p90_ms,
        tr.METRIC_PARAMS: float(count_parameters(result.model)),
        tr.METRIC_TRAIN_SECONDS: result.train_seconds,
        **{f"test_{k}": v for k, v in result.test_metrics.items() if k != "score"},
    }


def _log_student(
    client: MlflowClient,
    run_id: str,
    spec: StudySpec,
    plan: TrialPlan,
    result: TrainResult,
    task: Task,
) -> None:
    """Export the trained student (study.export's layout) under the run's ``student/``."""
    metadata = {
        "study": spec.name,
        "dataset": spec.dataset.label,
        "config_id": plan.config_id,
        "params": plan.params,
        "val_score": result.val_score,
        "test_score": result.test_score,
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_student(
            result.model,
            Path(tmp) / "student",
            metadata=metadata,
            example_inputs=latency_input(task),
        )
        client.log_artifacts(run_id, str(folder), artifact_path=tr.STUDENT_ARTIFACT_DIR)


def run_trial(config: dict[str, Any], ctx: StudyContext, task: Task | None = None) -> None:
    """Ray Tune function trainable: one (configuration, seed) of the study; ``task`` is the
    study's dataset as the driver loaded it (else it is loaded here)."""
    spec = ctx.spec
    plan = resolve_trial(spec, trial_params(config, spec.seeds))
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    device = trial_device(spec.resources.gpu)
    if task is None:
        task = load_study_task(spec, ctx.data_root)
    teacher = fetch_teacher(ctx, task)

    tune_ctx = tune.get_context()
    client = tr.open_store(ctx.tracking_uri)
    run_id = _find_or_start_run(
        client, ctx, tune_ctx.get_trial_id(), plan, device, tune_ctx.get_trial_name()
    )
    resume = _resume_state()
    status = "FAILED"
    try:
        seed_everything(plan.seed)  # the seed fixes the initial weights too
        student = build_model(plan.student.arch, **plan.student.build_kwargs(), **io_channels(task))
        reporter = EpochReporter(
            client, run_id, spec, -float("inf") if resume is None else resume["best_val"]
        )
        result = distill_student(
            student,
            teacher,
            task,
            with_device(plan.student_train, device),
            plan.distill,
            on_epoch=reporter,
            resume=resume,
        )
        reporter.flush()
        lat = study_latency(result.model, task, spec, device)
        final = final_metrics(result, lat)
        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, result.epochs_run) for k, v in final.items()],
            tags=[RunTag(k, str(v)) for k, v in lat.as_tags().items()],
        )
        _log_student(client, run_id, spec, plan, result, task)
        status = "FINISHED"
        report = {"epoch": result.epochs_run, **final, "config_id": plan.config_id}
        tune.report({**report, "mlflow_run_id": run_id})
    finally:
        client.set_terminated(run_id, status=status)
