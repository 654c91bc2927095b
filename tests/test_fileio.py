"""study.fileio: a file or folder is complete at its path, or absent (or still the old one)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from study.fileio import PARTIAL_MARK, atomic_write, move_into_place, staged_folder


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_creates_parents_and_leaves_no_sibling(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "x.bin"
    assert atomic_write(path, lambda tmp: tmp.write_bytes(b"new")) == path
    assert path.read_bytes() == b"new" and _names(path.parent) == ["x.bin"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("old")

    def half(tmp: Path) -> None:
        tmp.write_text("half of the ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half)
    assert path.read_text() == "old" and _names(tmp_path) == ["x.txt"]


def test_atomic_write_mode_follows_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "x", lambda tmp: tmp.write_text("x"))
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0o600


def test_a_killed_writer_never_leaves_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("old")
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from study.fileio import atomic_write\n"
        "def write(tmp):\n"
        "    tmp.write_text('partial')\n"
        "    os._exit(9)\n"  # dies mid-write: no finally, no cleanup
        f"atomic_write(Path({str(path)!r}), write)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code], env=env, timeout=60)
    assert done.returncode == 9
    assert path.read_text() == "old"
    (left,) = [p for p in tmp_path.iterdir() if p != path]
    assert PARTIAL_MARK in left.name and left.name.startswith(".x.txt")  # recognisable


def test_staged_folder_appears_complete(tmp_path: Path) -> None:
    out = tmp_path / "new" / "rep"
    with staged_folder(out) as tmp:
        (tmp / "a.txt").write_text("a")
        assert not out.exists()  # nothing at the target while it is being filled
    assert _names(out) == ["a.txt"] and _names(tmp_path / "new") == ["rep"]


def test_staged_folder_failure_removes_the_stage_and_the_parents_it_made(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), staged_folder(tmp_path / "p" / "q" / "rep") as tmp:
        (tmp / "a.txt").write_text("a")
        raise RuntimeError("boom")
    assert _names(tmp_path) == []


def test_staged_folder_into_an_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "rep"
    out.mkdir()
    with staged_folder(out) as tmp:
        (tmp / "a.txt").write_text("a")
    assert _names(out) == ["a.txt"]


def test_staged_folder_refuses_a_target_filled_meanwhile(tmp_path: Path) -> None:
    out = tmp_path / "rep"
    with pytest.raises(FileExistsError), staged_folder(out) as tmp:
        (tmp / "a.txt").write_text("a")
        out.mkdir()
        (out / "theirs.txt").write_text("theirs")
    assert _names(out) == ["theirs.txt"] and _names(tmp_path) == ["rep"]
    (tmp_path / "file").write_text("f")
    with pytest.raises(FileExistsError), staged_folder(tmp_path / "file") as tmp:
        (tmp / "a.txt").write_text("a")
    assert (tmp_path / "file").read_text() == "f" and _names(tmp_path) == ["file", "rep"]


def test_staged_folder_replace_swaps_a_full_folder(tmp_path: Path) -> None:
    out = tmp_path / "rep"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with staged_folder(out, replace=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert _names(out) == ["new.txt"] and _names(tmp_path) == ["rep"]


def test_move_into_place_replace_restores_the_old_folder_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "rep"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(OSError):
        move_into_place(tmp_path / "does-not-exist", out, replace=True)
    assert _names(out) == ["old.txt"] and _names(tmp_path) == ["rep"]
