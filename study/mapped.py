"""Whole-graph float32 arrays kept in files, read and written by rows without mapping them.

The teacher's outputs for every node of a large graph (``[N, F_l]`` per layer) are read a few
thousand random rows per sampled step. Memory-mapping them (``torch.load(mmap=True)``) puts
every page a read touches in the process's resident set, and the kernel maps the neighbours of
each faulting page too (fault-around, 64 KiB): ten thousand random rows of a 1M-node layer map
nearly all of it, so resident memory grows with ``N`` (measured: 281 MiB per step at 1M nodes).
Here rows are copied out of the file with ``pread`` (one call per run of consecutive rows) and
written with ``pwrite``: what a process holds is the rows it asked for. The file's pages stay in
the OS page cache, one copy for every process of the machine, reclaimable under pressure.

A folder holds ``<name>.f32`` files and ``arrays.json`` with their shapes, written last: a
folder without it is incomplete and never read.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor

from study.models.base import ModelOutput

#: The index of a folder of arrays: ``{name: [rows, cols]}`` in order, written last.
INDEX_FILE = "arrays.json"

_ITEM = 4  # float32 bytes

#: Bytes per read or write call (Linux transfers at most 2 GiB - 4 KiB per call).
_MAX_TRANSFER = 1 << 30


class MappedArray:
    """A ``[rows, cols]`` float32 array in a file.

    Args:
        path: the file (created zero-filled when ``writable`` and missing).
        shape: ``(rows, cols)``.
        writable: open for :meth:`write`.
    """

    def __init__(self, path: Path, shape: tuple[int, int], *, writable: bool = False) -> None:
        self.path, self.shape = path, (int(shape[0]), int(shape[1]))
        self._row_bytes = self.shape[1] * _ITEM
        self._fd = os.open(path, (os.O_RDWR | os.O_CREAT) if writable else os.O_RDONLY, 0o644)
        if writable:
            os.ftruncate(self._fd, self.shape[0] * self._row_bytes)

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def rows(self, index: Tensor) -> Tensor:
        """``[M, cols]`` copies of rows ``index [M]`` (any order, repeats allowed)."""
        unique, inverse = torch.unique(index.long(), return_inverse=True)  # sorted
        out = torch.empty((unique.numel(), self.shape[1]), dtype=torch.float32)
        if unique.numel():
            if int(unique[0]) < 0 or int(unique[-1]) >= self.shape[0]:
                raise IndexError(f"{self.path.name}: rows outside 0..{self.shape[0] - 1}")
            view = memoryview(out.numpy().data).cast("B")
            # Runs of consecutive rows: one read each.
            starts = torch.ones_like(unique, dtype=torch.bool)
            starts[1:] = unique[1:] != unique[:-1] + 1
            first = starts.nonzero().view(-1)
            ends = torch.cat([first[1:], torch.tensor([unique.numel()])])
            rb = self._row_bytes
            for lo, hi, row in zip(
                first.tolist(), ends.tolist(), unique[first].tolist(), strict=True
            ):
                self._transfer(os.preadv, view[lo * rb : hi * rb], row * rb)
        return out[inverse]

    def write(self, start: int, values: Tensor) -> None:
        """Write ``values [M, cols]`` as rows ``start..start+M-1``."""
        rows = int(values.shape[0])
        if values.dim() != 2 or values.shape[1] != self.shape[1]:
            raise ValueError(
                f"{self.path.name}: expected [M, {self.shape[1]}], got {tuple(values.shape)}"
            )
        if start < 0 or start + rows > self.shape[0]:
            raise IndexError(
                f"{self.path.name}: rows {start}..{start + rows - 1} outside 0..{self.shape[0] - 1}"
            )
        data = values.detach().to(torch.float32).contiguous().numpy()
        self._transfer(os.pwritev, memoryview(data.data).cast("B"), start * self._row_bytes)

    def _transfer(
        self, call: Callable[[int, list[memoryview], int], int], view: memoryview, offset: int
    ) -> None:
        """``preadv`` or ``pwritev`` of all of ``view`` at ``offset``, in pieces of at most
        :data:`_MAX_TRANSFER` bytes (Linux moves under 2 GiB per call) and again after a
        short transfer."""
        done = 0
        while done < len(view):
            got = call(self._fd, [view[done : done + _MAX_TRANSFER]], offset + done)
            if got <= 0:
                raise OSError(f"{self.path}: {call.__name__} stopped at byte {offset + done}")
            done += got

    @cached_property
    def tensor(self) -> Tensor:
        """The whole array over a private (copy-on-write, never written) memory map, for
        whole-array use; training reads :meth:`rows`."""
        nbytes = self.shape[0] * self._row_bytes
        if nbytes == 0:  # mmap refuses an empty file
            return torch.empty(self.shape, dtype=torch.float32)
        mapped = mmap.mmap(self._fd, nbytes, access=mmap.ACCESS_COPY)
        return torch.frombuffer(mapped, dtype=torch.float32).view(self.shape)


def seal_arrays(folder: Path, arrays: dict[str, MappedArray]) -> None:
    """Flush ``arrays`` to disk and write the index that makes ``folder`` readable."""
    for array in arrays.values():
        os.fsync(array._fd)
    shapes = {name: list(array.shape) for name, array in arrays.items()}
    with (folder / INDEX_FILE).open("w") as index:
        json.dump(shapes, index)
        index.flush()
        os.fsync(index.fileno())


def is_sealed(folder: Path) -> bool:
    """Whether ``folder``'s index reads and every array file has its full size (a folder cut
    short by a crash or power loss is not)."""
    try:
        shapes = json.loads((folder / INDEX_FILE).read_text())
        return bool(shapes) and all(
            (folder / f"{name}.f32").stat().st_size == int(rows) * int(cols) * _ITEM
            for name, (rows, cols) in shapes.items()
        )
    except (OSError, ValueError, TypeError):
        return False


def open_arrays(folder: Path) -> dict[str, MappedArray]:
    """The arrays of a sealed ``folder``, read-only, in the order they were written."""
    shapes = json.loads((folder / INDEX_FILE).read_text())
    return {
        name: MappedArray(folder / f"{name}.f32", (int(rows), int(cols)))
        for name, (rows, cols) in shapes.items()
    }


class MappedOutput(ModelOutput):
    """A :class:`ModelOutput` whose ``logits`` and ``hidden`` live in files: the fields are
    read-only maps for whole-array use; training gathers a batch's rows with :meth:`rows`."""

    def __init__(self, logits: MappedArray, hidden: list[MappedArray]) -> None:
        super().__init__(logits=logits.tensor, hidden=[h.tensor for h in hidden])
        self._logits, self._hidden = logits, hidden

    def rows(self, index: Tensor, device: torch.device, *, logits: bool = True) -> ModelOutput:
        """Every hidden layer at rows ``index [M]``, and the logits unless ``logits=False`` (a
        term that never reads them: each array costs a read per run of rows), from the files."""
        return ModelOutput(
            logits=self._logits.rows(index).to(device) if logits else None,
            hidden=[h.rows(index).to(device) for h in self._hidden],
        )
