"""ModelNet40 point clouds from any of the three layouts the field uses, detected under one folder.

Formats (looked for under ``<data root>/modelnet40``, in this order):

- ``text``: PointNet++'s ``modelnet40_normal_resampled/<class>/<shape>.txt`` (10000 lines of
  ``x,y,z,nx,ny,nz``), in ``raw/`` or directly below. The split comes from ``subset_split.tsv``
  (columns ``shape``, ``label``, ``official_split``; beside the folder or inside it) or, when
  absent, from the official ``modelnet40_train.txt``/``modelnet40_test.txt`` lists inside it.
- ``h5``: the PointNet/DGCNN ``modelnet40_ply_hdf5_2048/ply_data_{train,test}*.h5`` files
  (datasets ``data [M, 2048, 3]``, ``label [M, 1]``), in ``raw/`` or directly below; needs ``h5py``.
- ``off``: PyG's ``ModelNet`` layout, ``raw/<class>/{train,test}/<class>_<id>.off`` meshes, read
  with ``torch_geometric.datasets.ModelNet`` and sampled with ``SamplePoints`` (seeded).

Protocol choices, each the one the paper's code base (DGCNN) or PointNet++ makes:

- Points: the first ``num_points`` points of each stored cloud, as DGCNN does with the 2048-point
  h5 files (``data[item][:num_points]``) and PointNet++ does with the resampled text files when
  ``uniform=False`` (its default). The stored points are already spread over the surface, so no
  farthest-point sampling is needed. Normals are dropped (DGCNN uses xyz only).
- Normalisation (``normalize=True``): each cloud is centred on its centroid and scaled so that its
  farthest point lies on the unit sphere (PointNet++'s ``pc_normalize``). The h5 files are already
  normalised this way, so there it only re-centres the 1024-point subset; the text files are not.
- Validation: the official protocol has only train and test, and papers (DGCNN included) report
  the best test accuracy over epochs; selecting hyperparameters or epochs on the test set would
  make the reported test number optimistic. So a seeded ``val_fraction`` of the official train
  split is held out (stratified by class wherever a class has at least two train shapes, so a
  class never loses its only training shape), and the test split is used only for reporting.

Parsed text/mesh clouds are cached as ``.npy`` under ``processed/`` beside ``raw/`` (or in the user
cache when the data folder is read-only): ``np.loadtxt`` over thousands of files is slow.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from study.data.base import PointCloudSet, PointCloudTask
from study.data.planetoid import missing_data_error, processed_dir_for
from study.errors import UserInputError, choose
from study.fileio import atomic_write
from study.paths import data_root

MODELNET40_FORMATS = ("auto", "text", "h5", "off")
_TEXT_DIR = "modelnet40_normal_resampled"
_H5_DIR = "modelnet40_ply_hdf5_2048"
_CACHE_VERSION = 1


@dataclass
class _RawSplits:
    """Un-normalised clouds of the official splits: points ``[M, P, 3]`` float32, labels ``[M]``."""

    train_points: np.ndarray
    train_labels: np.ndarray
    test_points: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]


def load_modelnet40(
    *,
    root: str | os.PathLike | None = None,
    num_points: int = 1024,
    val_fraction: float = 0.1,
    seed: int = 0,
    normalize: bool = True,
    max_shapes: int | None = None,
    format: str = "auto",
    cache: bool = True,
) -> PointCloudTask:
    """Load ModelNet40 as a :class:`PointCloudTask` (train/val/test ``PointCloudSet``).

    Args:
        root: the data root (default: :func:`study.paths.data_root`); the data is looked for in
            ``<root>/modelnet40``.
        num_points: points per cloud ``P``; the first ``P`` of each stored cloud are kept.
        val_fraction: the share of the official train split held out for validation (seeded,
            stratified); 0 gives an empty validation set.
        seed: the seed of the validation hold-out (and of mesh sampling for the ``off`` format).
        normalize: centre each cloud and scale it into the unit sphere.
        max_shapes: if set, read at most this many shapes from each official split, taken round
            robin over the classes (first shape of every class, then the second, ...): smoke runs.
        format: ``"auto"`` (detect), ``"text"``, ``"h5"`` or ``"off"``.
        cache: read/write parsed clouds of the ``text`` and ``off`` formats as ``.npy`` files.

    Returns:
        A task with ``points [M, P, 3]`` float32 and ``labels [M]`` long per split,
        ``num_classes = len(class_names)`` (40 on the real data). Metric: accuracy.

    Raises:
        UserInputError: no data in a known layout, bad option values, or ``h5py`` missing.
    """
    choose("ModelNet40 format", format, MODELNET40_FORMATS)
    if num_points < 1:
        raise UserInputError(f"num_points must be >= 1, got {num_points}")
    if not 0.0 <= val_fraction < 1.0:
        raise UserInputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if max_shapes is not None and max_shapes < 1:
        raise UserInputError(f"max_shapes must be >= 1 or None, got {max_shapes}")
    mn_dir = data_root(root) / "modelnet40"
    fmt, where = detect_modelnet40_format(mn_dir) if format == "auto" else _locate(mn_dir, format)
    cache_dir = processed_dir_for(mn_dir) if cache else None
    if fmt == "text":
        raw = _load_text(where, num_points, max_shapes, cache_dir)
    elif fmt == "h5":
        raw = _load_h5(where, num_points, max_shapes)
    else:
        raw = _load_off(mn_dir, num_points, max_shapes, seed, cache_dir)

    train_idx, val_idx = stratified_holdout(raw.train_labels, val_fraction, seed)

    def make(points: np.ndarray, labels: np.ndarray) -> PointCloudSet:
        pts = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
        if normalize:
            pts = normalize_unit_sphere(pts)
        return PointCloudSet(pts, torch.from_numpy(labels.astype(np.int64)))

    return PointCloudTask(
        name="modelnet40",
        num_classes=len(raw.class_names),
        num_points=num_points,
        train=make(raw.train_points[train_idx], raw.train_labels[train_idx]),
        val=make(raw.train_points[val_idx], raw.train_labels[val_idx]),
        test=make(raw.test_points, raw.test_labels),
        class_names=raw.class_names,
        metric="accuracy",
    )


def normalize_unit_sphere(points: Tensor) -> Tensor:
    """Centre each cloud on its centroid and divide by its largest point norm.

    Args:
        points: ``[M, P, 3]`` clouds.

    Returns:
        ``[M, P, 3]`` clouds with centroid 0 and farthest point at distance 1 (a cloud whose
        points all coincide is only centred).
    """
    centred = points - points.mean(dim=1, keepdim=True)
    radius = centred.norm(dim=2).amax(dim=1).clamp_min(1e-12)
    return centred / radius[:, None, None]


def stratified_holdout(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices ``0..M-1`` into (keep, held-out), stratified by label, seeded.

    ``round(fraction * M)`` indices are held out. Classes with at least two members get shares
    proportional to their size (largest-remainder rounding, ties broken at random), never their
    last member; single-member classes are always kept, so every class stays trainable.

    Args:
        labels: ``[M]`` integer labels.
        fraction: the share to hold out, in ``[0, 1)``.
        seed: the seed of the tie-breaking and of which members are held out.

    Returns:
        Two sorted ``int64`` index arrays that partition ``0..M-1``.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    n_val = int(round(fraction * len(labels)))
    classes, counts = np.unique(labels, return_counts=True)
    cap = np.where(counts >= 2, counts - 1, 0)
    quota = fraction * counts * (counts >= 2)
    take = np.minimum(np.floor(quota), cap).astype(np.int64)
    order = np.lexsort((rng.random(len(classes)), -(quota - take)))
    remaining = n_val - int(take.sum())
    while remaining > 0 and (take < cap).any():
        for c in order:
            if remaining > 0 and take[c] < cap[c]:
                take[c] += 1
                remaining -= 1
    held: list[np.ndarray] = []
    for c, k in zip(classes, take, strict=True):
        if k:
            members = np.flatnonzero(labels == c)
            held.append(rng.permutation(members)[:k])
    val_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    keep = np.ones(len(labels), dtype=bool)
    keep[val_idx] = False
    return np.flatnonzero(keep).astype(np.int64), val_idx.astype(np.int64)


def round_robin_subset(labels: np.ndarray, max_shapes: int | None) -> np.ndarray:
    """The first ``max_shapes`` indices taken round robin over classes (all, in order, if None).

    Args:
        labels: ``[M]`` integer labels.
        max_shapes: how many indices to keep.

    Returns:
        Sorted ``int64`` indices: each class's first member, then each class's second, ...
    """
    labels = np.asarray(labels)
    if max_shapes is None or max_shapes >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    first = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank_in_class = np.arange(len(labels)) - first
    picked = order[np.lexsort((sorted_labels, rank_in_class))[:max_shapes]]
    return np.sort(picked).astype(np.int64)


# --- format detection ---------------------------------------------------------------------------


def detect_modelnet40_format(mn_dir: Path) -> tuple[str, Path]:
    """Which layout ``mn_dir`` holds: ``("text" | "h5" | "off", folder to read)``.

    Raises:
        UserInputError: none of the three layouts is there.
    """
    for fmt in ("text", "h5", "off"):
        found = _find(mn_dir, fmt)
        if found is not None:
            return fmt, found
    raise missing_data_error(
        "ModelNet40",
        mn_dir,
        f"modelnet40/raw/{_TEXT_DIR}/<class>/*.txt, modelnet40/{_H5_DIR}/ply_data_*.h5 "
        "or modelnet40/raw/<class>/{train,test}/*.off",
    )


def _find(mn_dir: Path, fmt: str) -> Path | None:
    if fmt == "text":
        for base in (mn_dir / "raw", mn_dir):
            if (base / _TEXT_DIR).is_dir():
                return base / _TEXT_DIR
    elif fmt == "h5":
        for base in (mn_dir / "raw", mn_dir):
            if any((base / _H5_DIR).glob("ply_data_*.h5")):
                return base / _H5_DIR
    else:
        raw = mn_dir / "raw"
        if raw.is_dir() and any(p.is_dir() for p in raw.glob("*/train")):
            return raw
    return None


def _locate(mn_dir: Path, fmt: str) -> tuple[str, Path]:
    found = _find(mn_dir, fmt)
    if found is None:
        layouts = {
            "text": f"modelnet40/raw/{_TEXT_DIR}/<class>/*.txt",
            "h5": f"modelnet40/{_H5_DIR}/ply_data_*.h5",
            "off": "modelnet40/raw/<class>/{train,test}/*.off",
        }
        raise missing_data_error(f"ModelNet40 ({fmt} format)", mn_dir, layouts[fmt])
    return fmt, found


# --- text (PointNet++ modelnet40_normal_resampled) ------------------------------------------------


def _text_index(text_dir: Path) -> tuple[list[str], list[tuple[str, int, str]]]:
    """Class names and ``(shape, label, "train" | "test")`` rows for the text layout."""
    names_file = text_dir / "modelnet40_shape_names.txt"
    if names_file.is_file():
        class_names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    else:
        class_names = sorted(p.name for p in text_dir.iterdir() if p.is_dir())
    for tsv in (text_dir.parent / "subset_split.tsv", text_dir / "subset_split.tsv"):
        if tsv.is_file():
            with tsv.open(newline="") as f:
                rows = [
                    (r["shape"], int(r["label"]), r["official_split"])
                    for r in csv.DictReader(f, delimiter="\t")
                ]
            return class_names, rows
    lists = {s: text_dir / f"modelnet40_{s}.txt" for s in ("train", "test")}
    if not all(p.is_file() for p in lists.values()):
        raise UserInputError(
            f"no split for {text_dir}: expected {text_dir.parent / 'subset_split.tsv'} or "
            f"{lists['train'].name} and {lists['test'].name} inside it"
        )
    index = {name: i for i, name in enumerate(class_names)}
    rows = []
    for split, path in lists.items():
        for shape in path.read_text().split():
            rows.append((shape, index[shape.rsplit("_", 1)[0]], split))
    return class_names, rows


def _load_text(
    text_dir: Path, num_points: int, max_shapes: int | None, cache_dir: Path | None
) -> _RawSplits:
    class_names, rows = _text_index(text_dir)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in ("train", "test"):
        split_rows = [r for r in rows if r[2] == split]
        labels = np.array([r[1] for r in split_rows], dtype=np.int64)
        chosen = round_robin_subset(labels, max_shapes)
        shapes = [split_rows[i][0] for i in chosen]
        key = {
            "v": _CACHE_VERSION,
            "fmt": "text",
            "P": num_points,
            "dir": str(text_dir.resolve()),
            "shapes": shapes,
        }
        points = _cached(
            cache_dir, "text", key, functools.partial(_parse_text, text_dir, shapes, num_points)
        )
        out[split] = (points, labels[chosen])
    return _RawSplits(*out["train"], *out["test"], class_names)


def _parse_text(text_dir: Path, shapes: list[str], num_points: int) -> np.ndarray:
    points = np.empty((len(shapes), num_points, 3), dtype=np.float32)
    for i, shape in enumerate(shapes):
        path = text_dir / shape.rsplit("_", 1)[0] / f"{shape}.txt"
        if not path.is_file():
            raise UserInputError(
                f"ModelNet40 shape {shape!r} is listed in the split but {path} is missing"
            )
        # Only the first num_points rows are used, so only they are parsed (about 10x faster).
        cloud = np.loadtxt(
            path, delimiter=",", dtype=np.float32, max_rows=num_points, usecols=(0, 1, 2)
        )
        if cloud.shape[0] < num_points:
            raise UserInputError(
                f"num_points={num_points} exceeds the {cloud.shape[0]} points in {path}"
            )
        points[i] = cloud
    return points


# --- h5 (PointNet / DGCNN modelnet40_ply_hdf5_2048) -----------------------------------------------


def _load_h5(h5_dir: Path, num_points: int, max_shapes: int | None) -> _RawSplits:
    try:
        import h5py  # lazy: only this format needs it
    except ImportError:
        raise UserInputError(
            f"reading {h5_dir} needs h5py: pip install h5py (or graph-distill-study[h5])"
        ) from None
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in ("train", "test"):
        files = sorted(h5_dir.glob(f"ply_data_{split}*.h5"))
        if not files:
            raise missing_data_error(
                "ModelNet40 (h5)", h5_dir, f"modelnet40/{_H5_DIR}/ply_data_{split}*.h5"
            )
        data, labels = [], []
        for path in files:
            with h5py.File(path, "r") as f:
                stored = f["data"].shape[1]
                if num_points > stored:
                    raise UserInputError(
                        f"num_points={num_points} exceeds the {stored} points in {path}"
                    )
                data.append(np.asarray(f["data"][:, :num_points, :3], dtype=np.float32))
                labels.append(np.asarray(f["label"][:], dtype=np.int64).reshape(-1))
        points, label = np.concatenate(data), np.concatenate(labels)
        chosen = round_robin_subset(label, max_shapes)
        out[split] = (points[chosen], label[chosen])
    names_file = h5_dir / "shape_names.txt"
    if names_file.is_file():
        class_names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    else:
        top = int(max(out["train"][1].max(initial=-1), out["test"][1].max(initial=-1)))
        class_names = [str(i) for i in range(max(top + 1, 40))]
    return _RawSplits(*out["train"], *out["test"], class_names)


# --- off (PyG ModelNet meshes) --------------------------------------------------------------------


def _load_off(
    mn_dir: Path, num_points: int, max_shapes: int | None, seed: int, cache_dir: Path | None
) -> _RawSplits:
    from torch_geometric.datasets import ModelNet
    from torch_geometric.transforms import SamplePoints

    class _ModelNet(ModelNet):
        def __init__(self, root: str, train: bool, processed: Path) -> None:
            self._gds_processed_dir = str(processed)
            super().__init__(root, name="40", train=train)

        @property
        def processed_dir(self) -> str:
            return self._gds_processed_dir

    class_names = sorted(p.parent.name for p in (mn_dir / "raw").glob("*/train"))
    processed = processed_dir_for(mn_dir)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in ("train", "test"):
        dataset = _ModelNet(str(mn_dir), split == "train", processed)
        labels = dataset.y.numpy().astype(np.int64).reshape(-1)
        chosen = round_robin_subset(labels, max_shapes)

        def sample(chosen: np.ndarray = chosen, dataset: ModelNet = dataset) -> np.ndarray:
            sampler = SamplePoints(num_points)
            # SamplePoints draws from the global RNG: fork it so the sample is seeded and the
            # caller's RNG state is left alone.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                clouds = [sampler(dataset[int(i)]).pos for i in chosen]
            return torch.stack(clouds).numpy().astype(np.float32)

        key = {
            "v": _CACHE_VERSION,
            "fmt": "off",
            "P": num_points,
            "seed": seed,
            "dir": str(mn_dir.resolve()),
            "split": split,
            "chosen": chosen.tolist(),
        }
        out[split] = (_cached(cache_dir, "off", key, sample), labels[chosen])
    return _RawSplits(*out["train"], *out["test"], class_names)


# --- cache ----------------------------------------------------------------------------------------


def _cached(
    cache_dir: Path | None, prefix: str, key: dict[str, Any], build: Callable[[], np.ndarray]
) -> np.ndarray:
    """``build()``'s array, read from / written to ``cache_dir`` under a hash of ``key``."""
    if cache_dir is None:
        return build()
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"modelnet40_{prefix}_P{key['P']}_{digest}.npy"
    if path.is_file():
        return np.load(path)
    array = build()

    def save(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: np.save would add ".npy" to a path
            np.save(f, array)

    try:
        # Atomic: concurrent trials may load the same data at once.
        atomic_write(path, save)
    except OSError:
        pass  # a cache we cannot write only costs time
    return array
