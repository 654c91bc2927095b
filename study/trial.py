"""The one Ray Tune trainable: config -> teacher -> student -> metrics, logged to MLflow.

Everything below this module is plain PyTorch; this is where Ray and MLflow meet it. A trial
finds (or, after a resume, continues) its own MLflow child run by the tag ``gds.trial_id``, so an
interrupted study ends with exactly one run per trial and none left RUNNING.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import mlflow
import ray
import torch
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.search.repeater import TRIAL_INDEX
from torch import nn

from study import tracking as tr
from study.config import StudySpec, TrialPlan, parse_study_text, resolve_trial
from study.data import load_task
from study.data.base import PointCloudTask, Task, io_channels
from study.export import export_student
from study.latency import LatencyResult, count_parameters, measure_latency
from study.models import build_model
from study.teachers import load_teacher, teacher_cache_path
from study.train import distill_student, seed_everything, with_device

SNAPSHOT_FILE = "trial_state.pt"
METRIC_FLUSH_SECONDS = 5.0  # per-epoch MLflow metrics are sent in batches this often
TUNE_REPORT_SECONDS = 1.0  # without a scheduler, progress reaches Tune at most this often


@dataclass(frozen=True)
class StudyContext:
    """What every trial of a study shares; passed with ``tune.with_parameters``.

    ``spec`` travels pickled to workers (which may not have the study file or a teacher
    checkpoint it names); ``spec_text`` is the validated YAML, kept so ``resume`` can rebuild it.
    """

    spec: StudySpec
    spec_text: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    teacher_run_id: str
    teacher_hash: str
    data_root: str | None

    def to_json(self) -> str:
        """Everything but the parsed spec, as JSON (the spec is its text and source)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "spec"}
        return json.dumps({**data, "source": self.spec.source}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> StudyContext:
        """Inverse of :meth:`to_json`: the spec re-validated from its text."""
        data = json.loads(text)
        source = data.pop("source")
        return cls(spec=parse_study_text(data["spec_text"], source), **data)


@functools.lru_cache(maxsize=4)
def _cached_task(name: str, options_items: tuple[tuple[str, Any], ...], root: str | None) -> Task:
    # One load per worker process: reused actors keep it between trials.
    return load_task(name, root=root, **dict(options_items))


def load_study_task(spec: StudySpec, data_root: str | None) -> Task:
    """The study's dataset, loaded once per process."""
    return _cached_task(spec.dataset.name, tuple(sorted(spec.dataset.options.items())), data_root)


def fetch_teacher(ctx: StudyContext, task: Task) -> nn.Module:
    """The study's teacher: from this machine's cache, else downloaded from its MLflow run."""
    path = teacher_cache_path(ctx.teacher_run_id)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            local = mlflow.artifacts.download_artifacts(
                run_id=ctx.teacher_run_id,
                artifact_path=tr.TEACHER_CHECKPOINT_ARTIFACT,
                dst_path=tmp,
                tracking_uri=ctx.tracking_uri,
            )
            os.replace(local, path)
    model, _ = load_teacher(path, **io_channels(task))
    return model


def latency_input(task: Task, device: str = "cpu") -> tuple[Any, ...]:
    """One inference input on ``device``: the first test graph (node tasks) or one test cloud."""
    if isinstance(task, PointCloudTask):
        return (task.test.points[:1].to(device),)
    graph = task.test[0]
    return (graph.x.to(device), graph.edge_index.to(device))


def study_latency(model: nn.Module, task: Task, spec: StudySpec, device: str) -> LatencyResult:
    """Time ``model`` on the task's one-graph (or one-cloud) input with the study's settings."""
    return measure_latency(
        model,
        latency_input(task, device),
        repeats=spec.latency.repeats,
        warmup=spec.latency.warmup,
        threads=spec.latency.threads,
        device=device,
    )


def trial_device(gpus: float) -> str:
    """``cuda`` when Ray gave this trial (part of) a GPU and torch can see it."""
    return "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"


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
        tr.TAG_DATASET: ctx.spec.dataset.name,
        tr.TAG_SEED: str(plan.seed),
        tr.TAG_CONFIG_ID: plan.config_id,
        tr.TAG_TEACHER_RUN: ctx.teacher_run_id,
        tr.TAG_DEVICE: device,
        tr.TAG_STUDENT_ARCH: plan.student.arch,
        tr.TAG_NODE: ray.get_runtime_context().get_node_id(),
    }
    run = client.create_run(ctx.experiment_id, run_name=trial_name, tags=tags)
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in sorted(plan.params.items())])
    return run_id


def trial_params(config: dict[str, Any], seeds: tuple[int, ...] | list[int]) -> dict[str, Any]:
    """The flat hyperparameters of a trial, with its seed taken from the repeat index."""
    # Grid studies nest the configuration under "params" beside a "seed" axis.
    params = dict(config.get("params", {}))
    params.update(
        {
            k: v
            for k, v in config.items()
            if k not in ("params", TRIAL_INDEX) and not k.startswith("_")
        }
    )
    if "seed" not in params:
        params["seed"] = seeds[int(config.get(TRIAL_INDEX, 0)) % len(seeds)]
    return params


def run_trial(config: dict[str, Any], ctx: StudyContext) -> None:
    """Ray Tune function trainable: one (configuration, seed) of the study."""
    spec = ctx.spec
    params = trial_params(config, spec.seeds)
    plan = resolve_trial(spec, params)
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    device = trial_device(spec.resources.gpu)
    task = load_study_task(spec, ctx.data_root)
    teacher = fetch_teacher(ctx, task)

    tune_ctx = tune.get_context()
    trial_id = tune_ctx.get_trial_id()
    client = MlflowClient(ctx.tracking_uri)
    run_id = _find_or_start_run(client, ctx, trial_id, plan, device, tune_ctx.get_trial_name())

    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            resume = torch.load(
                Path(ckpt_dir) / SNAPSHOT_FILE, map_location="cpu", weights_only=True
            )

    status = "FAILED"
    try:
        seed_everything(plan.seed)  # the seed fixes the initial weights too
        student = build_model(plan.student.arch, **plan.student.build_kwargs(), **io_channels(task))
        best = {"val": -float("inf") if resume is None else resume["best_val"]}
        clock = {"checkpoint": time.monotonic(), "flush": time.monotonic(), "report": 0.0}
        policy = spec.fault_tolerance
        pending: list[Metric] = []
        # A scheduler compares trials epoch by epoch; without one, Tune needs no per-epoch report.
        report_every_epoch = spec.scheduler is not None

        def flush() -> None:
            if pending:
                client.log_batch(run_id, metrics=list(pending))
                pending.clear()
            clock["flush"] = time.monotonic()

        def on_epoch(epoch: int, record: dict[str, float], snapshot: Any) -> None:
            now_ms, now = int(time.time() * 1000), time.monotonic()
            pending.extend(Metric(k, float(v), now_ms, epoch) for k, v in record.items())
            best["val"] = max(best["val"], record.get("epoch_val_score", -float("inf")))
            report = {"epoch": epoch, tr.METRIC_VAL: best["val"], **record}
            due = (epoch + 1) % policy.checkpoint_every == 0
            checkpoint = due and now - clock["checkpoint"] >= policy.checkpoint_min_seconds
            # MLflow calls cost milliseconds each: per-epoch metrics go in batches (every few
            # seconds, before each checkpoint, and at the end), not one call per epoch.
            if checkpoint or now - clock["flush"] >= METRIC_FLUSH_SECONDS or len(pending) >= 900:
                flush()
            if checkpoint:
                clock["checkpoint"] = clock["report"] = now
                with tempfile.TemporaryDirectory() as tmp:
                    torch.save(snapshot(), Path(tmp) / SNAPSHOT_FILE)
                    tune.report(report, checkpoint=tune.Checkpoint.from_directory(tmp))
            elif report_every_epoch or now - clock["report"] >= TUNE_REPORT_SECONDS:
                clock["report"] = now
                tune.report(report)

        result = distill_student(
            student,
            teacher,
            task,
            with_device(plan.student_train, device),
            plan.distill,
            on_epoch=on_epoch,
            resume=resume,
        )
        flush()
        lat = study_latency(result.model, task, spec, device)
        final = {
            tr.METRIC_VAL: result.val_score,
            tr.METRIC_TEST: result.test_score,
            tr.METRIC_LATENCY_P50: lat.p50_ms,
            tr.METRIC_LATENCY_P90: lat.p90_ms,
            tr.METRIC_PARAMS: float(count_parameters(result.model)),
            tr.METRIC_TRAIN_SECONDS: result.train_seconds,
            **{f"test_{k}": v for k, v in result.test_metrics.items() if k != "score"},
        }
        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, result.epochs_run) for k, v in final.items()],
            tags=[RunTag(k, str(v)) for k, v in lat.as_tags().items()],
        )
        with tempfile.TemporaryDirectory() as tmp:
            metadata = {
                "study": spec.name,
                "dataset": spec.dataset.name,
                "config_id": plan.config_id,
                "params": plan.params,
                "val_score": result.val_score,
                "test_score": result.test_score,
            }
            folder = export_student(
                result.model,
                Path(tmp) / "student",
                metadata=metadata,
                example_inputs=latency_input(task),
            )
            client.log_artifacts(run_id, str(folder), artifact_path=tr.STUDENT_ARTIFACT_DIR)
        status = "FINISHED"
        tune.report(
            {
                "epoch": result.epochs_run,
                **final,
                "config_id": plan.config_id,
                "mlflow_run_id": run_id,
            }
        )
    finally:
        client.set_terminated(run_id, status=status)
