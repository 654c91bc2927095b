"""Files and folders that appear complete or not at all.

Every writer of the project that others may read while it works (teacher checkpoints and
downloaded artifacts in a machine-wide cache, processed ModelNet40 arrays that concurrent trials
load, exports and report folders a user points at) goes through these helpers:

- :func:`atomic_write`: a file is written to a temporary sibling and ``os.replace``-d onto its
  path, so a reader sees the old file or the new one, never a partial one;
- :func:`staged_folder`: a folder is filled in a hidden sibling and renamed into place only when
  complete; an existing non-empty target is refused unless ``replace=True``.

Siblings, not ``/tmp``: a rename is atomic only within one file system. Nothing here imports
torch, so :mod:`analysis` can use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["atomic_write", "staged_folder", "staging_folder", "move_into_place", "PARTIAL_MARK"]

#: In the name of every temporary sibling, so leftovers of a killed process are recognisable.
PARTIAL_MARK = ".partial-"


def _sibling(path: Path, suffix: str = "") -> Path:
    return path.parent / f".{path.name}{PARTIAL_MARK}{uuid.uuid4().hex[:8]}{suffix}"


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to fill a new temporary sibling of ``path``, then move it onto ``path``.

    ``tmp`` exists (empty, with the mode a new file gets under the umask) when ``write`` is
    called; ``write`` may overwrite or replace it. Its name ends in ``.tmp``, not in ``path``'s
    suffix, so pass writers an open file where they would add a suffix (``np.save``).
    If ``write`` raises, ``path`` is left as it was and the sibling is removed. Concurrent writers
    of one path are safe: the last rename wins and each one's file is complete.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, ".tmp")
    # O_EXCL: never write through someone else's file; 0o666 lets the umask decide the mode
    # (mkstemp's 0o600 would make a shared cache unreadable to the machine's other users).
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


@contextlib.contextmanager
def staging_folder(out: Path) -> Iterator[Path]:
    """A new hidden folder beside ``out`` (same file system, so renaming it into place is
    atomic); on leaving it is removed unless it was moved, and so are the parents of ``out`` it
    had to create, unless ``out`` now exists."""
    created: list[Path] = []
    parent = out.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out)
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not out.exists():
            for folder in created:  # innermost first; stop at one that someone else filled
                try:
                    folder.rmdir()
                except OSError:
                    break


def move_into_place(folder: Path, out: Path, *, replace: bool = False) -> None:
    """Rename the complete ``folder`` to ``out`` (a sibling, see :func:`staging_folder`).

    ``out`` may be missing or an empty folder. With ``replace=True`` an existing folder ``out``
    is swapped out first and removed once ``folder`` stands in its place (restored if the
    rename fails).

    Raises:
        FileExistsError: ``out`` is a file, or a non-empty folder without ``replace`` (checked
            at the rename, so a folder filled by someone else meanwhile is never overwritten).
    """
    if replace and out.is_dir() and any(out.iterdir()):
        old = _sibling(out, ".old")
        out.rename(old)
        try:
            os.rename(folder, out)
        except BaseException:
            old.rename(out)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        if out.is_dir():
            out.rmdir()  # refuses if something was written there since the caller's check
        os.rename(folder, out)  # refuses a non-empty target folder or a file
    except OSError as err:
        if out.exists():
            raise FileExistsError(
                errno.EEXIST, f"exists and is not an empty folder ({err.strerror})", str(out)
            ) from None
        raise


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike[str], *, replace: bool = False) -> Iterator[Path]:
    """Yield an empty hidden folder to fill; when the block ends without an error it becomes
    ``out`` (:func:`move_into_place`), else it is removed and ``out`` is left as it was.

    Example::

        with staged_folder(report_dir) as tmp:
            (tmp / "README.md").write_text(text)

    Raises:
        FileExistsError: as :func:`move_into_place`.
    """
    target = Path(out)
    with staging_folder(target) as tmp:
        yield tmp
        move_into_place(tmp, target, replace=replace)
