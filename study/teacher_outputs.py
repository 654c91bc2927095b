"""The teacher's outputs for sampled mini-batch distillation, computed once per machine and
shared by every trial of a study there.

The first trial that needs them runs the teacher's layer-wise inference over the training graph
(:func:`study.train.teacher_outputs`), under a file lock so that concurrent trials wait instead
of repeating it, and saves them beside the teacher cache. Every trial then memory-maps the file
(``torch.load(mmap=True)``): the pages are the OS page cache's, one physical copy for all trial
processes on the machine, read only where a batch's rows are gathered.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from study.data.base import NodeTask, Task
from study.distill.methods import build_method
from study.fileio import atomic_write
from study.models.base import ModelOutput
from study.paths import user_cache_dir
from study.tracking import file_lock
from study.train import teacher_outputs
from study.train_config import DistillConfig, TrainConfig


def teacher_outputs_path(key: str, cache_dir: Path | None = None) -> Path:
    """Where the teacher outputs cached under ``key`` live on this machine."""
    return (cache_dir or user_cache_dir() / "teacher-outputs") / f"{key}.pt"


def shared_teacher_outputs(
    teacher: nn.Module,
    task: NodeTask,
    key: str,
    *,
    device: str = "cpu",
    cache_dir: Path | None = None,
) -> ModelOutput:
    """The teacher's ``[N, C]`` logits and ``[N, F_l]`` hidden features on the training graph,
    memory-mapped from this machine's cache (computed there first when missing).

    Args:
        teacher: the frozen teacher.
        task: the study's task.
        key: names the teacher and the data (the teacher run and spec hash): outputs of another
            teacher or dataset are never read.
        device: where the inference runs when the outputs must be computed.
        cache_dir: the folder (default: the user cache's ``teacher-outputs``).
    """
    path = teacher_outputs_path(key, cache_dir)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path.with_name(path.name + ".lock")):
            if not path.is_file():  # another trial may have written it while this one waited
                out = teacher_outputs(teacher, task, device)
                state = {"logits": out.logits, "hidden": out.hidden}
                atomic_write(path, lambda tmp: torch.save(state, tmp))
    state = torch.load(path, mmap=True, weights_only=True)
    return ModelOutput(logits=state["logits"], hidden=list(state["hidden"]))


def trial_teacher_outputs(
    teacher: nn.Module,
    task: Task,
    train: TrainConfig,
    distill: DistillConfig,
    key: str,
    device: str = "cpu",
) -> ModelOutput | None:
    """What a trial passes as ``teacher_outputs`` to :func:`study.train.distill_student`: the
    shared outputs when it trains on sampled mini-batches of a node task with a method that
    reads the teacher, else ``None`` (full batch caches them per trial, as before)."""
    if not train.minibatch or not isinstance(task, NodeTask):
        return None
    if not build_method(distill).needs_teacher:
        return None
    return shared_teacher_outputs(teacher, task, key, device=device)
