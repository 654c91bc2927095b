"""study.quiet with real processes: no epoch of a training process overlaps a measurement
window; a killed trainer never blocks one; a trainer that never pauses makes it not quiet."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from study import quiet


@pytest.fixture(autouse=True)
def _private_locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Spawned children inherit the environment: everyone here uses this test's lock files.
    monkeypatch.setenv(quiet.LOCK_DIR_ENV, str(tmp_path / "locks"))


def _trainer(log: str, epochs: int, epoch_s: float) -> None:
    """Epochs of busy work, each logged as (start, end) on the monotonic clock."""
    with quiet.Worker() as worker, open(log, "a") as out:
        for _ in range(epochs):
            start = time.monotonic()
            while time.monotonic() - start < epoch_s:
                pass
            out.write(f"{start} {time.monotonic()}\n")
            out.flush()
            worker.pause_point()


def _stuck(ready: str) -> None:
    with quiet.Worker():
        Path(ready).touch()
        time.sleep(60)  # never reaches a pause point


def _wait_for(path: Path) -> None:
    for _ in range(3000):
        if path.exists() and path.stat().st_size > 0:
            return
        time.sleep(0.01)
    raise AssertionError(f"{path} never appeared")


def _spawn(target, *args) -> mp.Process:  # type: ignore[no-untyped-def]
    proc = mp.get_context("spawn").Process(target=target, args=args)
    proc.start()
    return proc


def test_no_epoch_overlaps_a_window(tmp_path: Path) -> None:
    logs = [tmp_path / f"epochs{i}.log" for i in range(2)]
    trainers = [_spawn(_trainer, str(log), 40, 0.01) for log in logs]
    windows = []
    try:
        for log in logs:
            _wait_for(log)  # both are training
        for _ in range(3):
            with quiet.measurement_window(timeout=30) as window:
                start = time.monotonic()
                time.sleep(0.05)
                windows.append((start, time.monotonic()))
            assert window.quiet
            time.sleep(0.03)
    finally:
        for proc in trainers:
            proc.join(60)
    assert all(proc.exitcode == 0 for proc in trainers)
    epochs = [
        tuple(map(float, line.split()))
        for log in logs
        for line in log.read_text().split("\n")
        if line
    ]
    assert len(epochs) == 80
    for w_start, w_end in windows:
        overlapping = [e for e in epochs if e[0] < w_end and e[1] > w_start]
        assert overlapping == [], (w_start, w_end, overlapping)
    # The trainers did run between the windows, not only before or after them all.
    assert any(windows[0][1] < e[0] < windows[-1][0] for e in epochs)


def test_a_killed_trainer_does_not_block(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    proc = _spawn(_stuck, str(ready))
    try:
        _wait_for_file(ready)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
        with quiet.measurement_window(timeout=30) as window:
            assert window.quiet  # the kernel released the dead process's lock
    finally:
        proc.kill()


def test_a_trainer_that_never_pauses_makes_the_window_not_quiet(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    proc = _spawn(_stuck, str(ready))
    try:
        _wait_for_file(ready)
        with quiet.measurement_window(timeout=0.3) as window:
            assert not window.quiet and window.waited_s >= 0.3
    finally:
        proc.kill()
        proc.join(30)


def _wait_for_file(path: Path) -> None:
    for _ in range(3000):
        if path.exists():
            return
        time.sleep(0.01)
    raise AssertionError(f"{path} never appeared")


def test_a_lock_folder_others_can_write_is_refused_before_a_study_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from study.cli import main
    from study.errors import UserInputError
    from tests.studies import write_study

    shared = tmp_path / "shared-locks"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # past the umask: anyone could hold the locks
    monkeypatch.setenv(quiet.LOCK_DIR_ENV, str(shared))
    with pytest.raises(UserInputError, match="private"):
        quiet.lock_dir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = write_study(tmp_path, "locks")
    assert main(["run", str(path), "--storage", str(tmp_path / "studies")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(shared) in err, err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "studies").exists()
