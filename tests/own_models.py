"""A user's own graph module and model classes, as files beside a study (for the tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from study.catalog import import_factory

#: gds_own_*.py: what a practitioner writes (no import of this project).
USER_CODE = '''
import torch
from torch import nn
from torch_geometric.data import Data
from torch_geometric.nn import GCNConv, SAGEConv


def load_graph(num_nodes=120, seed=0):
    """Two communities, 8 features, a label that follows the community; disjoint masks."""
    gen = torch.Generator().manual_seed(seed)
    y = (torch.arange(num_nodes) % 2).long()
    src = torch.randint(0, num_nodes, (6 * num_nodes,), generator=gen)
    dst = torch.randint(0, num_nodes, (6 * num_nodes,), generator=gen)
    keep = (y[src] == y[dst]) | (torch.rand(len(src), generator=gen) < 0.1)
    edge_index = torch.stack([src[keep], dst[keep]])
    x = torch.randn(num_nodes, 8, generator=gen) + 0.5 * y[:, None]
    order = torch.randperm(num_nodes, generator=gen)
    masks = [torch.zeros(num_nodes, dtype=torch.bool) for _ in range(3)]
    for mask, part in zip(masks, order.tensor_split([num_nodes // 2, 3 * num_nodes // 4])):
        mask[part] = True
    return Data(x=x, edge_index=edge_index, y=y, train_mask=masks[0], val_mask=masks[1],
                test_mask=masks[2])


class Teacher(nn.Module):
    def __init__(self, in_channels, out_channels, hidden_channels=32):
        super().__init__()
        self.conv1 = SAGEConv(in_channels, hidden_channels)
        self.conv2 = SAGEConv(hidden_channels, hidden_channels)
        self.head = nn.Linear(hidden_channels, out_channels)

    def forward(self, x, edge_index):
        h = self.conv1(x, edge_index).relu()
        return self.head(self.conv2(h, edge_index).relu())


def teacher(in_channels, out_channels, hidden_channels=32):
    return Teacher(in_channels, out_channels, hidden_channels)


class Student(nn.Module):
    def __init__(self, in_channels, out_channels, hidden_channels):
        super().__init__()
        self.conv1 = GCNConv(in_channels, hidden_channels)
        self.conv2 = GCNConv(hidden_channels, out_channels)

    def forward(self, x, edge_index):
        return self.conv2(self.conv1(x, edge_index).relu(), edge_index)


def student(in_channels, out_channels, hidden_channels=8):
    return Student(in_channels, out_channels, hidden_channels)


def wrong_width_student(in_channels, out_channels):
    return Student(in_channels, out_channels + 1, 4)


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = GCNConv(8, 2)

    def forward(self, x, edge_index):
        raise RuntimeError("bad\\nmultiline")


def broken_student(in_channels, out_channels):
    return Broken()
'''


def write_user_files(folder: Path, module: str = "gds_own_a", epochs: int = 30) -> dict[str, Any]:
    """Write the user's module and a trained teacher checkpoint (a plain state_dict) into
    ``folder``; returns facts about them."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(USER_CODE)
    data = import_factory(f"{module}:load_graph", folder)()
    torch.manual_seed(0)
    model = import_factory(f"{module}:teacher", folder)(8, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(epochs):  # the user's own training loop
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            model(data.x, data.edge_index)[data.train_mask], data.y[data.train_mask]
        )
        loss.backward()
        opt.step()
    torch.save(model.state_dict(), folder / "teacher.pt")
    torch.save(data, folder / "graph.pt")
    with torch.no_grad():
        pred = model(data.x, data.edge_index).argmax(-1)
    test_acc = float((pred[data.test_mask] == data.y[data.test_mask]).float().mean())
    return {"module": module, "test_accuracy": test_acc}


def own_study(name: str, module: str = "gds_own_a", **overrides: Any) -> dict[str, Any]:
    """A study on the user's graph (factory form), teacher (checkpoint) and searched student."""
    study: dict[str, Any] = {
        "name": name,
        "dataset": {"factory": f"{module}:load_graph", "options": {"num_nodes": 120}},
        "teacher": {
            "factory": f"{module}:teacher",
            "options": {"hidden_channels": 32},
            "hidden": ["conv2"],
            "checkpoint": "teacher.pt",
        },
        "student": {
            "factory": f"{module}:student",
            "hidden": ["conv1"],
            "train": {"epochs": 3, "lr": 0.01},
        },
        "methods": ["none", "kd", "lsp"],
        "search": {"student.options.hidden_channels": {"choice": [4, 8]}},
        "seeds": [0],
        "searcher": {"algorithm": "random", "num_samples": 3, "max_concurrent": 2, "seed": 0},
        "latency": {"repeats": 5, "warmup": 1, "threads": 1},
    }
    study.update(overrides)
    return study


def write_own_study(folder: Path, name: str, module: str = "gds_own_a", **overrides: Any) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(own_study(name, module, **overrides), sort_keys=False))
    return path
