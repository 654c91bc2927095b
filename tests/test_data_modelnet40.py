"""ModelNet40 in its three layouts: the real text subset, a tiny h5 file, tiny PyG .off meshes."""

from __future__ import annotations

import csv
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from study.data import load_task
from study.data.modelnet40 import (
    _cached,
    detect_modelnet40_format,
    load_modelnet40,
    round_robin_subset,
    stratified_holdout,
)
from study.errors import UserInputError


def _pc_normalize(pc: np.ndarray) -> np.ndarray:
    """PointNet++'s pc_normalize, written out independently."""
    pc = pc - pc.mean(axis=0)
    return pc / np.sqrt((pc**2).sum(axis=1)).max()


def _tsv_rows(root: Path) -> list[dict[str, str]]:
    with open(root / "modelnet40" / "raw" / "subset_split.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_real_subset(gds_data_root: Path) -> None:
    task = load_task("modelnet40", root=gds_data_root)
    rows = _tsv_rows(gds_data_root)
    assert (
        task.num_classes == 40 and len(task.class_names) == 40 and task.class_names[0] == "airplane"
    )
    assert len(task.train) + len(task.val) == 127 and len(task.test) == 29
    assert len(task.val) == round(0.1 * 127)
    for s in (task.train, task.val, task.test):
        assert s.points.dtype == torch.float32 and s.points.shape[1:] == (1024, 3)
        assert s.labels.dtype == torch.long
        assert torch.allclose(s.points.mean(dim=1), torch.zeros(1, 3), atol=1e-5)
        assert torch.allclose(s.points.norm(dim=2).amax(dim=1), torch.ones(1), atol=1e-5)
    train_counts = Counter(int(r["label"]) for r in rows if r["official_split"] == "train")
    got = Counter(task.train.labels.tolist()) + Counter(task.val.labels.tolist())
    assert got == train_counts
    # Stratified hold-out never takes a class's only training shape.
    assert set(task.train.labels.tolist()) == set(train_counts)
    # The test split keeps the tsv order; its first cloud is the first 1024 rows, normalised.
    first_test = next(r for r in rows if r["official_split"] == "test")
    cls = first_test["shape"].rsplit("_", 1)[0]
    path = (
        gds_data_root
        / "modelnet40/raw/modelnet40_normal_resampled"
        / cls
        / f"{first_test['shape']}.txt"
    )
    expected = _pc_normalize(np.loadtxt(path, delimiter=",")[:1024, :3])
    assert np.allclose(task.test.points[0].numpy(), expected, atol=1e-5)
    assert task.test.labels[0] == int(first_test["label"])


def test_cache_and_seeded_holdout(gds_data_root: Path) -> None:
    a = load_modelnet40(root=gds_data_root, seed=0)
    processed = gds_data_root / "modelnet40" / "processed"
    assert list(processed.glob("modelnet40_text_P1024_*.npy"))
    assert not [p.name for p in processed.iterdir() if ".partial-" in p.name]  # no half-writes
    b = load_modelnet40(root=gds_data_root, seed=0)
    c = load_modelnet40(root=gds_data_root, seed=1, cache=False)
    assert torch.equal(a.val.points, b.val.points) and torch.equal(a.test.points, b.test.points)
    assert torch.equal(a.test.points, c.test.points)
    assert not torch.equal(a.val.labels, c.val.labels) or not torch.equal(
        a.val.points, c.val.points
    )


def test_max_shapes_round_robin_and_num_points(gds_data_root: Path) -> None:
    rows = _tsv_rows(gds_data_root)
    train_classes = sorted({int(r["label"]) for r in rows if r["official_split"] == "train"})
    test_classes = sorted({int(r["label"]) for r in rows if r["official_split"] == "test"})
    k = len(train_classes)
    task = load_task("modelnet40", root=gds_data_root, max_shapes=k, num_points=256)
    # One training shape per class: nothing can be held out, every class is kept.
    assert sorted(task.train.labels.tolist()) == train_classes and len(task.val) == 0
    assert task.train.points.shape == (k, 256, 3)
    small = load_task("modelnet40", root=gds_data_root, max_shapes=3, num_points=256)
    assert small.test.labels.tolist() == test_classes[:3]
    with pytest.raises(UserInputError, match="num_points=20000"):
        load_task("modelnet40", root=gds_data_root, num_points=20000, max_shapes=2)


def test_official_train_test_lists(gds_data_root: Path, tmp_path: Path) -> None:
    src = gds_data_root / "modelnet40" / "raw" / "modelnet40_normal_resampled"
    dst = tmp_path / "modelnet40" / "raw" / "modelnet40_normal_resampled"
    shapes = {"train": ["airplane_0126", "bed_0026", "bed_0089"], "test": ["bed_0601"]}
    for names in shapes.values():
        for shape in names:
            cls = shape.rsplit("_", 1)[0]
            (dst / cls).mkdir(parents=True, exist_ok=True)
            shutil.copy(src / cls / f"{shape}.txt", dst / cls / f"{shape}.txt")
    shutil.copy(src / "modelnet40_shape_names.txt", dst)
    for split, names in shapes.items():
        (dst / f"modelnet40_{split}.txt").write_text("\n".join(names) + "\n")
    task = load_task("modelnet40", root=tmp_path, num_points=32, val_fraction=0.0)
    assert task.train.labels.tolist() == [0, 2, 2] and task.test.labels.tolist() == [2]
    assert task.num_classes == 40
    (dst / "modelnet40_test.txt").unlink()
    with pytest.raises(UserInputError, match="subset_split.tsv"):
        load_task("modelnet40", root=tmp_path, num_points=32, cache=False)


def test_stratified_holdout_properties() -> None:
    labels = np.array([0] * 9 + [1] * 4 + [2] * 1 + [3] * 2 + [4] * 20)
    keep, held = stratified_holdout(labels, 0.25, seed=3)
    assert len(held) == round(0.25 * len(labels))
    assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(len(labels)))
    assert 2 not in labels[held]  # the singleton class stays in training
    for c in range(5):
        assert (labels[keep] == c).sum() >= 1
    counts = Counter(labels[held].tolist())
    assert counts[4] == 5 and counts[0] in (2, 3)  # proportional shares
    again = stratified_holdout(labels, 0.25, seed=3)
    assert np.array_equal(again[1], held)
    assert len(stratified_holdout(labels, 0.0, seed=0)[1]) == 0


def test_round_robin_subset() -> None:
    labels = np.array([2, 0, 0, 1, 2, 0])
    assert round_robin_subset(labels, 3).tolist() == [0, 1, 3]
    assert round_robin_subset(labels, 5).tolist() == [0, 1, 2, 3, 4]
    assert round_robin_subset(labels, None).tolist() == list(range(6))


def _write_h5(root: Path) -> tuple[np.ndarray, np.ndarray]:
    h5py = pytest.importorskip("h5py")
    folder = root / "modelnet40" / "modelnet40_ply_hdf5_2048"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    data = rng.normal(size=(7, 2048, 3)).astype(np.float32)
    label = np.array([[0], [1], [2], [0], [1], [2], [1]], dtype=np.uint8)
    for name, sl in (
        ("ply_data_train0.h5", slice(0, 3)),
        ("ply_data_train1.h5", slice(3, 5)),
        ("ply_data_test0.h5", slice(5, 7)),
    ):
        with h5py.File(folder / name, "w") as f:
            f.create_dataset("data", data=data[sl])
            f.create_dataset("label", data=label[sl])
    (folder / "shape_names.txt").write_text("airplane\nbathtub\nbed\n")
    return data, label.reshape(-1).astype(np.int64)


def test_h5_tiny_file(tmp_path: Path) -> None:
    data, label = _write_h5(tmp_path)
    assert detect_modelnet40_format(tmp_path / "modelnet40")[0] == "h5"
    task = load_task("modelnet40", root=tmp_path, num_points=16, val_fraction=0.0)
    assert task.class_names == ["airplane", "bathtub", "bed"] and task.num_classes == 3
    assert task.train.labels.tolist() == label[:5].tolist()
    assert task.test.labels.tolist() == label[5:].tolist()
    expected = np.stack([_pc_normalize(d[:16]) for d in data[:5]])
    assert np.allclose(task.train.points.numpy(), expected, atol=1e-5)
    with pytest.raises(UserInputError, match="num_points=4096"):
        load_task("modelnet40", root=tmp_path, num_points=4096)


def test_h5_without_h5py_is_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_h5(tmp_path)
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(UserInputError, match="h5py"):
        load_task("modelnet40", root=tmp_path, num_points=16)


def test_pyg_off_meshes(tmp_path: Path) -> None:
    raw = tmp_path / "modelnet40" / "raw"
    # PyG's ModelNet checks for these ten class folders; each holds scaled tetrahedra.
    classes = [
        "bathtub",
        "bed",
        "chair",
        "desk",
        "dresser",
        "monitor",
        "night_stand",
        "sofa",
        "table",
        "toilet",
    ]
    faces = "3 0 1 2\n3 0 1 3\n3 0 2 3\n3 1 2 3\n"
    for k, name in enumerate(classes):
        for split, n in (("train", 2), ("test", 1)):
            (raw / name / split).mkdir(parents=True)
            for i in range(n):
                s = k + 1
                (raw / name / split / f"{name}_{i:04d}.off").write_text(
                    f"OFF\n4 4 0\n0 0 0\n{s} 0 0\n0 {s} 0\n0 0 {s}\n{faces}"
                )
    task = load_task("modelnet40", root=tmp_path, num_points=64, val_fraction=0.5, seed=1)
    assert task.class_names == classes and task.num_classes == 10
    assert (len(task.train), len(task.val), len(task.test)) == (10, 10, 10)
    assert sorted(task.test.labels.tolist()) == list(range(10))
    again = load_modelnet40(root=tmp_path, num_points=64, val_fraction=0.5, seed=1, cache=False)
    assert torch.equal(task.test.points, again.test.points)
    # Points lie on the tetrahedron's surface: before normalisation one coordinate is 0 or
    # x + y + z = s; normalisation is affine, so check it on the un-normalised cloud.
    raw_task = load_modelnet40(root=tmp_path, num_points=64, normalize=False, val_fraction=0.0)
    pts, lab = raw_task.test.points, raw_task.test.labels
    s = (lab + 1).float()[:, None]
    on_face = (pts.abs().amin(dim=2) < 1e-5) | ((pts.sum(dim=2) - s).abs() < 1e-4)
    assert bool(on_face.all())


def test_missing_modelnet40(tmp_path: Path) -> None:
    with pytest.raises(UserInputError) as err:
        load_task("modelnet40", root=tmp_path)
    assert str(tmp_path / "modelnet40") in str(err.value) and "GDS_DATA_ROOT" in str(err.value)
    with pytest.raises(UserInputError, match="format"):
        load_task("modelnet40", root=tmp_path, format="ply")


def test_cache_write_is_atomic_and_optional(tmp_path: Path) -> None:
    built: list[int] = []

    def build() -> np.ndarray:
        built.append(1)
        return np.arange(6, dtype=np.float32).reshape(1, 2, 3)

    key = {"v": 1, "P": 2}
    first = _cached(tmp_path / "cache", "text", key, build)
    (cached,) = (tmp_path / "cache").iterdir()
    assert cached.name.startswith("modelnet40_text_P2_") and cached.suffix == ".npy"
    assert np.array_equal(np.load(cached), first)
    again = _cached(tmp_path / "cache", "text", key, build)
    assert np.array_equal(again, first) and len(built) == 1  # read back, not rebuilt
    # A cache folder that cannot be made (a file is in the way) only costs the rebuild.
    (tmp_path / "blocked").write_text("not a folder")
    blocked = _cached(tmp_path / "blocked" / "cache", "text", key, build)
    assert np.array_equal(blocked, first) and len(built) == 2
