"""The teacher's outputs for sampled mini-batch distillation, computed once per machine and
shared by every trial of a study there.

The first trial that needs them runs the teacher's layer-wise inference over the training graph
(:func:`study.train.teacher_outputs`), under a file lock so that concurrent trials wait instead
of repeating it, and writes them beside the teacher cache as one float32 file per layer
(:mod:`study.mapped`; the pass writes each chunk of targets to the files and reads the next
layer's inputs back by rows, so it never holds an ``[N, F]`` layer in memory). Every trial
then reads a batch's rows from the files: their pages are the OS page cache's, one physical
copy for all trial processes on the machine, none of it in a trial's resident memory.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from torch import nn

from study import allocator
from study.data.base import NodeTask, Task
from study.distill.methods import build_method
from study.fileio import PARTIAL_MARK, staged_folder
from study.mapped import MappedArray, MappedOutput, is_sealed, open_arrays, seal_arrays
from study.models.base import ModelOutput
from study.paths import user_cache_dir
from study.tracking import file_lock
from study.train import teacher_outputs
from study.train_config import DistillConfig, TrainConfig


def teacher_outputs_path(key: str, cache_dir: Path | None = None) -> Path:
    """The folder where the teacher outputs cached under ``key`` live on this machine."""
    return (cache_dir or user_cache_dir() / "teacher-outputs") / key


def shared_teacher_outputs(
    teacher: nn.Module,
    task: NodeTask,
    key: str,
    *,
    device: str = "cpu",
    cache_dir: Path | None = None,
) -> MappedOutput:
    """The teacher's ``[N, C]`` logits and ``[N, F_l]`` hidden features on the training graph,
    in files of this machine's cache (computed there first when missing), read by rows.

    Args:
        teacher: the frozen teacher.
        task: the study's task.
        key: names the teacher and the data (the teacher run and spec hash): outputs of another
            teacher or dataset are never read.
        device: where the inference runs when the outputs must be computed.
        cache_dir: the folder (default: the user cache's ``teacher-outputs``).
    """
    folder = teacher_outputs_path(key, cache_dir)
    if not is_sealed(folder):
        folder.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(folder.with_name(folder.name + ".lock")):
            if not is_sealed(folder):  # another trial may have written them while this waited
                _write_outputs(teacher, task, device, folder)
    arrays = open_arrays(folder)
    hidden = [arrays[name] for name in arrays if name.startswith("hidden")]
    return MappedOutput(arrays["logits"], hidden or [arrays["logits"]])


def _write_outputs(teacher: nn.Module, task: NodeTask, device: str, folder: Path) -> None:
    """Compute the outputs (float32) into a staging folder moved into place whole, replacing
    an unsealed one: a reader sees every file or none. Called under the folder's lock."""
    allocator.bound_freed_memory()  # as sampled training does: memory is what it is for
    for stale in folder.parent.glob(f".{folder.name}{PARTIAL_MARK}*"):
        shutil.rmtree(stale, ignore_errors=True)  # a writer killed mid-way (the lock is ours)
    with staged_folder(folder, replace=True) as staging:
        arrays: dict[str, MappedArray] = {}

        def allocate(name: str, shape: tuple[int, int]) -> MappedArray:
            arrays[name] = MappedArray(staging / f"{name}.f32", shape, writable=True)
            return arrays[name]

        # Each layer is written to its file chunk by chunk and read back by rows: no [N, F]
        # layer is ever in memory.
        out = teacher_outputs(teacher, task, device, allocate=allocate)
        if not arrays:  # a model without the layer-wise path: its full forward, in memory
            layers = {"logits": out.logits, **{f"hidden{i}": h for i, h in enumerate(out.hidden)}}
            for name, tensor in layers.items():
                assert tensor is not None, "a teacher without logits"
                allocate(name, (int(tensor.shape[0]), int(tensor.shape[1]))).write(0, tensor)
        seal_arrays(staging, arrays)


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
