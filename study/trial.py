"""The one Ray Tune trainable: config -> teacher -> student -> metrics, logged to MLflow.

Everything below this module is plain PyTorch; this is where Ray and MLflow meet it. A trial
finds (or, after a resume, continues) its own MLflow child run by the tag ``gds.trial_id``, so an
interrupted study ends with exactly one run per trial and none left RUNNING. A trial whose run
has ended is never trained again: resumed or retried, it reports what its run recorded. A
retried trial logs no step twice. Training that diverges fails its run with a reason
(``gds.error``) and ends the trial normally, so the study goes on.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
import torch
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.tracking import MlflowClient
from ray import tune
from torch import nn

from study import tracking as tr
from study.config import StudySpec, TrialPlan, resolve_trial
from study.context import StudyContext, latency_input, load_study_task, trial_device
from study.data.base import Task, io_channels
from study.export import export_student
from study.inference import INFERENCE_CHUNK_NODES
from study.latency import count_parameters
from study.latency_service import Figure, study_figure
from study.models import build_model
from study.names import trial_run_name
from study.per_class import TABLE_ARTIFACT, per_class_figures
from study.pyfunc_model import add_task_pyfunc
from study.quiet import Worker
from study.search import trial_params
from study.teacher_outputs import trial_teacher_outputs
from study.teachers import load_teacher, teacher_cache_path
from study.train import (
    TrainingDiverged,
    TrainResult,
    distill_student,
    seed_everything,
    with_device,
)

SNAPSHOT_FILE = "trial_state.pt"
METRIC_FLUSH_SECONDS = 5.0  # per-epoch MLflow metrics are sent in batches this often
TUNE_REPORT_SECONDS = 1.0  # without a scheduler, progress reaches Tune at most this often
#: In a trial's final Tune result: why it failed (its run's ``gds.error``); absent when it did not.
RESULT_ERROR = "gds_error"
#: Tag of a trial the scheduler (ASHA) stopped before it trained all its epochs: its run is
#: FINISHED with the per-epoch curves only (no final metrics), and it is no fully trained result.


def fetch_teacher(ctx: StudyContext, task: Task) -> nn.Module:
    """The study's teacher: from this machine's cache, else downloaded from its MLflow run."""
    path = teacher_cache_path(ctx.teacher_run_id)
    if not path.is_file():
        tr.download_artifact(
            ctx.tracking_uri, ctx.teacher_run_id, tr.TEACHER_CHECKPOINT_ARTIFACT, path
        )
    model, _ = load_teacher(path, **io_channels(task))
    return model


def _find_run(client: MlflowClient, ctx: StudyContext, trial_id: str) -> Run | None:
    """This trial's MLflow run, when an earlier attempt (before a resume or a retry) made one."""
    found = client.search_runs(
        [ctx.experiment_id],
        filter_string=(
            f"tags.`{tr.TAG_TRIAL_ID}` = '{trial_id}' "
            f"and tags.`{tr.TAG_PARENT}` = '{ctx.parent_run_id}'"
        ),
        max_results=1,
    )
    return found[0] if found else None


def _start_run(
    client: MlflowClient,
    ctx: StudyContext,
    trial_id: str,
    plan: TrialPlan,
    device: str,
    trial_name: str,
) -> str:
    """A new child run for this trial: its tags and hyperparameters. Its name reads method, key
    hyperparameters, student and seed (:func:`study.names.trial_run_name`); Tune's own trial name
    is kept as tag ``gds.tune_trial_name`` to match Tune's progress table."""
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
        "gds.tune_trial_name": trial_name,
    }
    name = trial_run_name(plan.params, (d.name for d in ctx.spec.search))
    run = client.create_run(ctx.experiment_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    client.log_batch(
        run_id, params=[Param(k, tr.encode_param(v)) for k, v in sorted(plan.params.items())]
    )
    return run_id


def diverged_result(
    spec: StudySpec, run_id: str, config_id: str, epoch: int, reason: str
) -> dict[str, Any]:
    """The final Tune result of a trial whose training diverged: ``gds_error`` holds the reason,
    and every objective is NaN (Tune wants them in every result; the searcher takes a trial
    without a finite objective as failed)."""
    return {
        **{o.metric: math.nan for o in spec.objectives},
        tr.METRIC_VAL: math.nan,
        "epoch": epoch,
        "config_id": config_id,
        "mlflow_run_id": run_id,
        RESULT_ERROR: reason,
    }


def recorded_result(client: MlflowClient, run: Run, spec: StudySpec) -> dict[str, Any] | None:
    """The final Tune result of a trial whose run has ended, read back from MLflow, or ``None``
    when the trial must (still) train.

    A FINISHED run gives its final metrics (``val_score``, ``test_score``, latency,
    ``num_params``, ...), ``config_id``, ``mlflow_run_id`` and ``epoch``; a FAILED run with a
    ``gds.error`` tag (training diverged, which would diverge again) gives
    :func:`diverged_result`. Any other run (RUNNING after a killed worker or driver, FAILED by a
    crash) is continued.
    """
    run_id, tags = run.info.run_id, run.data.tags
    config_id = tags.get(tr.TAG_CONFIG_ID, "")
    if run.info.status == "FAILED" and tags.get(tr.TAG_ERROR):
        epoch = max(_logged_steps(client, run_id).values(), default=-1) + 1
        return diverged_result(spec, run_id, config_id, epoch, tags[tr.TAG_ERROR])
    if run.info.status != "FINISHED" or tr.METRIC_VAL not in run.data.metrics:
        # Not finished, or finished without final scores (stopped early): Tune still wants
        # it, so it trains on from its checkpoint in the same run.
        return None
    finals = {k: v for k, v in run.data.metrics.items() if k not in tr.EPOCH_METRICS}
    epoch = max((m.step for m in client.get_metric_history(run_id, tr.METRIC_TEST)), default=0)
    return {"epoch": epoch, **finals, "config_id": config_id, "mlflow_run_id": run_id}


def _logged_steps(client: MlflowClient, run_id: str) -> dict[str, int]:
    """The highest step already logged for each per-epoch metric of a run (absent: none)."""
    steps = {}
    for key in tr.EPOCH_METRICS:
        history = client.get_metric_history(run_id, key)
        if history:
            steps[key] = max(m.step for m in history)
    return steps


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

    ``pause`` (:meth:`study.quiet.Worker.pause_point`) is called first at each epoch's end.

    ``logged`` holds, per metric key, the highest step an earlier attempt of the trial already
    logged: a retried or resumed trial re-runs the epochs after its checkpoint on the same seeded
    trajectory (RNG state included), and those records are not logged again, so every step is
    logged once.
    """

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        spec: StudySpec,
        best_val: float,
        logged: dict[str, int] | None = None,
        pause: Callable[[], None] | None = None,
    ) -> None:
        self.client, self.run_id = client, run_id
        self.pause = pause
        self.logged = dict(logged or {})
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
        if self.pause is not None:  # a latency measurement on this machine may run now
            self.pause()
        now_ms, now = int(time.time() * 1000), time.monotonic()
        self.pending.extend(
            Metric(k, float(v), now_ms, epoch)
            for k, v in record.items()
            if epoch > self.logged.get(k, -1)
        )
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


def final_metrics(result: TrainResult, figure: Figure) -> dict[str, float]:
    """What a finished trial logs once: scores, the study's latency figures for its
    architecture, size, training time, split metrics."""
    return {
        tr.METRIC_VAL: result.val_score,
        tr.METRIC_TEST: result.test_score,
        **figure.metrics(),
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
    """Export the trained student (study.export's layout, and an MLflow pyfunc model in the same
    folder: study.pyfunc_model) under the run's ``student/``."""
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
            example_inputs=latency_input(task, model=result.model),
        )
        add_task_pyfunc(folder, task, result.model)
        client.log_artifacts(run_id, str(folder), artifact_path=tr.STUDENT_ARTIFACT_DIR)


class _StoppedBy(SystemExit):
    """Tune stopped the trial (a scheduler, or the study interrupted); ``status`` is how its
    run ends."""

    def __init__(self, status: str) -> None:
        super().__init__(0)
        self.status = status


def _train(
    client: MlflowClient,
    run_id: str,
    ctx: StudyContext,
    plan: TrialPlan,
    task: Task,
    teacher: nn.Module,
    device: str,
    resume: dict[str, Any] | None,
    logged: dict[str, int],
    worker: Worker,
) -> TrainResult | None:
    """Train the trial's student; None when training diverged (its run then FAILED, with the
    reason, and Tune told)."""
    spec = ctx.spec
    seed_everything(plan.seed)  # the seed fixes the initial weights too
    student = build_model(plan.student.arch, **plan.student.build_kwargs(), **io_channels(task))
    best = -float("inf") if resume is None else resume["best_val"]
    reporter = EpochReporter(client, run_id, spec, best, logged, pause=worker.pause_point)
    train_cfg = with_device(plan.student_train, device)
    if spec.scheduler is not None:  # scheduler.max_t caps the epochs
        train_cfg = replace(train_cfg, epochs=spec.scheduler.epochs(train_cfg.epochs))
    # Sampled mini-batches: the teacher's outputs, computed once per machine into files.
    outs = trial_teacher_outputs(
        teacher, task, train_cfg, plan.distill, f"{ctx.teacher_hash}-{ctx.teacher_run_id}", device
    )
    try:
        result = distill_student(
            student,
            teacher,
            task,
            train_cfg,
            plan.distill,
            on_epoch=reporter,
            resume=resume,
            teacher_outputs=outs,
        )
    except SystemExit as stop:
        # Tune stops a function trainable by raising SystemExit(0) in its report: with a
        # scheduler, that is the scheduler stopping it (the run ends FINISHED, tagged, without
        # final metrics); without one it is the study being interrupted (Ctrl-C), and the run
        # must stay unfinished so that `resume` continues it.
        reporter.flush()
        if spec.scheduler is not None:
            client.set_tag(run_id, tr.TAG_STOPPED_EARLY, "true")
            raise _StoppedBy("FINISHED") from stop
        raise _StoppedBy("KILLED") from stop
    except TrainingDiverged as err:
        reporter.flush()  # the epochs before it: the curve shows the blow-up
        client.set_tag(run_id, tr.TAG_ERROR, str(err))
        client.set_terminated(run_id, status="FAILED")  # before Tune hears it ended
        tune.report(diverged_result(spec, run_id, plan.config_id, err.epoch, str(err)))
        return None
    reporter.flush()
    return result


def run_trial(config: dict[str, Any], ctx: StudyContext, task: Task | None = None) -> None:
    """Ray Tune function trainable: one (configuration, seed) of the study; ``task`` is the
    study's dataset as the driver loaded it (else it is loaded here).

    A trial whose run has ended (after a resume or a retry) reports its recorded result and
    trains nothing (:func:`recorded_result`); an interrupted one continues its run from its
    checkpoint without logging a step twice. A trial whose training diverges
    (:class:`~study.train.TrainingDiverged`) ends its run FAILED with the reason as ``gds.error``
    and reports :func:`diverged_result`: Tune sees it end normally, so it is not retried (it
    would diverge again) and the study goes on.
    """
    spec = ctx.spec
    plan = resolve_trial(spec, trial_params(config, spec.seeds))
    tune_ctx = tune.get_context()
    client = tr.open_store(ctx.tracking_uri)
    found = _find_run(client, ctx, tune_ctx.get_trial_id())
    if found is not None:
        recorded = recorded_result(client, found, spec)
        if recorded is not None:
            tune.report(recorded)
            return

    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    device = trial_device(spec.resources.gpu)
    if task is None:
        task = load_study_task(spec, ctx.data_root)
    teacher = fetch_teacher(ctx, task)
    if found is None:
        run_id = _start_run(
            client, ctx, tune_ctx.get_trial_id(), plan, device, tune_ctx.get_trial_name()
        )
        logged: dict[str, int] = {}
    else:
        run_id = found.info.run_id
        client.update_run(run_id, status="RUNNING")
        logged = _logged_steps(client, run_id)
    client.set_tag(run_id, tr.TAG_WORKER_PID, str(os.getpid()))
    resume = _resume_state()
    status = "FAILED"
    try:
        with Worker() as worker:  # training pauses at epoch ends while a latency is timed
            result = _train(
                client, run_id, ctx, plan, task, teacher, device, resume, logged, worker
            )
        if result is None:  # diverged: the run FAILED with its reason, Tune told
            return
        # Timed outside the Worker (a measurement waits for every Worker on the machine).
        sig, lat, measured = study_figure(ctx.parent_run_id, result.model, task, spec, device)
        final = final_metrics(result, lat)
        with Worker():  # per-class evaluation is compute: not while a latency is timed
            chunk = INFERENCE_CHUNK_NODES if plan.student_train.minibatch else None
            class_table, class_figures = per_class_figures(
                result.model, task, device, chunk_nodes=chunk
            )
        final.update(class_figures)
        # An attempt killed after logging its final metrics logged them already: not twice.
        done = client.get_run(run_id).data.metrics
        now = int(time.time() * 1000)
        tags = {
            **lat.tags(),
            tr.TAG_LATENCY_SIGNATURE: sig,
            tr.TAG_LATENCY_SOURCE: "measured" if measured else "cached",
        }
        if tr.METRIC_LATENCY_P50 in done:  # an earlier attempt logged its figure and its tags
            tags = {}
        client.log_batch(
            run_id,
            metrics=[
                Metric(k, float(v), now, result.epochs_run)
                for k, v in final.items()
                if k not in done
            ],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        )
        client.log_table(run_id, data=class_table, artifact_file=TABLE_ARTIFACT)
        with Worker():
            _log_student(client, run_id, spec, plan, result, task)
        status = "FINISHED"
        report = {"epoch": result.epochs_run, **final, "config_id": plan.config_id}
        tune.report({**report, "mlflow_run_id": run_id})
    except _StoppedBy as stop:
        status = stop.status
        raise
    finally:
        client.set_terminated(run_id, status=status)
