"""Planetoid loading from the real offline Cora copy, and the one-line missing-data error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import study.data.planetoid as planetoid_mod
from study.data import load_task
from study.data.planetoid import load_planetoid, processed_dir_for
from study.errors import UserInputError


def test_cora_shapes_and_public_split(gds_data_root: Path) -> None:
    task = load_task("cora", root=gds_data_root)
    assert task.name == "cora" and task.metric == "accuracy" and not task.multilabel
    assert (task.num_features, task.num_classes) == (1433, 7)
    train, val, test = task.train[0], task.val[0], task.test[0]
    assert list(train.x.shape) == [2708, 1433]
    assert list(train.edge_index.shape) == [2, 10556]
    assert int(train.y.max()) + 1 == 7
    assert [int(d.mask.sum()) for d in (train, val, test)] == [140, 500, 1000]
    # The public split: 20 labelled training nodes per class, and disjoint splits.
    assert torch.bincount(train.y[train.mask], minlength=7).tolist() == [20] * 7
    assert not (train.mask & val.mask).any() and not (val.mask & test.mask).any()
    assert not (train.mask & test.mask).any()


def test_cora_views_share_tensors_and_graph_id(gds_data_root: Path) -> None:
    task = load_task("cora", root=gds_data_root)
    views = [task.train[0], task.val[0], task.test[0]]
    assert all(v.x is views[0].x and v.edge_index is views[0].edge_index for v in views)
    assert all(v.y is views[0].y for v in views)
    assert [v.graph_id for v in views] == [0, 0, 0]
    assert len({id(v) for v in views}) == 3
    assert all("train_mask" not in v and "val_mask" not in v for v in views)


def test_cora_found_through_env_var(gds_data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GDS_DATA_ROOT", str(gds_data_root))
    task = load_task("cora")
    assert task.train[0].num_nodes == 2708


def test_missing_root_names_path_and_env_var(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(UserInputError) as err:
        load_planetoid("Cora", root=missing, download=False)
    msg = str(err.value)
    assert str(missing / "planetoid" / "Cora" / "raw") in msg
    assert "GDS_DATA_ROOT" in msg and "\n" not in msg


def test_failed_download_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self) -> None:
        raise OSError("Cannot connect to host github.com:443\nsecond line")

    monkeypatch.setattr(planetoid_mod.Planetoid, "download", offline)
    with pytest.raises(UserInputError) as err:
        load_task("cora", root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "planetoid" / "Cora" / "raw") in msg
    assert "GDS_DATA_ROOT" in msg and "Cannot connect" in msg and "\n" not in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_read_only_data_dir_processes_into_cache(
    gds_data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    data_dir = root / "planetoid" / "Cora"
    shutil.copytree(gds_data_root / "planetoid" / "Cora" / "raw", data_dir / "raw")
    monkeypatch.setenv("GDS_CACHE_DIR", str(tmp_path / "cache"))
    assert processed_dir_for(data_dir) == data_dir / "processed"
    data_dir.chmod(0o555)  # read-only by its mode bits, which the loader respects even as root
    try:
        elsewhere = processed_dir_for(data_dir)
        assert elsewhere.parent == tmp_path / "cache" / "processed"
        assert elsewhere.name.startswith("Cora-")
        task = load_task("cora", root=root)
        assert task.train[0].num_nodes == 2708
        assert (elsewhere / "data.pt").is_file() and not (data_dir / "processed").exists()
    finally:
        data_dir.chmod(0o755)
