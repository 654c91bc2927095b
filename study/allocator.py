"""Opt-in: keep freed CPU memory in the process, so big tensors are not page-faulted in anew.

PyTorch's CPU tensors come straight from ``malloc``. glibc serves every block above 32 MiB (and
many smaller ones) with a fresh ``mmap`` and gives it back to the kernel on ``free``, so a
training step whose activations are hundreds of MB (DGCNN's ``[B, P, k, C]`` edge tensors: 168
MB each for the student on 32 x 1024 points) zero-fills and faults in every page of them again,
every step. GPUs do not pay this: PyTorch's CUDA allocator caches its blocks.

:func:`retain_freed_memory` has glibc keep freed memory for reuse instead: no ``mmap`` for large
blocks, no trimming of the heap, one arena. Measured on two cores (``benchmarks/README.md``):
the DGCNN student step on 32 x 1024 points from 4.3 s to 2.7 s (959k page faults and 2.6 s of
kernel time gone), but the benchmark process's peak memory from 2.3 to 3.6 GB, because glibc
cannot always reuse a freed block for the next aligned request of the same size and grows the
heap for a few steps before it settles; a short real run (3 epochs of the ModelNet40 subset)
was 18% faster with 38% more peak memory. Memory being what runs out on a laptop, this is off
unless ``GDS_RETAIN_FREED_MEMORY=1``. Sampled mini-batch training, whose point is bounded
memory, goes the other way by default (:func:`bound_freed_memory`).

Threads started after the call share the main arena (Ray Tune runs a trial's function in a
thread, whose own arena would still map large blocks); threads that already allocated keep
theirs. Processes started for a study (Ray workers) get the same settings through the
environment, :data:`RETAIN_ENV`, which glibc reads at start. Other C libraries (macOS, musl)
are left as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

#: Opt-in switch: ``1`` retains freed memory in training processes.
SWITCH_ENV = "GDS_RETAIN_FREED_MEMORY"

# mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -3, -4, -8

#: :func:`bound_freed_memory`'s threshold: blocks from this size are mapped and unmapped.
BOUNDED_MMAP_THRESHOLD = 256 * 1024

#: Never trim the heap (1 TiB), never mmap a block, one arena: glibc's environment form of the
#: same settings, read when a process starts (for Ray workers).
RETAIN_ENV: dict[str, str] = {
    "MALLOC_TRIM_THRESHOLD_": str(1 << 40),
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_ARENA_MAX": "1",
}

_applied = False


def wanted() -> bool:
    """Whether to retain freed memory here: asked for, and glibc on Linux."""
    return os.environ.get(SWITCH_ENV, "0").strip() == "1" and _glibc()


def _glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def retain_freed_memory() -> bool:
    """Have this process's glibc keep freed memory for reuse (see the module docstring).

    Returns:
        ``True`` when the settings are in force (now or from an earlier call), ``False`` where
        they do not apply (not asked for, not glibc) or glibc refused one.
    """
    global _applied
    if _applied:
        return True
    if not wanted():
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    # mallopt takes a C int: the largest trim threshold it can set is 2 GiB - 1 (the
    # environment form sets 1 TiB); it returns 1 on success.
    settings = ((_M_TRIM_THRESHOLD, 2**31 - 1), (_M_MMAP_MAX, 0), (_M_ARENA_MAX, 1))
    _applied = all(libc.mallopt(param, value) == 1 for param, value in settings)
    return _applied


def env_for_workers() -> dict[str, str]:
    """Environment variables that give processes started for us the same settings."""
    return dict(RETAIN_ENV) if wanted() else {}


def retained() -> bool:
    """Whether freed memory is retained in this process (for the records of timings)."""
    if _applied:
        return True
    # Started with the settings in its environment (a Ray worker of a study that asked).
    return _glibc() and all(os.environ.get(k) == v for k, v in RETAIN_ENV.items())


def bound_freed_memory() -> bool:
    """The opposite trade for sampled mini-batch training, where memory is what the mode is
    for: every block of :data:`BOUNDED_MMAP_THRESHOLD` or more is mapped and given back on
    ``free``. glibc's default raises that threshold to the size of each large block freed, so
    a run's steps and evaluations come to serve their tensors from a heap that only grows;
    measured on the 3M-node benchmark (``benchmarks/README.md``), a teacher epoch peaked at
    651 MiB beyond the graph by default and 223 MiB with the fixed threshold, at 15-55% more
    time per step (large tensors are faulted in anew; 0.20 -> 0.30 s per step at 1M nodes).

    It lasts for the process: mallopt cannot give glibc its dynamic threshold back. In a study
    that is a Ray worker reused for later trials of the study (all of them sampled where the
    student's ``num_neighbors`` is set; a full-batch student after a sampled teacher trained in
    the same worker trains and is timed with the bound too, slower on large tensors).

    Returns:
        ``True`` when set; ``False`` where it does not apply (not glibc, or the opt-in to
        retain freed memory is asked for or in force: the user chose speed).
    """
    if retained() or wanted() or not _glibc():  # asked to retain: the user chose speed
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    # A fixed threshold also turns glibc's dynamic adjustment off.
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, BOUNDED_MMAP_THRESHOLD) == 1)
