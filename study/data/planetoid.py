"""Planetoid citation graphs (Cora, CiteSeer, PubMed) through PyG's ``Planetoid``, offline-first.

The raw files are looked for at ``<data root>/planetoid/<Name>/raw`` (PyG's own layout, so a copy
of ``shared/data/planetoid`` works as is). PyG downloads them when they are missing; when that
fails too (no network), the user gets one line naming the folder and ``GDS_DATA_ROOT``.

This module also holds the small helpers the other PyG-backed loaders share: where to put PyG's
``processed/`` folder when the data folder is read-only, the one-line "data missing" error, and the
construction of a transductive :class:`~study.data.base.NodeTask` from one graph and three masks.
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path

from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.datasets import Planetoid

from study.data.base import NodeTask, sorted_by_target
from study.errors import UserInputError, choose
from study.paths import DATA_ROOT_ENV, data_root, user_cache_dir

#: Planetoid names as PyG spells them (also the folder names under ``planetoid/``).
PLANETOID_NAMES = ("Cora", "CiteSeer", "PubMed")
_RAW_SUFFIXES = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")


def processed_dir_for(dataset_dir: Path) -> Path:
    """Where PyG may write ``processed/`` for the dataset stored in ``dataset_dir``.

    ``dataset_dir/processed`` when it already exists or ``dataset_dir`` (or, before a download
    creates it, its nearest existing parent) is writable: PyG's default. Otherwise a folder in
    the user cache keyed by the data folder's absolute path, so a read-only data copy (a shared
    mount) needs no manual copying.
    """
    own = dataset_dir / "processed"
    if own.is_dir() or is_writable_dir(nearest_existing_dir(dataset_dir)):
        return own
    key = hashlib.sha1(str(dataset_dir.resolve()).encode()).hexdigest()[:16]
    return user_cache_dir() / "processed" / f"{dataset_dir.name}-{key}"


def missing_data_error(what: str, looked_in: Path, layout: str, reason: str = "") -> UserInputError:
    """The one-line error for data that is neither on disk nor downloadable.

    Args:
        what: the dataset's display name, e.g. ``"Cora"``.
        looked_in: the folder that should have held the raw files.
        layout: the path, relative to the data root, that a copy of the data must contain.
        reason: why a download failed, if one was tried (only its first line is kept).
    """
    why = f" and could not be downloaded ({reason.splitlines()[0][:160]})" if reason else ""
    return UserInputError(
        f"{what} data not found in {looked_in}{why}: point {DATA_ROOT_ENV} at a copy of the data, "
        f"e.g. {DATA_ROOT_ENV}=/path/to/data containing {layout}"
    )


def graph_view(data: Data, mask: Tensor, graph_id: int) -> Data:
    """A shallow copy of ``data`` whose ``mask`` is ``mask``; tensors are shared, not copied.

    Several views of one graph therefore share ``x``/``edge_index``/``y`` (a cache keyed by
    ``id(view.x)`` or by ``view.graph_id`` sees one graph), while each carries its own mask.
    """
    view = copy.copy(data)
    for key in ("train_mask", "val_mask", "test_mask"):
        if key in view:
            del view[key]
    view.mask = mask
    view.graph_id = graph_id
    return view


def transductive_task(
    name: str,
    data: Data,
    train_mask: Tensor,
    val_mask: Tensor,
    test_mask: Tensor,
    num_classes: int,
) -> NodeTask:
    """A single-graph, single-label :class:`NodeTask`: three views of ``data``, one per split.

    Args:
        name: the task name.
        data: the graph, with ``x [N, F]``, ``edge_index [2, E]`` and ``y [N]`` (its edges are
            stored sorted by target: :func:`~study.data.base.sorted_by_target`).
        train_mask, val_mask, test_mask: ``[N]`` bool masks of the nodes each split scores.
        num_classes: the number of classes ``C`` (labels are ``0..C-1``).
    """
    data = sorted_by_target(data)
    return NodeTask(
        name=name,
        num_features=int(data.x.shape[1]),
        num_classes=num_classes,
        multilabel=False,
        train=[graph_view(data, train_mask, 0)],
        val=[graph_view(data, val_mask, 0)],
        test=[graph_view(data, test_mask, 0)],
        metric="accuracy",
    )


class _Planetoid(Planetoid):
    """PyG's ``Planetoid`` with ``processed/`` placed by :func:`processed_dir_for`."""

    def __init__(self, root: str, name: str, processed_dir: Path) -> None:
        self._gds_processed_dir = str(processed_dir)
        super().__init__(root, name)

    @property
    def processed_dir(self) -> str:
        return self._gds_processed_dir


def load_planetoid(
    name: str, *, root: str | os.PathLike | None = None, download: bool = True
) -> NodeTask:
    """Load a Planetoid citation graph with its public split (20 labels per class, 500/1000).

    Args:
        name: ``"Cora"``, ``"CiteSeer"`` or ``"PubMed"``.
        root: the data root (default: :func:`study.paths.data_root`); the raw files are looked
            for in ``<root>/planetoid/<name>/raw``.
        download: let PyG try to download missing raw files (needs network).

    Returns:
        A :class:`NodeTask` whose three splits each hold one view of the same graph
        (``x [N, F]``, ``edge_index [2, E]``, ``y [N]``, ``mask [N]``, ``graph_id = 0``); the
        views share their tensors and differ only in ``mask``. Metric: accuracy.

    Raises:
        UserInputError: unknown name, or the raw files are missing and cannot be downloaded.
    """
    choose("Planetoid dataset", name, PLANETOID_NAMES)
    base = data_root(root) / "planetoid"
    dataset_dir = base / name
    raw_dir = dataset_dir / "raw"
    have_raw = all((raw_dir / f"ind.{name.lower()}.{s}").is_file() for s in _RAW_SUFFIXES)
    layout = f"planetoid/{name}/raw/ind.{name.lower()}.*"
    if not have_raw and not download:
        raise missing_data_error(name, raw_dir, layout)
    if not have_raw and not is_writable_dir(nearest_existing_dir(dataset_dir)):
        raise missing_data_error(
            name, raw_dir, layout, f"{nearest_existing_dir(dataset_dir)} is read-only"
        )
    try:
        dataset = _Planetoid(str(base), name, processed_dir_for(dataset_dir))
    except Exception as exc:
        if have_raw:
            raise  # the files are there but unreadable: a real error, keep its traceback
        raise missing_data_error(name, raw_dir, layout, f"{type(exc).__name__}: {exc}") from None
    data = dataset[0]
    return transductive_task(
        name.lower(), data, data.train_mask, data.val_mask, data.test_mask, dataset.num_classes
    )


def load_cora(*, root: str | os.PathLike | None = None, download: bool = True) -> NodeTask:
    """Planetoid Cora (see :func:`load_planetoid`)."""
    return load_planetoid("Cora", root=root, download=download)


def load_citeseer(*, root: str | os.PathLike | None = None, download: bool = True) -> NodeTask:
    """Planetoid CiteSeer (see :func:`load_planetoid`)."""
    return load_planetoid("CiteSeer", root=root, download=download)


def load_pubmed(*, root: str | os.PathLike | None = None, download: bool = True) -> NodeTask:
    """Planetoid PubMed (see :func:`load_planetoid`)."""
    return load_planetoid("PubMed", root=root, download=download)


def is_writable_dir(path: Path) -> bool:
    """Whether ``path`` may be written: ``os.access`` says so and some write bit is set.

    The mode check matters for root, whom ``os.access`` always allows: a folder its owner made
    read-only (a shared data copy) is left alone even then.
    """
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)


def nearest_existing_dir(path: Path) -> Path:
    """The nearest existing ancestor of ``path`` (itself if it exists)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
