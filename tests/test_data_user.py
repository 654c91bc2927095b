"""A user's own graph: from a torch.save file or a function, each bad shape refused in one line."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Data

from study.data.registry import load_dataset
from study.data.user import load_dataset_file, task_from_graphs
from study.errors import UserInputError


def fraud_graph(n: int = 40, positives: int = 2, seed: int = 0) -> Data:
    """A binary task with rare positives and disjoint masks covering every node."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.zeros(n, dtype=torch.long)
    y[torch.randperm(n, generator=gen)[:positives]] = 1
    edge_index = torch.randint(0, n, (2, 4 * n), generator=gen)
    order = torch.randperm(n, generator=gen)
    masks = [torch.zeros(n, dtype=torch.bool) for _ in range(3)]
    for i, part in enumerate(order.tensor_split(3)):
        masks[i][part] = True
    return Data(
        x=torch.randn(n, 6, generator=gen),
        edge_index=edge_index,
        y=y,
        train_mask=masks[0],
        val_mask=masks[1],
        test_mask=masks[2],
    )


def test_a_saved_transductive_graph_becomes_a_node_task(tmp_path: Path) -> None:
    data = fraud_graph()
    torch.save(data, tmp_path / "g.pt")
    task = load_dataset(path=str(tmp_path / "g.pt"), metric="auroc")
    assert (task.num_features, task.num_classes, task.multilabel) == (6, 2, False)
    assert task.metric == "auroc"
    for split, key in (("train", "train_mask"), ("val", "val_mask"), ("test", "test_mask")):
        (view,) = getattr(task, split)
        assert torch.equal(view.mask, data[key])
        assert view.x is task.train[0].x  # one graph, three views: the teacher cache sees one


def test_an_inductive_dict_of_graphs_is_multilabel_from_a_2d_y(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(1)

    def graph(n: int) -> Data:
        return Data(
            x=torch.randn(n, 4, generator=gen),
            edge_index=torch.randint(0, n, (2, 3 * n), generator=gen),
            y=torch.randint(0, 2, (n, 5), generator=gen).float(),
        )

    splits = {"train": [graph(10), graph(12)], "val": [graph(8)], "test": [graph(9)]}
    torch.save(splits, tmp_path / "ppi_like.pt")
    task = load_dataset_file(tmp_path / "ppi_like.pt")
    assert (task.multilabel, task.num_classes, task.metric) == (True, 5, "micro_f1")
    ids = [g.graph_id for s in (task.train, task.val, task.test) for g in s]
    assert ids == [0, 1, 2, 3]  # unique per graph: the teacher cache keys on them
    assert all(bool(g.mask.all()) for g in task.test)


def test_a_factory_beside_the_study_is_called_with_its_options(tmp_path: Path) -> None:
    (tmp_path / "gds_user_graph_a.py").write_text(
        "from tests.test_data_user import fraud_graph\n"
        "def load(n=40, positives=2):\n    return fraud_graph(n, positives)\n"
    )
    task = load_dataset(factory="gds_user_graph_a:load", options={"n": 60}, base_dir=tmp_path)
    assert task.train[0].num_nodes == 60 and task.metric == "accuracy"
    with pytest.raises(UserInputError) as err:
        load_dataset(factory="gds_user_graph_a:load", options={"m": 1}, base_dir=tmp_path)
    assert err.value.key == "dataset.options.m" and "valid: n, positives" in str(err.value)


def test_a_pickle_that_runs_code_is_not_loaded(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple:
            return (Path.touch, (tmp_path / "pwned",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(UserInputError, match="weights_only=True"):
        load_dataset_file(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def _bad(**changes: object) -> Data:
    data = fraud_graph()
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (_bad(train_mask=None), r"train_mask: missing \(expected a bool tensor \[40\]\)"),
        (_bad(val_mask=torch.ones(39, dtype=torch.bool)), r"val_mask: expected a bool tensor"),
        (_bad(test_mask=torch.ones(40)), r"test_mask: expected a bool tensor \[40\]"),
        (_bad(val_mask=torch.ones(40, dtype=torch.bool)), r"train_mask and val_mask overlap in"),
        (_bad(y=None), r"\.y: missing"),
        (_bad(y=torch.rand(40)), r"\.y: expected a 1-D integer tensor"),
        (_bad(y=torch.full((40, 3), 0.5)), r"\.y: a 2-D y is multi-label and must hold only 0"),
        (_bad(x=torch.ones(40, 6, dtype=torch.long)), r"\.x: expected a float tensor"),
        (_bad(edge_index=torch.tensor([[0, 1], [2, 99]])), r"node ids must lie in \[0, 40\)"),
        ({"train": [fraud_graph()]}, r"expected a torch_geometric Data with train/val/test"),
        ([fraud_graph()], r"expected a torch_geometric Data .*got a list"),
    ],
)
def test_each_bad_shape_is_one_line_naming_the_key(data: object, pattern: str) -> None:
    with pytest.raises(UserInputError, match=pattern) as err:
        task_from_graphs(data, "graph.pt", "g", None)
    assert "\n" not in str(err.value) and str(err.value).startswith("graph.pt")


def test_a_missing_file_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="no such dataset file") as err:
        load_dataset(path=str(tmp_path / "nope.pt"))
    assert err.value.key == "dataset.path"
