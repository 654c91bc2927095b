"""Typed graphs from HeteroData: the conversion keeps features, labels and masks; the synthetic
generator; a user's HeteroData file; bad input is one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch_geometric.data import HeteroData

from study.data.base import data_fingerprint, io_channels
from study.data.hetero import hetero_task, synthetic_hetero, typed_graph
from study.data.registry import load_dataset
from study.errors import UserInputError

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_hetero(with_y: bool = True) -> HeteroData:
    """Three paper nodes (target, 3 features), three author nodes (2 features), two relations."""
    d = HeteroData()
    d["author"].x = torch.arange(6, dtype=torch.float).view(3, 2)
    d["paper"].x = torch.arange(100, 109, dtype=torch.float).view(3, 3)
    if with_y:
        d["paper"].y = torch.tensor([1, 0, 1])
    d["paper"].train_mask = torch.tensor([True, False, False])
    d["paper"].val_mask = torch.tensor([False, True, False])
    d["paper"].test_mask = torch.tensor([False, False, True])
    d["author", "writes", "paper"].edge_index = torch.tensor([[0, 1, 2], [0, 0, 1]])
    d["paper", "cites", "paper"].edge_index = torch.tensor([[1], [0]])
    return d


def test_typed_graph_round_trip_keeps_features_labels_masks_and_edges() -> None:
    data = tiny_hetero()
    graph = typed_graph(data, "paper")
    assert graph.node_type_names == ["author", "paper"]
    assert graph.edge_type_names == [("author", "writes", "paper"), ("paper", "cites", "paper")]
    assert graph.target_type == 1
    assert graph.x.shape == (6, 3)  # padded to the widest type
    for t, name in enumerate(graph.node_type_names):
        rows = graph.x[graph.node_type == t]
        width = data[name].x.shape[1]
        torch.testing.assert_close(rows[:, :width], data[name].x)
        assert bool((rows[:, width:] == 0).all())
    target = graph.node_type == 1
    assert graph.y[target].tolist() == [1, 0, 1]
    assert graph.train_mask.tolist() == [False, False, False, True, False, False]
    assert not bool(graph.val_mask[~target].any())
    # Every edge maps back to its relation's own (src, dst) in per-type ids.
    offsets = {
        name: int((graph.node_type < t).sum()) for t, name in enumerate(graph.node_type_names)
    }
    for r, (src, rel, dst) in enumerate(graph.edge_type_names):
        local = graph.edge_index[:, graph.edge_type == r]
        back = torch.stack([local[0] - offsets[src], local[1] - offsets[dst]])
        assert back.tolist() == data[src, rel, dst].edge_index.tolist()


def test_hetero_task_scores_target_nodes_only() -> None:
    task = hetero_task(tiny_hetero(), "paper")
    assert task.num_classes == 2 and task.num_features == 3 and not task.multilabel
    assert io_channels(task) == {
        "in_channels": 3,
        "out_channels": 2,
        "types": {"num_node_types": 2, "num_relations": 2},
    }
    graph = task.train[0]
    assert task.val[0].x is graph.x  # one graph object in every split (transductive)
    for split in (task.train, task.val, task.test):
        assert bool((split[0].node_type[split[0].mask] == graph.target_type).all())


@pytest.mark.parametrize(
    ("target", "with_y", "needle"),
    [
        ("venue", True, "unknown target node type 'venue' (valid: author, paper)"),
        ("author", True, "node type 'author' has no y"),
        ("paper", False, "node type 'paper' has no y"),
    ],
)
def test_bad_targets_are_one_line(target: str, with_y: bool, needle: str) -> None:
    with pytest.raises(UserInputError) as err:
        hetero_task(tiny_hetero(with_y), target)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_synthetic_hetero_is_deterministic_and_typed() -> None:
    a, b = synthetic_hetero(seed=3), synthetic_hetero(seed=3)
    assert data_fingerprint(a) == data_fingerprint(b)
    assert data_fingerprint(a) != data_fingerprint(synthetic_hetero(seed=4))
    g = a.train[0]
    assert g.node_type_names == ["user", "merchant", "device"]
    assert len(g.edge_type_names) == 8  # four relations and their reverses
    assert g.num_nodes == 600 + 60 + 200
    # Friends mostly share the class, disputes mostly do not (the design of the generator).
    users = g.node_type == 0
    for name, low, high in (("friend", 0.8, 1.0), ("disputes", 0.0, 0.2)):
        r = g.edge_type_names.index(("user", name, "user"))
        src, dst = g.edge_index[:, g.edge_type == r]
        same = (g.y[src] == g.y[dst]).float().mean().item()
        assert low <= same <= high, (name, same)
    assert bool(users[a.test[0].mask].all())


def test_user_heterodata_file(tmp_path: Path) -> None:
    path = tmp_path / "graph.pt"
    torch.save(tiny_hetero(), path)
    task = load_dataset(path=str(path), target_node_type="paper")
    assert task.name == "graph" and task.num_classes == 2
    assert "edge_type" in task.train[0]
    with pytest.raises(UserInputError, match="needs dataset.target_node_type") as err:
        load_dataset(path=str(path))
    assert err.value.key == "dataset.target_node_type"


def test_target_node_type_on_a_homogeneous_file_is_refused(tmp_path: Path) -> None:
    from torch_geometric.data import Data

    path = tmp_path / "plain.pt"
    n = 4
    torch.save(
        Data(
            x=torch.ones(n, 2),
            edge_index=torch.tensor([[0, 1], [1, 2]]),
            y=torch.tensor([0, 1, 0, 1]),
            train_mask=torch.tensor([True, False, False, False]),
            val_mask=torch.tensor([False, True, False, False]),
            test_mask=torch.tensor([False, False, True, True]),
        ),
        path,
    )
    with pytest.raises(UserInputError, match="target_node_type is for a HeteroData"):
        load_dataset(path=str(path), target_node_type="paper")


def test_user_heterodata_factory(tmp_path: Path) -> None:
    module = tmp_path / "hetero_factory_mod_16.py"
    module.write_text(
        "from tests.test_hetero_data import tiny_hetero\n\n\n"
        "def load():\n    return tiny_hetero()\n"
    )
    task = load_dataset(
        factory="hetero_factory_mod_16:load", base_dir=tmp_path, target_node_type="paper"
    )
    assert task.name == "load" and io_channels(task)["types"]["num_relations"] == 2
    with pytest.raises(UserInputError, match="unknown target node type 'user'") as err:
        load_dataset(
            factory="hetero_factory_mod_16:load", base_dir=tmp_path, target_node_type="user"
        )
    assert err.value.key == "dataset.target_node_type"
