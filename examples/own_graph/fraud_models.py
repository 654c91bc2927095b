"""The user's own teacher and student: plain PyTorch / PyG modules, nothing from the project.

The study file names a factory for each (``models:teacher``, ``models:student``). The project
calls it with the file's ``options`` plus ``in_channels`` and ``out_channels`` from the task (24
features and 2 classes for the fraud graph) and expects a ``torch.nn.Module`` whose
``forward(x, edge_index)`` returns logits ``[N, out_channels]``.

``hidden`` in the study file names submodules (keys of ``dict(model.named_modules())``) whose
outputs FitNet, AT and LSP match; the project captures them with forward hooks. Rules:

* the output must be an ``[N, F]`` tensor (one row per node);
* the submodule must run exactly once per forward (a shared ``nn.ReLU`` called twice would fire
  its hook twice: give each layer its own);
* a hook sees the submodule's *output*, so to match post-activation features (as the project's
  own GCN/SAGE/GAT students do) the activation is a named submodule (``act1``, ``act2``) rather
  than ``F.relu``. Naming ``conv1`` instead would match the pre-activation features.

With the default ``layer_map: [[-1, -1]]`` the last name of the student's list is matched with
the last of the teacher's: here ``student.act1`` (``[N, hidden_channels]``) with
``teacher.act2`` (``[N, 64]``). The widths may differ: LSP compares each model's own local
structure, AT its node attention map, and FitNet learns a linear adapter.

Print the names with ``print(model)`` or ``[n for n, _ in model.named_modules()]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import SAGEConv


class FraudSAGE(nn.Module):
    """Two GraphSAGE layers (mean aggregation, separate root weight) and a linear head.

    Named submodules (``named_modules()``): ``conv1``, ``act1``, ``conv2``, ``act2``, ``head``
    (plus the convs' own children such as ``conv1.lin_l``). Hidden features for distillation:
    ``act1`` and ``act2``, both ``[N, hidden_channels]`` after ReLU.
    """

    def __init__(
        self, in_channels: int, out_channels: int, hidden_channels: int = 64, dropout: float = 0.3
    ) -> None:
        super().__init__()
        self.dropout = float(dropout)
        self.conv1 = SAGEConv(in_channels, hidden_channels)
        self.act1 = nn.ReLU()
        self.conv2 = SAGEConv(hidden_channels, hidden_channels)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden_channels, out_channels)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        h = self.act1(self.conv1(x, edge_index))
        h = F.dropout(h, p=self.dropout, training=self.training)
        h = self.act2(self.conv2(h, edge_index))
        h = F.dropout(h, p=self.dropout, training=self.training)
        return self.head(h)


class TinySAGE(nn.Module):
    """The student: two GraphSAGE layers, ``in -> hidden_channels -> out``, no head.

    Named submodules: ``conv1``, ``act1``, ``conv2``. Hidden features: ``act1``,
    ``[N, hidden_channels]`` after ReLU (``conv2`` outputs the logits).

    SAGE rather than GCN for speed: ``GCNConv`` recomputes its degree normalisation (with added
    self-loops) in every forward, so on the fraud graph a 4- to 16-wide GCN took 2.0-4.0 ms, no
    faster than the 64-wide SAGE teacher (2.5 ms), where a 4- to 16-wide SAGE takes 1.1-1.4 ms
    (full-graph forward, one CPU thread).
    """

    def __init__(
        self, in_channels: int, out_channels: int, hidden_channels: int = 8, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.dropout = float(dropout)
        self.conv1 = SAGEConv(in_channels, hidden_channels)
        self.act1 = nn.ReLU()
        self.conv2 = SAGEConv(hidden_channels, out_channels)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        h = self.act1(self.conv1(x, edge_index))
        h = F.dropout(h, p=self.dropout, training=self.training)
        return self.conv2(h, edge_index)


def teacher(
    in_channels: int, out_channels: int, hidden_channels: int = 64, dropout: float = 0.3
) -> FraudSAGE:
    """The teacher factory (``factory: "fraud_models:teacher"``); ``hidden: [act1, act2]``.

    ``train_teacher.py`` builds it with these defaults: a checkpoint loads only into a model
    built with the same ``hidden_channels``, so keep the study file's ``options`` in step.
    """
    return FraudSAGE(in_channels, out_channels, hidden_channels=hidden_channels, dropout=dropout)


def student(
    in_channels: int, out_channels: int, hidden_channels: int = 8, dropout: float = 0.0
) -> TinySAGE:
    """The student factory (``factory: "fraud_models:student"``); ``hidden: [act1]``.

    ``hidden_channels`` (and ``dropout``) are the study's search dimensions
    (``student.options.hidden_channels``).
    """
    return TinySAGE(in_channels, out_channels, hidden_channels=hidden_channels, dropout=dropout)


def hidden_outputs(model: nn.Module, names: list[str], x: Tensor, edge_index: Tensor) -> dict:
    """Run one forward and return ``{name: output}`` for ``names``, captured as the project does
    (forward hooks). A quick check of a ``hidden`` list before writing it into a study file::

        >>> {n: t.shape for n, t in hidden_outputs(m, ["act1"], data.x, data.edge_index).items()}
    """
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise KeyError(f"not submodules of {type(model).__name__}: {missing}")
    seen: dict[str, list[Tensor]] = {n: [] for n in names}
    handles = [
        modules[n].register_forward_hook(lambda _m, _i, out, n=n: seen[n].append(out))
        for n in names
    ]
    try:
        with torch.no_grad():
            model(x, edge_index)
    finally:
        for h in handles:
            h.remove()
    for n, outs in seen.items():
        if len(outs) != 1:
            raise ValueError(f"{n}: ran {len(outs)} times in one forward, expected once")
    return {n: outs[0] for n, outs in seen.items()}
