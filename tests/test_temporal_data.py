"""Temporal graphs as tasks: nodes in the right windows, snapshots without later edges, the
generator deterministic and O(E), and every bad temporal input one line with exit 2."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch_geometric.data import Data

from study.catalogs import TemporalSplit
from study.cli import main
from study.config import parse_study_spec, teacher_hash
from study.data.registry import load_dataset, load_task
from study.data.temporal import split_times, synthetic_temporal, temporal_task
from study.errors import UserInputError
from tests.studies import tiny_study


def small_temporal(n: int = 10) -> Data:
    """Nodes 0..n-1 labelled at times 0..n-1; edge (i -> i+1) and back at time i + 1 (when the
    later node arrives); node n-1 unlabelled (NaN)."""
    src = torch.arange(n - 1)
    edge_index = torch.cat([torch.stack([src, src + 1]), torch.stack([src + 1, src])], dim=1)
    node_time = torch.arange(n, dtype=torch.float64)
    node_time[-1] = float("nan")
    return Data(
        x=torch.randn(n, 3),
        edge_index=edge_index,
        y=torch.arange(n) % 2,
        edge_time=(src + 1).double().repeat(2),
        node_time=node_time,
    )


def test_nodes_fall_in_their_windows_and_each_view_holds_the_edges_known_at_its_cut() -> None:
    data = small_temporal()
    task = temporal_task(data, 3.0, 6.0)
    train, val, test = task.train[0], task.val[0], task.test[0]
    assert train.mask.nonzero().view(-1).tolist() == [0, 1, 2, 3]  # <= t1
    assert val.mask.nonzero().view(-1).tolist() == [4, 5, 6]  # (t1, t2]
    assert test.mask.nonzero().view(-1).tolist() == [7, 8]  # > t2; node 9 is unlabelled
    assert float(train.edge_time.max()) == 3.0 and train.edge_index.shape[1] == 6
    assert float(val.edge_time.max()) == 6.0 and val.edge_index.shape[1] == 12
    assert test.edge_index.shape[1] == data.edge_index.shape[1]
    # Time order kept: each view is a prefix-in-time of the same edges, never a shuffle.
    keep = data.edge_time <= 3.0
    assert torch.equal(train.edge_index, data.edge_index[:, keep])
    # Separate graphs: nothing cached for one view (keyed by graph_id) is read for another.
    assert len({train.graph_id, val.graph_id, test.graph_id}) == 3
    assert train.x is val.x is test.x


def test_quantile_cuts_count_labelled_nodes_in_time_order() -> None:
    node_time = torch.tensor([5.0, 1.0, 3.0, float("nan"), 2.0, 4.0])
    assert split_times(node_time, 0.4, 0.8) == (2.0, 4.0)  # 2 of 5, then 4 of 5
    assert split_times(node_time, 2.5, 3.5, "time") == (2.5, 3.5)


def test_synthetic_temporal_train_view_has_no_edge_after_t1_and_is_deterministic() -> None:
    task = load_task("synthetic_temporal", num_nodes=300, seed=3)
    again = load_task("synthetic_temporal", num_nodes=300, seed=3)
    data = synthetic_temporal(num_nodes=300, seed=3)
    t1, t2 = split_times(data.node_time, 0.6, 0.8)
    train = task.train[0]
    assert float(train.edge_time.max()) <= t1 < float(data.edge_time.max())
    assert float(task.val[0].edge_time.max()) <= t2
    assert bool((data.node_time[train.mask] <= t1).all())
    assert int(train.mask.sum()) == 180 and int(task.val[0].mask.sum()) == 60
    assert torch.equal(train.edge_index, again.train[0].edge_index)
    assert torch.equal(task.test[0].x, again.test[0].x)
    other = synthetic_temporal(num_nodes=300, seed=4)
    assert not torch.equal(other.edge_time, data.edge_time)
    # Both directions, one time per pair, no self-loops, every edge known after both ends.
    ei = data.edge_index
    assert bool((ei[0] != ei[1]).all())
    pairs = set(zip(ei[0].tolist(), ei[1].tolist(), strict=True))
    assert all((d, s) in pairs for s, d in pairs)
    assert len(pairs) == ei.shape[1]
    ends = torch.maximum(data.node_time[ei[0]], data.node_time[ei[1]])
    assert bool((data.edge_time >= ends - 1e-12).all())
    assert float(data.edge_time.max()) < 1.0  # the horizon


def test_revealing_edges_come_reveal_lag_after_the_label_and_join_one_class() -> None:
    data = synthetic_temporal(num_nodes=400, arrival_edges=0, reveal_edges=4, reveal_lag=0.3)
    ei, t = data.edge_index, data.edge_time
    assert bool((data.y[ei[0]] == data.y[ei[1]]).all())
    later = torch.maximum(data.node_time[ei[0]], data.node_time[ei[1]])
    earlier = torch.minimum(data.node_time[ei[0]], data.node_time[ei[1]])
    # Each pair's time is the lag after one end's label (whichever revealed first).
    assert bool((t >= earlier + 0.3 - 1e-9).all())
    assert bool((t <= later + 0.3 + 1e-9).all())


def test_generator_memory_is_linear_in_edges() -> None:
    data = synthetic_temporal(num_nodes=20_000, arrival_edges=2, reveal_edges=2)
    # An N x N draw would be 400M entries; the edges are about 2 * N * 4 here.
    assert data.edge_index.shape[1] < 20_000 * 9


def _write(tmp_path: Path, data: Any, split: dict | None = None, name: str = "t") -> Path:
    torch.save(data, tmp_path / "graph.pt")
    dataset: dict[str, Any] = {"path": "graph.pt"}
    if split is not None:
        dataset["split"] = split
    study = tiny_study(name, dataset=dataset)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_a_user_temporal_graph_file_is_split_chronologically(tmp_path: Path) -> None:
    data = small_temporal()
    torch.save(data, tmp_path / "graph.pt")
    task = load_dataset(
        path=str(tmp_path / "graph.pt"), split={"train_until": 3, "val_until": 6, "by": "time"}
    )
    assert task.train[0].mask.nonzero().view(-1).tolist() == [0, 1, 2, 3]
    assert float(task.train[0].edge_time.max()) == 3.0
    assert task.num_classes == 2
    path = _write(tmp_path, data, {"train_until": 3.0, "val_until": 6.0, "by": "time"})
    assert main(["validate", str(path)]) == 0


def test_a_never_scored_node_may_carry_any_label(tmp_path: Path) -> None:
    # Unlabelled nodes (node_time NaN) often hold y = -1: only scored nodes' ids are read.
    data = small_temporal()
    data.y[-1] = -1
    torch.save(data, tmp_path / "graph.pt")
    task = load_dataset(
        path=str(tmp_path / "graph.pt"), split={"train_until": 3, "val_until": 6, "by": "time"}
    )
    assert task.num_classes == 2
    data.y[0] = -1  # a scored node with a negative id is still refused
    torch.save(data, tmp_path / "graph.pt")
    with pytest.raises(UserInputError, match="class ids >= 0"):
        load_dataset(path=str(tmp_path / "graph.pt"))


def _edge_time_short() -> Data:
    data = small_temporal()
    data.edge_time = data.edge_time[:-1]
    return data


def _no_node_time() -> Data:
    data = small_temporal()
    del data.node_time
    return data


def _with_masks() -> Data:
    data = small_temporal()
    data.train_mask = torch.ones(10, dtype=torch.bool)
    return data


def _static() -> Data:
    data = small_temporal()
    del data.node_time, data.edge_time
    return data


@pytest.mark.parametrize(
    ("make", "split", "needles"),
    [
        (_edge_time_short, None, ["dataset.path", "graph.pt.edge_time", "expected [18]", "(17,)"]),
        (_no_node_time, None, ["dataset.path", "graph.pt.node_time: missing", "[10]"]),
        (_with_masks, None, ["graph.pt.train_mask", "split by node_time", "drop the masks"]),
        (
            small_temporal,
            {"train_until": 0.8, "val_until": 0.5},
            ["dataset.split", "train_until (0.8) must be below val_until (0.5)"],
        ),
        (
            small_temporal,
            {"train_until": 0.5, "val_until": 1.5},
            ["dataset.split", "0 < train_until < val_until < 1"],
        ),
        (
            small_temporal,
            {"train_until": 3.0, "val_until": 3.5, "by": "time"},
            ["dataset.split", "the val split is empty", "(3, 3.5]"],
        ),
        (small_temporal, {"train_until": 0.6, "until": 0.8}, ["dataset.split.until", "unknown"]),
        (_static, {"train_until": 0.6, "val_until": 0.8}, ["dataset.split", "node_time"]),
    ],
    ids=[
        "edge-time-length",
        "no-node-time",
        "masks",
        "t1>=t2",
        "quantile>1",
        "empty",
        "key",
        "static",
    ],
)
def test_bad_temporal_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Any, split: Any, needles: list[str]
) -> None:
    path = _write(tmp_path, make(), split)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{path}: " in err, err
    for needle in needles:
        assert needle in err, err


def test_split_on_a_dataset_without_times_is_refused_by_name() -> None:
    study = tiny_study("s", dataset={"name": "synthetic_sbm", "split": {"train_until": 0.5}})
    with pytest.raises(UserInputError, match=r"dataset.split: synthetic_sbm has no times"):
        parse_study_spec(study, "s.yaml")
    with pytest.raises(UserInputError, match="has no times"):
        load_task("synthetic_sbm", split={"train_until": 0.5})


def test_the_split_is_part_of_the_teacher_hash_and_defaults_live_in_one_place() -> None:
    base = {"name": "synthetic_temporal", "options": {"num_nodes": 100}}
    spec = parse_study_spec(tiny_study("a", dataset=base), "a.yaml")
    moved = parse_study_spec(
        tiny_study("a", dataset={**base, "split": {"train_until": 0.5}}), "a.yaml"
    )
    assert teacher_hash(spec) != teacher_hash(moved)
    spelled = {"train_until": 0.5, "val_until": 0.8, "by": "quantile"}
    same = parse_study_spec(tiny_study("a", dataset={**base, "split": spelled}), "a.yaml")
    assert teacher_hash(same) == teacher_hash(moved)
    sbm = parse_study_spec(tiny_study("a"), "a.yaml")
    assert sbm.dataset.split is None  # non-temporal studies unchanged
    default = load_task("synthetic_temporal", num_nodes=100)
    explicit = load_task("synthetic_temporal", num_nodes=100, split=TemporalSplit().model_dump())
    assert torch.equal(default.train[0].mask, explicit.train[0].mask)
    assert math.isclose(TemporalSplit().train_until, 0.6)
