"""Distillation methods as objects: what each precomputes from the teacher, its loss term and its
weight, so that the training loop holds no per-method branches.

A method is chosen by name from :data:`study.catalogs.METHODS`; :func:`build_method` validates its
parameters against the entry's schema and calls the entry's factory with them. A third-party
method is a :class:`DistillMethod` subclass whose factory takes its validated schema instance
(or nothing when its entry has no schema), registered like the built-ins.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from study.catalogs import (
    KERNELS,
    METHODS,
    ATParams,
    EdgeAttentionParams,
    FitNetParams,
    KDParams,
    LSPParams,
    takes_kernel,
)
from study.distill.at import at_loss
from study.distill.edge_attention import (
    align_attention,
    edge_attention_loss,
    from_graph_layout,
    gradient_edge_importance,
    importance_log_attention,
    to_graph_layout,
)
from study.distill.fitnet import FitNetAdapter, fitnet_loss
from study.distill.kd import kd_loss
from study.distill.lsp import local_structure, lsp_loss, union_edges
from study.distill.params import validate_params
from study.distill.typed import (
    GraphTypes,
    graph_types,
    per_type_mean,
    relation_attention_loss,
    relation_local_structure,
    relation_lsp_loss,
    relation_weight_vector,
)
from study.errors import UserInputError
from study.layer_map import LAST, UNIFORM, resolve_layer_map
from study.models.attention import has_attention, set_attention_recording

if TYPE_CHECKING:
    from torch_geometric.data import Data

    from study.models.base import ModelOutput
    from study.train_config import DistillConfig

LayerMap = tuple[tuple[int, int], ...]
#: A map as a method's parameters hold it: ``"last"``, ``"uniform"`` or explicit pairs.
LayerMapValue = str | LayerMap


class DistillMethod:
    """One distillation method, built from its validated parameters.

    The training loop minimises ``w_hard * H + w_term * term`` with ``(w_hard, w_term) =
    weights()``, adding the term only in the epochs where ``active(epoch)`` holds.

    Attributes:
        needs_teacher: whether training needs a teacher (every method but ``none``).
        needs_teacher_logits: whether :meth:`term` reads ``teacher.logits`` (a DGCNN teacher
            skips its classifier otherwise).
        needs_adapters: whether :meth:`make_adapters` builds trainable modules (the loop then
            sizes them from one probe forward of each model).
        reads_edges: whether :meth:`term` reads ``edge_index`` (LSP). In sampled mini-batches
            such a term gets the sampled edges whose target is a seed and the rows of the nodes
            they join (the seeds and their first hop); any other term gets the seeds' rows.
    """

    needs_teacher: ClassVar[bool] = True
    needs_teacher_logits: ClassVar[bool] = False
    needs_adapters: ClassVar[bool] = False
    reads_edges: ClassVar[bool] = False

    def weights(self) -> tuple[float, float]:
        """``(weight of the hard loss, weight of the term)``."""
        return 1.0, 1.0

    def active(self, epoch: int) -> bool:
        """Whether the term is added in ``epoch`` (0-based)."""
        return True

    def prepare(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Called once before training with both models: a method that reads more of them
        than hidden features (attention) turns it on here."""

    def precompute(self, teacher: ModelOutput, graph: Data) -> list[Tensor]:
        """What :meth:`term` reads of the teacher on a fixed graph, computed once (under
        ``no_grad``) and cached. Each tensor's rows are per node or per edge of ``graph``, so
        that the loop can concatenate them over the graphs of a batch in batch order."""
        return []

    def make_adapters(
        self, student_widths: Sequence[int], teacher_widths: Sequence[int]
    ) -> nn.ModuleList | None:
        """Trainable modules optimised with the student (one width per hidden layer of each)."""
        return None

    def term(
        self,
        student: ModelOutput,
        teacher: ModelOutput,
        *,
        edge_index: Tensor | None,
        precomputed: list[Tensor],
        adapters: nn.ModuleList | None,
        multilabel: bool,
    ) -> Tensor:
        """The unweighted loss term of one batch, a scalar.

        Args:
            student: the student's forward on the batch (with gradients).
            teacher: the frozen teacher's forward on the same batch.
            edge_index: ``[2, E]`` the batch's fixed graph; ``None`` for point clouds, whose
                models report their own kNN graphs in ``edge_indices``.
            precomputed: :meth:`precompute` of the batch's graphs, concatenated; ``[]`` when
                nothing was precomputed (point clouds).
            adapters: what :meth:`make_adapters` built.
            multilabel: per-label sigmoid outputs (PPI) instead of one softmax per row.

        On a typed (heterogeneous) graph the loop also passes ``types=``
        (:class:`~study.distill.typed.GraphTypes`); on any other graph it passes no such key.
        """
        raise NotImplementedError


class NoDistillation(DistillMethod):
    """The student trained alone on the hard labels."""

    needs_teacher = False

    def weights(self) -> tuple[float, float]:
        return 1.0, 0.0

    def active(self, epoch: int) -> bool:
        return False

    def term(self, student: ModelOutput, teacher: ModelOutput, **_: Any) -> Tensor:
        raise RuntimeError("the student alone has no distillation term")


class KnowledgeDistillation(DistillMethod):
    """KD (Hinton et al. 2015): ``(1 - alpha) * H + alpha * kd_loss`` (see :func:`kd_loss`)."""

    needs_teacher_logits = True

    def __init__(self, params: KDParams) -> None:
        self.temperature = params.temperature
        self.alpha = params.alpha

    def weights(self) -> tuple[float, float]:
        return 1.0 - self.alpha, self.alpha

    def term(
        self,
        student: ModelOutput,
        teacher: ModelOutput,
        *,
        multilabel: bool,
        types: GraphTypes | None = None,
        **_: Any,
    ) -> Tensor:
        if student.logits is None or teacher.logits is None:
            raise ValueError("kd needs the logits of both models (a forward ran with_logits=False)")
        s_logits, t_logits = student.logits, teacher.logits
        if types is not None:  # only the target type has classes
            keep = types.node_type == types.target_type
            s_logits, t_logits = s_logits[keep], t_logits[keep]
        return kd_loss(s_logits, t_logits, temperature=self.temperature, multilabel=multilabel)


def resolve_pairs(layer_map: LayerMapValue, student_layers: int, teacher_layers: int) -> LayerMap:
    """:func:`study.layer_map.resolve_layer_map` with its error as a :class:`UserInputError`."""
    try:
        return resolve_layer_map(layer_map, student_layers, teacher_layers)
    except ValueError as err:
        raise UserInputError(f"layer_map: {err}", key="layer_map") from None


def teacher_layers_read(layer_map: LayerMapValue, teacher_layers: int) -> list[int]:
    """The teacher layers (non-negative) a map can pair, known without the student's depth:
    every layer for ``uniform``, else those the map names."""
    if layer_map == UNIFORM:
        return list(range(teacher_layers))
    if layer_map == LAST:
        return [teacher_layers - 1]
    assert not isinstance(layer_map, str)
    return [int(t) % teacher_layers for _, t in layer_map]


class _LayerPairs(DistillMethod):
    """A method comparing hidden layers pair by pair (``layer_map``: ``last``, ``uniform`` or
    explicit pairs, see :mod:`study.layer_map`), weighted by ``lambda``; its term is the sum
    over the pairs."""

    def __init__(self, lambda_: float, layer_map: LayerMapValue) -> None:
        self.lambda_ = lambda_
        self.layer_map = layer_map

    def weights(self) -> tuple[float, float]:
        return 1.0, self.lambda_

    def pairs(self, student_layers: int, teacher_layers: int) -> LayerMap:
        """``layer_map`` resolved for models of these depths (non-negative indices)."""
        return resolve_pairs(self.layer_map, student_layers, teacher_layers)

    def _pairs(
        self, student: ModelOutput, teacher: ModelOutput
    ) -> Iterator[tuple[int, Tensor, Tensor]]:
        """``(pair index, z_s [N, F_s], z_t [N, F_t])`` for every pair of ``layer_map``."""
        for pair, (s, t) in enumerate(self.pairs(len(student.hidden), len(teacher.hidden))):
            yield pair, student.hidden[s], teacher.hidden[t]


class FitNet(_LayerPairs):
    """FitNet (Romero et al. 2015): ``MSE(adapter(z_s), z_t)`` per pair, a trained adapter each."""

    needs_adapters = True

    def __init__(self, params: FitNetParams) -> None:
        super().__init__(params.lambda_, params.layer_map)

    def make_adapters(
        self, student_widths: Sequence[int], teacher_widths: Sequence[int]
    ) -> nn.ModuleList:
        pairs = self.pairs(len(student_widths), len(teacher_widths))
        return nn.ModuleList(FitNetAdapter(student_widths[s], teacher_widths[t]) for s, t in pairs)

    def term(
        self,
        student: ModelOutput,
        teacher: ModelOutput,
        *,
        adapters: nn.ModuleList | None,
        types: GraphTypes | None = None,
        **_: Any,
    ) -> Tensor:
        if adapters is None:
            raise ValueError("fitnet needs its adapters (make_adapters)")
        terms = []
        for i, z_s, z_t in self._pairs(student, teacher):
            adapter = adapters[i]
            if types is None:
                terms.append(fitnet_loss(z_s, z_t, adapter))
                continue
            loss = functools.partial(_fitnet_with, adapter)
            terms.append(per_type_mean(loss, z_s, z_t, types.node_type, types.num_node_types))
        return torch.stack(terms).sum()


def _fitnet_with(adapter: nn.Module, z_s: Tensor, z_t: Tensor) -> Tensor:
    return fitnet_loss(z_s, z_t, adapter)


class AttentionTransfer(_LayerPairs):
    """AT (Zagoruyko and Komodakis 2017): mean squared difference of per-node attention maps."""

    def __init__(self, params: ATParams) -> None:
        super().__init__(params.lambda_, params.layer_map)
        self.p = params.p

    def term(
        self,
        student: ModelOutput,
        teacher: ModelOutput,
        *,
        types: GraphTypes | None = None,
        **_: Any,
    ) -> Tensor:
        if types is None:
            terms = [at_loss(z_s, z_t, p=self.p) for _, z_s, z_t in self._pairs(student, teacher)]
        else:  # maps normalised over the nodes of one type, averaged over the types
            terms = [
                per_type_mean(
                    lambda a, b: at_loss(a, b, p=self.p),
                    z_s,
                    z_t,
                    types.node_type,
                    types.num_node_types,
                )
                for _, z_s, z_t in self._pairs(student, teacher)
            ]
        return torch.stack(terms).sum()


class LocalStructurePreserving(_LayerPairs):
    """LSP (Yang et al. 2020): KL between the two models' local structures on each layer pair.

    On a fixed graph the teacher's log local structures are precomputed once; on dynamic graphs
    (DGCNN) both sides are evaluated on the union of the two models' kNN graphs (paper 3.5).
    In sampled mini-batches nothing is precomputed: the teacher's local structure is taken over
    the sampled edges from its cached features, so both distributions share one support.

    Args:
        params: LSP's own parameters.
        kernel_params: the chosen kernel's validated parameters; ``None``: its defaults.
    """

    reads_edges = True

    def __init__(self, params: LSPParams, kernel_params: BaseModel | None = None) -> None:
        super().__init__(params.lambda_, params.layer_map)
        self.kernel = params.kernel
        self.direction = params.direction
        self.lsp_until_epoch = params.lsp_until_epoch
        self.relation_weights = params.relation_weights
        if kernel_params is None:
            kernel_params = validate_params(f"kernel {self.kernel!r}", KERNELS.get(self.kernel), {})
        #: By the names study files use: what :func:`lsp_loss` takes as ``**kernel_params``.
        self.kernel_params: dict[str, Any] = (
            {} if kernel_params is None else kernel_params.model_dump(by_alias=True)
        )

    def active(self, epoch: int) -> bool:
        # The official code's schedule: LSP only in the first epochs.
        return self.lsp_until_epoch is None or epoch < self.lsp_until_epoch

    def precompute(self, teacher: ModelOutput, graph: Data) -> list[Tensor]:
        """The teacher's ``[E]`` log local structure of every layer the map may pair
        (:func:`teacher_layers_read`: one per pair of an explicit map, every layer for
        ``uniform``, whose pairs depend on the student's depth); on a typed graph, per relation
        (:func:`~study.distill.typed.relation_local_structure`)."""
        types = graph_types(graph)
        if types is not None:
            return [
                relation_local_structure(
                    teacher.hidden[t],
                    graph.edge_index,
                    types.edge_type,
                    types.num_relations,
                    kernel=self.kernel,
                    num_nodes=graph.num_nodes,
                    **self.kernel_params,
                )
                for t in teacher_layers_read(self.layer_map, len(teacher.hidden))
            ]
        return [
            local_structure(
                teacher.hidden[t],
                graph.edge_index,
                kernel=self.kernel,
                num_nodes=graph.num_nodes,
                **self.kernel_params,
            )
            for t in teacher_layers_read(self.layer_map, len(teacher.hidden))
        ]

    def term(
        self,
        student: ModelOutput,
        teacher: ModelOutput,
        *,
        edge_index: Tensor | None,
        precomputed: list[Tensor],
        types: GraphTypes | None = None,
        **_: Any,
    ) -> Tensor:
        terms = []
        pairs = self.pairs(len(student.hidden), len(teacher.hidden))
        read = teacher_layers_read(self.layer_map, len(teacher.hidden))
        for pair, z_s, z_t in self._pairs(student, teacher):
            s_idx, t_idx = pairs[pair]
            kwargs: dict[str, Any] = dict(
                kernel=self.kernel,
                direction=self.direction,
                num_nodes=z_s.shape[0],
                **self.kernel_params,
            )
            if student.edge_indices is not None and teacher.edge_indices is not None:
                # Dynamic graphs: both sides on the union of the two kNN graphs.
                edges = union_edges(
                    student.edge_indices[s_idx], teacher.edge_indices[t_idx], num_nodes=z_s.shape[0]
                )
                terms.append(lsp_loss(z_s, z_t, edges, **kwargs))
                continue
            if edge_index is None:
                raise ValueError("lsp on a fixed graph needs its edge_index")
            log_t = precomputed[read.index(t_idx)] if precomputed else None
            if types is not None:  # one distribution per (target, relation), never mixed
                terms.append(
                    relation_lsp_loss(
                        z_s,
                        z_t,
                        edge_index,
                        types.edge_type,
                        types.num_relations,
                        weights=self._weights(types),
                        teacher_log_ls=log_t,
                        **kwargs,
                    )
                )
                continue
            if self.relation_weights is not None:
                raise UserInputError(
                    "lsp.relation_weights applies to heterogeneous (typed) graphs only",
                    key="relation_weights",
                )
            terms.append(lsp_loss(z_s, z_t, edge_index, teacher_log_ls=log_t, **kwargs))
        return torch.stack(terms).sum()

    def _weights(self, types: GraphTypes) -> list[float] | None:
        if self.relation_weights is None:
            return None  # uniform 1/R
        return relation_weight_vector(self.relation_weights, types.relation_names)


class EdgeAttention(DistillMethod):
    """Edge-attention distillation (:mod:`study.distill.edge_attention`): per-target KL between
    the student's attention over incoming edges and the teacher's attention (or its
    gradient-based edge importance), summed over the ``layer_map`` pairs of attention layers.

    The teacher's side is precomputed once per graph, laid out on the graph's edges and
    self-loops (two tensors per teacher layer read), so that batches of graphs concatenate.
    """

    def __init__(self, params: EdgeAttentionParams) -> None:
        self.lambda_ = params.lambda_
        self.direction = params.direction
        self.heads = params.heads
        self.gradient = params.teacher_source == "gradient"
        self.floor = params.floor
        self.layer_map: LayerMapValue = params.layer_map
        self._teacher: nn.Module | None = None
        self._teacher_layers = 1  # attention layers of the teacher (1: gradient importance)

    def weights(self) -> tuple[float, float]:
        return 1.0, self.lambda_

    def prepare(self, student: nn.Module, teacher: nn.Module | None) -> None:
        # Studies refuse these at validation; this says the same to direct library callers.
        if not has_attention(student):
            raise UserInputError(
                f"edge_attention: the student ({type(student).__name__}) has no attention layers "
                "(expected a gat student or a model built of GATConv/GATv2Conv layers)"
            )
        if teacher is not None and not self.gradient and not has_attention(teacher):
            raise UserInputError(
                f"edge_attention: the teacher ({type(teacher).__name__}) has no attention layers; "
                "expected teacher_source: gradient"
            )
        # The student's attention is read only by this term: its evaluation and latency keep
        # nothing; the frozen teacher runs in eval mode.
        set_attention_recording(student, True, training_only=True)
        if teacher is not None and not self.gradient:
            set_attention_recording(teacher, True)
        self._teacher = teacher

    def precompute(self, teacher: ModelOutput, graph: Data) -> list[Tensor]:
        """Per teacher layer read: its log-attention on the graph's ``[E, H]`` edges and
        ``[N, H]`` self-loops (NaN where it has none)."""
        n = int(graph.num_nodes)
        if self.gradient:
            if self._teacher is None:
                raise ValueError("edge_attention: gradient importance needs the teacher (prepare)")
            g = gradient_edge_importance(self._teacher, graph.x, graph.edge_index)
            log_t = importance_log_attention(g, graph.edge_index, n, floor=self.floor)
            return [log_t, log_t.new_full((n, 1), float("nan"))]
        if teacher.attention is None:
            raise ValueError(
                "edge_attention: the teacher exposes no attention (use teacher_source: gradient)"
            )
        layers = teacher.attention()
        self._teacher_layers = len(layers)
        out: list[Tensor] = []
        for t in teacher_layers_read(self.layer_map, len(layers)):
            out += to_graph_layout(graph.edge_index, n, *layers[t])
        return out

    def term(
        self,
        student: ModelOutput,
        teacher: ModelOutput,
        *,
        edge_index: Tensor | None,
        precomputed: list[Tensor],
        types: GraphTypes | None = None,
        **_: Any,
    ) -> Tensor:
        if edge_index is None or not precomputed:
            raise ValueError("edge_attention needs a fixed graph (node tasks)")
        if student.attention is None:
            raise ValueError("edge_attention: the student exposes no attention")
        layers = student.attention()
        n = precomputed[1].shape[0]  # rows of the self-loop part: the batch's nodes
        read = [0] if self.gradient else teacher_layers_read(self.layer_map, self._teacher_layers)
        terms = []
        for s, t in resolve_pairs(self.layer_map, len(layers), self._teacher_layers):
            k = read.index(t)
            if types is not None:  # one distribution per (target, relation), never mixed
                log_s = to_graph_layout(edge_index, n, *layers[s])[0]  # graph edges only
                log_t = precomputed[2 * k]
                known = ~(torch.isnan(log_s).any(-1) | torch.isnan(log_t).any(-1))
                terms.append(
                    relation_attention_loss(
                        log_s[known],
                        log_t[known],
                        edge_index[:, known],
                        types.edge_type[known],
                        types.num_relations,
                        num_nodes=n,
                        direction=self.direction,
                        heads=self.heads,
                    )
                )
                continue
            edges_t, log_t = from_graph_layout(edge_index, n, *precomputed[2 * k : 2 * k + 2])
            edges, log_s, log_t = align_attention(*layers[s], edges_t, log_t, n, floor=self.floor)
            terms.append(
                edge_attention_loss(
                    log_s, log_t, edges, direction=self.direction, heads=self.heads, num_nodes=n
                )
            )
        return torch.stack(terms).sum()


def build_method(cfg: DistillConfig) -> DistillMethod:
    """The method ``cfg`` names, built from its validated parameters.

    Parameters ``cfg.params`` leaves out take the schema's defaults. A method that takes a kernel
    (:func:`study.catalogs.takes_kernel`, as LSP) also takes the chosen kernel's parameters,
    beside its own; its factory gets them validated as ``kernel_params=``.

    Raises:
        UserInputError: an unknown method, an unknown parameter (naming it and the valid ones), a
            value out of range, or a factory that does not build a :class:`DistillMethod`.
    """
    entry = METHODS.get(cfg.method)
    what = f"method {cfg.method!r}"
    values = dict(cfg.params)
    factory = entry.load()
    if takes_kernel(entry):
        own_names = entry.param_names()
        own = {k: v for k, v in values.items() if k in own_names}
        params = validate_params(what, entry, own)
        kernel = dict(params or {})["kernel"]  # the entry's schema, not necessarily LSPParams
        kernel_entry = KERNELS.get(kernel)
        rest = {k: v for k, v in values.items() if k not in own_names}
        unknown = [k for k in rest if k not in kernel_entry.param_names()]
        if unknown:
            valid = ", ".join((*own_names, *kernel_entry.param_names()))
            raise UserInputError(
                f"{what} with kernel {kernel!r}: unknown parameter {unknown[0]!r} (valid: {valid})"
            )
        kernel_params = validate_params(f"{what}: kernel {kernel!r}", kernel_entry, rest)
        method = factory(params, kernel_params=kernel_params)
    elif entry.params is None:
        validate_params(what, entry, values)  # refuses any key
        method = factory()
    else:
        method = factory(validate_params(what, entry, values))
    if not isinstance(method, DistillMethod):
        raise UserInputError(
            f"{what}: {entry.factory} built a {type(method).__name__}, "
            "expected a study.distill.methods.DistillMethod"
        )
    return method
