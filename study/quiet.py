"""Quiet measurement windows on one machine: training pauses while a latency is measured.

Ray's CPU resources are logical: two trials given one CPU each share the cores with whatever
else runs, so a latency timed beside a training trial measures the contention (one GAT read
5.9 to 8.3 ms on two shared cores). Quiet has to be made. Every trial process on a machine holds
a *shared* lock on the file ``busy`` while it trains, and lets go of it at each epoch's end
(:meth:`Worker.pause_point`); a measurement takes the *exclusive* lock, so it starts once every
trial on the machine has reached the end of an epoch, and no trial starts another epoch until it
is done. A second file, ``gate``, keeps trials from taking ``busy`` again while a measurement
waits for it (Linux ``flock`` does not favour a waiting exclusive lock over new shared ones).

The locks are ``flock(2)`` locks on files in :func:`lock_dir`, one folder per user and machine:
the kernel releases them when a process dies, so a killed trial never blocks a measurement,
and every study of the user on the machine pauses for any of them (they share the cores too).
A measurement that cannot get quiet within ``timeout`` seconds (a trial stuck mid-epoch) goes
ahead and says so (:attr:`Window.quiet` is False) rather than wait forever.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from study.errors import UserInputError

#: Environment variable naming another folder for the lock files (tests; a shared /tmp).
LOCK_DIR_ENV = "GDS_QUIET_DIR"
#: Seconds a measurement waits for the trials to pause before it goes ahead anyway.
DEFAULT_TIMEOUT = 300.0
_POLL_SECONDS = 0.01


def lock_dir() -> Path:
    """The folder of this user's lock files on this machine (created, private)."""
    path = Path(
        os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / f"gds-quiet-{os.getuid()}"
    )
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        # Someone else's folder in a shared /tmp could hold the locks and stall every trial.
        raise UserInputError(
            f"{path}: the quiet-window lock folder must be this user's and private (mode 700); "
            f"remove it or set {LOCK_DIR_ENV} to another folder"
        )
    return path


def _open(name: str) -> IO[bytes]:
    return open(lock_dir() / name, "ab")  # noqa: SIM115 - held across calls, closed explicitly


class Worker:
    """What a training process holds: the shared lock on ``busy``, given up at each
    :meth:`pause_point` so that a waiting measurement can run. A context manager."""

    def __init__(self) -> None:
        self._gate = _open("gate")
        self._busy = _open("busy")

    def __enter__(self) -> Worker:
        self._join()
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._busy, fcntl.LOCK_UN)
        self._gate.close()
        self._busy.close()

    def _join(self) -> None:
        # Through the gate (blocks while a measurement holds it), then busy, shared.
        fcntl.flock(self._gate, fcntl.LOCK_SH)
        try:
            fcntl.flock(self._busy, fcntl.LOCK_SH)
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)

    def pause_point(self) -> None:
        """Between two epochs: let a waiting measurement run, then go on (a few microseconds
        when none waits)."""
        fcntl.flock(self._busy, fcntl.LOCK_UN)
        self._join()


@dataclass
class Window:
    """An open measurement window: ``quiet`` is False when the trials did not pause in time
    (the measurement ran beside them); ``waited_s`` is how long getting quiet took."""

    quiet: bool
    waited_s: float


@contextmanager
def measurement_window(timeout: float = DEFAULT_TIMEOUT) -> Iterator[Window]:
    """Hold every training process of this user on this machine at its next epoch's end for
    the duration of the ``with`` block. Must not be entered by a process that is itself a
    :class:`Worker` (it would wait for itself): leave the worker first."""
    start = time.monotonic()
    with _open("gate") as gate, _open("busy") as busy:
        got_gate = _lock_exclusive(gate, start + timeout)
        quiet = got_gate and _lock_exclusive(busy, start + timeout)
        try:
            yield Window(quiet=quiet, waited_s=time.monotonic() - start)
        finally:
            fcntl.flock(busy, fcntl.LOCK_UN)
            fcntl.flock(gate, fcntl.LOCK_UN)


def _lock_exclusive(handle: IO[bytes], deadline: float) -> bool:
    # Polled, not blocking: a stuck holder must not hold the measurement forever.
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_SECONDS)
