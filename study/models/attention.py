"""The attention a model's graph-attention layers put on their incoming edges, read by hooks.

A GAT layer ``l`` gives every target node ``i`` a distribution over its incoming edges
``(j -> i)`` per head ``h``: ``alpha_ij^h = softmax_j(LeakyReLU(e_ij^h))``, with PyG's GATConv
score ``e_ij^h = a_src^h . W x_j + a_dst^h . W x_i`` (GATv2Conv: ``a^h . LeakyReLU(W_s x_j +
W_t x_i)``, the LeakyReLU inside). :class:`AttentionRecorder` hooks every ``GATConv`` and
``GATv2Conv`` of a model: a forward pre-hook on the layer's edge update keeps references to the
per-edge terms the layer computes anyway (and the edges it attends over, its own self-loops
included). Nothing more is computed in the forward; the log-attention is computed when asked
for (:meth:`ModelOutput.attention <study.models.base.ModelOutput>`), in log space with a
per-target log-sum-exp, and before the layer's attention dropout (which would put zeros, log
-inf, into a training forward).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv, GATv2Conv
from torch_geometric.utils import scatter

#: Layers whose attention a recorder reads.
ATTENTION_LAYERS: tuple[type[nn.Module], ...] = (GATConv, GATv2Conv)
#: One layer's attention: ``(edge_index [2, E_l], log_alpha [E_l, H_l])``.
LayerAttention = tuple[Tensor, Tensor]
#: What a model output holds: called, it gives every attention layer's, in forward order.
AttentionFn = Callable[[], list[LayerAttention]]


def scatter_log_softmax_2d(scores: Tensor, target: Tensor, num_nodes: int) -> Tensor:
    """Log-softmax of ``[E, H]`` scores over each target's incoming edges, per head (stable:
    the per-target maximum is subtracted first).

    Args:
        scores: ``[E, H]`` (or ``[E]``) unnormalised scores.
        target: ``[E]`` target node of each edge.
        num_nodes: ``N``.

    Returns:
        ``[E, H]`` log-probabilities: ``exp`` sums to 1 over each target's edges, per head.
    """
    peak = scatter(scores.detach(), target, dim=0, dim_size=num_nodes, reduce="max")
    shifted = scores - peak[target]
    total = scatter(shifted.exp(), target, dim=0, dim_size=num_nodes, reduce="sum")
    return shifted - total.log()[target]


class _Record:
    """The edge-update pre-hook of one layer (an object, so ``deepcopy`` hooks the copy)."""

    def __init__(self, recorder: AttentionRecorder) -> None:
        self.recorder = recorder

    def __call__(self, module: nn.Module, inputs: tuple[Any, Any, dict[str, Any]]) -> None:
        edge_index, _, kwargs = inputs
        if self.recorder.active() and isinstance(edge_index, Tensor) and edge_index.dim() == 2:
            self.recorder._seen.append((module, edge_index, dict(kwargs)))


class AttentionRecorder:
    """Hooks on every attention layer of ``model`` (see the module docstring).

    Call :meth:`start` before a forward and :meth:`take` after it; ``take`` gives ``None`` when
    recording is off (the default: a method that reads attention turns it on, see
    :func:`set_attention_recording`) or the model has no attention layer, else a function
    computing each layer's log-attention. Off, the hooks keep nothing.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers: list[Any] = [m for m in model.modules() if isinstance(m, ATTENTION_LAYERS)]
        self.enabled = False
        self.training_only = False
        self._seen: list[tuple[nn.Module, Tensor, dict[str, Any]]] = []
        for layer in self.layers:
            layer.register_edge_update_forward_pre_hook(_Record(self))

    def __getstate__(self) -> dict[str, Any]:
        # A copy or a pickle of the model carries no activations of an earlier forward.
        return {**self.__dict__, "_seen": []}

    def active(self) -> bool:
        """Whether a forward now records: on, and in training mode where asked (a student's
        attention is read only by its training loss, so evaluation and latency keep nothing)."""
        if not self.enabled or not self.layers:
            return False
        return not self.training_only or bool(self.layers[0].training)

    def start(self) -> None:
        self._seen = []

    def take(self) -> AttentionFn | None:
        if not self.active():
            self._seen = []
            return None
        seen, self._seen = self._seen, []
        cached: list[list[LayerAttention]] = []

        def attention() -> list[LayerAttention]:
            if not cached:
                cached.append([_log_attention(m, e, kw) for m, e, kw in seen])
            return cached[0]

        return attention


def _pair(kwargs: dict[str, Any], name: str, edge_index: Tensor) -> tuple[Tensor, Tensor]:
    """``(term of the source, term of the target)`` per edge, from the layer's collected
    arguments (PyG's generated layers) or the node-level pair (its generic path)."""
    if f"{name}_j" in kwargs:
        return kwargs[f"{name}_j"], kwargs[f"{name}_i"]
    src, dst = kwargs[name] if isinstance(kwargs[name], tuple) else (kwargs[name], kwargs[name])
    dst = src if dst is None else dst
    return src[edge_index[0]], dst[edge_index[1]]


def _log_attention(module: Any, edge_index: Tensor, kwargs: dict[str, Any]) -> LayerAttention:
    """One layer's ``(edge_index [2, E], log_alpha [E, H])`` from what its hook kept."""
    num_nodes = int(kwargs.get("dim_size") or int(edge_index[1].max()) + 1)
    edge_attr = kwargs.get("edge_attr")
    if isinstance(module, GATConv):
        a_j, a_i = _pair(kwargs, "alpha", edge_index)
        score = a_j + a_i
        if edge_attr is not None and module.lin_edge is not None:
            attr = edge_attr.view(-1, 1) if edge_attr.dim() == 1 else edge_attr
            attr = module.lin_edge(attr).view(-1, module.heads, module.out_channels)
            score = score + (attr * module.att_edge).sum(dim=-1)
        score = F.leaky_relu(score, module.negative_slope)
    else:  # GATv2Conv: a . LeakyReLU(x_i + x_j (+ edge))
        x_j, x_i = _pair(kwargs, "x", edge_index)
        x = x_i + x_j
        if edge_attr is not None and module.lin_edge is not None:
            attr = edge_attr.view(-1, 1) if edge_attr.dim() == 1 else edge_attr
            x = x + module.lin_edge(attr).view(-1, module.heads, module.out_channels)
        x = F.leaky_relu(x, module.negative_slope)
        score = (x * module.att).sum(dim=-1)
    return edge_index, scatter_log_softmax_2d(score, edge_index[1], num_nodes)


def recorder_of(model: nn.Module) -> AttentionRecorder | None:
    """The recorder of a built-in GAT or a user model (:class:`~study.models.user.HookedModel`)."""
    return getattr(model, "attention_recorder", None)


def has_attention(model: nn.Module) -> bool:
    """Whether ``model`` has attention layers a recorder reads."""
    recorder = recorder_of(model)
    return recorder is not None and bool(recorder.layers)


def set_attention_recording(model: nn.Module, on: bool, *, training_only: bool = False) -> None:
    """Turn attention recording on or off for ``model``'s forwards (no-op without a recorder);
    ``training_only``: record in training mode only."""
    recorder = recorder_of(model)
    if recorder is not None:
        recorder.enabled = on
        recorder.training_only = training_only
