"""Small study files for the Ray tests: a synthetic graph, a tiny GAT pair, seconds per trial."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def tiny_study(name: str, **overrides: Any) -> dict[str, Any]:
    """A valid study mapping on ``synthetic_sbm``; ``overrides`` replace top-level keys."""
    study: dict[str, Any] = {
        "name": name,
        "dataset": {"name": "synthetic_sbm", "options": {"num_nodes": 200, "num_features": 8}},
        "teacher": {
            "arch": "gat",
            "width": 8,
            "depth": 2,
            "heads": 2,
            "dropout": 0.0,
            "train": {"epochs": 5, "lr": 0.01},
        },
        "student": {
            "arch": "gat",
            "width": 4,
            "depth": 2,
            "heads": 1,
            "dropout": 0.0,
            "train": {"epochs": 4, "lr": 0.01},
        },
        "methods": ["none", "lsp"],
        "search": {"lsp.lambda": {"loguniform": [1.0, 100.0]}},
        "seeds": [0],
        "searcher": {"algorithm": "random", "num_samples": 4, "max_concurrent": 2, "seed": 0},
        "resources": {"cpu": 1, "gpu": 0},
        "latency": {"repeats": 5, "warmup": 1, "threads": 1},
        "fault_tolerance": {"checkpoint_every": 2, "checkpoint_min_seconds": 0},
    }
    study.update(overrides)
    return study


def tiny_student(epochs: int) -> dict[str, Any]:
    """:func:`tiny_study`'s student (a 1-head GAT of width 4) trained for ``epochs``."""
    return dict(tiny_study("x")["student"], train={"epochs": epochs, "lr": 0.01})


def write_study(folder: Path, name: str, **overrides: Any) -> Path:
    """Write :func:`tiny_study` to ``folder/<name>.yaml`` and return the path."""
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_study(name, **overrides), sort_keys=False))
    return path
