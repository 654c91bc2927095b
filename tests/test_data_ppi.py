"""PPI through PyG's real ``PPI`` class, on tiny files written in PPI's raw layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import study.data.ppi as ppi_mod
from study.data import load_task
from study.data.ppi import load_ppi
from study.errors import UserInputError


def _expected_sizes(raw: Path, split: str) -> list[int]:
    ids = np.load(raw / f"{split}_graph_id.npy")
    return np.bincount(ids - ids.min()).tolist()


def test_tiny_ppi_task(tiny_ppi_root: Path) -> None:
    task = load_task("ppi", root=tiny_ppi_root)
    raw = tiny_ppi_root / "ppi" / "raw"
    assert task.name == "ppi" and task.multilabel and task.metric == "micro_f1"
    assert (task.num_features, task.num_classes) == (50, 121)
    assert [len(task.train), len(task.val), len(task.test)] == [3, 2, 2]
    for graphs, split in ((task.train, "train"), (task.val, "valid"), (task.test, "test")):
        assert [g.num_nodes for g in graphs] == _expected_sizes(raw, split)
        labels = np.load(raw / f"{split}_labels.npy")
        feats = np.load(raw / f"{split}_feats.npy")
        assert torch.equal(torch.cat([g.y for g in graphs]), torch.from_numpy(labels).float())
        assert torch.allclose(torch.cat([g.x for g in graphs]), torch.from_numpy(feats))
        for g in graphs:
            assert g.y.dtype == torch.float and set(g.y.unique().tolist()) <= {0.0, 1.0}
            assert list(g.x.shape) == [g.num_nodes, 50] and list(g.y.shape) == [g.num_nodes, 121]
            assert g.mask.dtype == torch.bool and bool(g.mask.all())
    ids = [g.graph_id for g in task.train + task.val + task.test]
    assert ids == list(range(7))


def test_tiny_ppi_edges_match_json(tiny_ppi_root: Path) -> None:
    raw = tiny_ppi_root / "ppi" / "raw"
    graph = json.loads((raw / "valid_graph.json").read_text())
    sizes = _expected_sizes(raw, "valid")
    # Edges of the second validation graph, in its local ids, both directions (undirected json).
    lo = sizes[0]
    expected = set()
    for link in graph["links"]:
        s, t = link["source"], link["target"]
        if s >= lo and t >= lo:
            expected |= {(s - lo, t - lo), (t - lo, s - lo)}
    task = load_ppi(root=tiny_ppi_root)
    got = set(map(tuple, task.val[1].edge_index.t().tolist()))
    assert got == expected and len(expected) > 0


def test_missing_ppi_is_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserInputError) as err:
        load_ppi(root=tmp_path, download=False)
    assert str(tmp_path / "ppi" / "raw") in str(err.value) and "GDS_DATA_ROOT" in str(err.value)

    def offline(self) -> None:
        raise OSError("Name or service not known")

    monkeypatch.setattr(ppi_mod.PPI, "download", offline)
    with pytest.raises(UserInputError) as err:
        load_task("ppi", root=tmp_path)
    msg = str(err.value)
    assert "GDS_DATA_ROOT" in msg and "Name or service" in msg and "\n" not in msg
