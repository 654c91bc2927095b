"""PPI (protein-protein interaction, 24 graphs, 121 labels) through PyG's real ``PPI`` class.

The raw files are looked for at ``<data root>/ppi/raw/{train,valid,test}_{graph.json,feats.npy,
labels.npy,graph_id.npy}`` (the GraphSAGE/DGL layout PyG reads). PyG downloads them when missing;
when that fails (no network), the user gets one line naming the folder and ``GDS_DATA_ROOT``.
"""

from __future__ import annotations

import os
from itertools import product
from pathlib import Path

import torch
from torch_geometric.data import Data
from torch_geometric.datasets import PPI

from study.data.base import NodeTask
from study.data.planetoid import (
    is_writable_dir,
    missing_data_error,
    nearest_existing_dir,
    processed_dir_for,
)
from study.paths import data_root

_PPI_SPLITS = ("train", "valid", "test")
_PPI_FILES = ("feats.npy", "graph_id.npy", "graph.json", "labels.npy")


class _PPI(PPI):
    """PyG's ``PPI`` with ``processed/`` placed by :func:`processed_dir_for`."""

    def __init__(self, root: str, split: str, processed_dir: Path) -> None:
        self._gds_processed_dir = str(processed_dir)
        super().__init__(root, split=split)

    @property
    def processed_dir(self) -> str:
        return self._gds_processed_dir


def ppi_raw_file_names() -> list[str]:
    """The twelve raw file names PyG's ``PPI`` reads, e.g. ``train_graph.json``."""
    return [f"{s}_{f}" for s, f in product(_PPI_SPLITS, _PPI_FILES)]


def load_ppi(*, root: str | os.PathLike | None = None, download: bool = True) -> NodeTask:
    """Load PPI with its standard split: 20 train, 2 validation and 2 test graphs.

    Args:
        root: the data root (default: :func:`study.paths.data_root`); PyG's ``PPI`` root is
            ``<root>/ppi`` and its raw files live in ``<root>/ppi/raw``.
        download: let PyG try to download missing raw files (needs network).

    Returns:
        A multi-label :class:`NodeTask` (metric micro-F1). Each graph is a ``Data`` with
        ``x [N, 50]``, ``edge_index [2, E]``, ``y [N, 121]`` float 0/1, ``mask [N]`` all True
        (inductive: every node of a graph is scored) and ``graph_id``, an int unique across the
        three splits (train ``0..19``, val ``20..21``, test ``22..23`` on the real data).

    Raises:
        UserInputError: the raw files are missing and cannot be downloaded.
    """
    dataset_dir = data_root(root) / "ppi"
    raw_dir = dataset_dir / "raw"
    have_raw = all((raw_dir / name).is_file() for name in ppi_raw_file_names())
    layout = "ppi/raw/{train,valid,test}_{graph.json,feats.npy,labels.npy,graph_id.npy}"
    if not have_raw and not download:
        raise missing_data_error("PPI", raw_dir, layout)
    if not have_raw and not is_writable_dir(nearest_existing_dir(dataset_dir)):
        raise missing_data_error(
            "PPI", raw_dir, layout, f"{nearest_existing_dir(dataset_dir)} is read-only"
        )
    processed = processed_dir_for(dataset_dir)
    splits: dict[str, list[Data]] = {}
    next_id = 0
    for split in ("train", "val", "test"):
        try:
            dataset = _PPI(str(dataset_dir), split, processed)
        except Exception as exc:
            if have_raw:
                raise  # the files are there but unreadable: a real error, keep its traceback
            raise missing_data_error(
                "PPI", raw_dir, layout, f"{type(exc).__name__}: {exc}"
            ) from None
        graphs = []
        for data in dataset:
            data.mask = torch.ones(data.num_nodes, dtype=torch.bool)
            data.graph_id = next_id
            next_id += 1
            graphs.append(data)
        splits[split] = graphs
    first = splits["train"][0]
    return NodeTask(
        name="ppi",
        num_features=int(first.x.shape[1]),
        num_classes=int(first.y.shape[1]),
        multilabel=True,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        metric="micro_f1",
    )
