"""How a model is trained and distilled: plain settings, free of torch so configs load fast."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class TrainConfig:
    """How one model is optimised.

    ``batch_size`` counts graphs (PPI) or clouds (point clouds); one-graph data is full-batch.
    ``eval_every`` epochs the validation score is computed and the best model kept.

    ``num_neighbors`` (fan-out per layer, e.g. ``(15, 10)``; one entry per layer of the model)
    turns on sampled mini-batch training for node tasks (README "Graphs that do not fit
    full-batch"): each step takes ``batch_size`` SEED NODES and their sampled neighbourhood
    (:mod:`study.sampling`), and evaluation runs layer-wise in chunks (:mod:`study.inference`).
    ``None`` (the default) keeps full batch, as before.
    """

    epochs: int = 200
    lr: float = 0.005
    weight_decay: float = 5e-4
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9
    batch_size: int = 32
    eval_every: int = 1
    seed: int = 0
    num_neighbors: tuple[int, ...] | None = None
    device: str = "cpu"

    @property
    def minibatch(self) -> bool:
        """Whether node tasks train on sampled mini-batches (``num_neighbors`` is set)."""
        return self.num_neighbors is not None


@dataclass(frozen=True)
class DistillConfig:
    """One distillation method and its hyperparameters.

    ``method`` names an entry of :data:`study.catalogs.METHODS`; ``params`` holds its
    hyperparameters by the names study files use (``{"lambda": 100.0, "kernel": "rbf",
    "sigma": 1.0, "direction": "student_teacher", "lsp_until_epoch": None,
    "layer_map": ((-1, -1),)}`` for LSP, the chosen kernel's parameters beside LSP's own).
    Missing ones take the catalog's defaults when the method is built
    (:func:`study.distill.methods.build_method`). The distillation terms cover every node of the
    training graphs (the teacher is known everywhere), the hard loss only the labelled nodes.
    """

    method: str = "none"
    params: Mapping[str, Any] = field(default_factory=dict)
