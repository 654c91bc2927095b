"""What the trials of a study share, below Ray: the study context, its dataset loaded once per
process, the device and latency settings. The trainable (``study.trial``), the runner and the
latency service all build on this module, which imports neither Ray nor MLflow.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from study.config import StudySpec, parse_study_text
from study.data.base import PointCloudTask, Task
from study.data.registry import load_dataset
from study.latency import LatencyResult, measure_until_stable
from study.models.base import model_inputs


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
def _cached_task(dataset_json: str, root: str | None) -> Task:
    # One load per worker process: reused actors keep it between trials.
    return load_dataset(**json.loads(dataset_json), root=root)


def load_study_task(spec: StudySpec, data_root: str | None) -> Task:
    """The study's dataset (catalog entry, user file or user function), loaded once per process."""
    d = spec.dataset
    keys = {
        "name": d.name,
        "path": d.path,
        "factory": d.factory,
        "options": d.options,
        "metric": d.metric,
        "base_dir": d.base_dir,
        "split": d.split,
    }
    if d.target_node_type is not None:  # a user's HeteroData
        keys["target_node_type"] = d.target_node_type
    return _cached_task(json.dumps(keys, sort_keys=True), data_root)


def latency_input(
    task: Task, device: str = "cpu", model: nn.Module | None = None
) -> tuple[Any, ...]:
    """One inference input on ``device``: the first test graph (node tasks) or one test cloud;
    with a relation-aware ``model`` on a typed graph, its edge and node types too."""
    if isinstance(task, PointCloudTask):
        return (task.test.points[:1].to(device),)
    graph = task.test[0]
    if model is not None:
        return tuple(t.to(device) for t in model_inputs(model, graph))
    return (graph.x.to(device), graph.edge_index.to(device))


def study_latency(model: nn.Module, task: Task, spec: StudySpec, device: str) -> LatencyResult:
    """Time ``model`` on the task's one-graph (or one-cloud) input with the study's settings,
    in rounds until the p50 is known to ``latency.tolerance`` (no quiet window: see
    :func:`study.latency_service.measure_figure`)."""
    lat = spec.latency
    return measure_until_stable(
        model,
        latency_input(task, device, model),
        tolerance=lat.tolerance,
        max_repeats=lat.max_repeats,
        max_seconds=lat.max_seconds,
        repeats=lat.repeats,
        warmup=lat.warmup,
        threads=lat.threads,
        device=device,
    )


def trial_device(gpus: float) -> str:
    """``cuda`` when Ray gave this trial (part of) a GPU and torch can see it."""
    return "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
