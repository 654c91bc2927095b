"""How a model is trained and distilled: plain settings, free of torch so configs load fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class TrainConfig:
    """How one model is optimised.

    ``batch_size`` counts graphs (PPI) or clouds (point clouds); one-graph data is full-batch.
    ``eval_every`` epochs the validation score is computed and the best model kept.
    """

    epochs: int = 200
    lr: float = 0.005
    weight_decay: float = 5e-4
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9
    batch_size: int = 32
    eval_every: int = 1
    seed: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class DistillConfig:
    """One distillation method and its hyperparameters.

    ``lambda_`` weighs the distillation term of lsp/fitnet/at: ``L = H + lambda * L_distill``.
    KD mixes ``(1 - alpha) * H + alpha * KD``. ``layer_map`` pairs (student, teacher) indices into
    ``ModelOutput.hidden``; the default ``((-1, -1),)`` matches the last hidden layer of each.
    ``lsp_until_epoch`` applies LSP only in epochs ``< lsp_until_epoch`` (the official code: 30).
    The distillation terms cover every node of the training graphs (the teacher is known
    everywhere), the hard loss only the labelled nodes.
    """

    method: Literal["none", "kd", "fitnet", "at", "lsp"] = "none"
    lambda_: float = 1.0
    kernel: str = "rbf"
    kernel_params: dict[str, float] = field(default_factory=dict)
    direction: Literal["student_teacher", "teacher_student"] = "student_teacher"
    lsp_until_epoch: int | None = None
    temperature: float = 4.0
    alpha: float = 0.9
    at_p: float = 1.0
    layer_map: tuple[tuple[int, int], ...] = ((-1, -1),)
