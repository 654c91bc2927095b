"""Graph attention networks (Velickovic et al. 2018): the PPI teacher and student of LSP.

Width convention (Table 1 of Yang et al. 2020, as their code builds it):
``hidden[l]`` is layer ``l``'s width PER HEAD. Every layer but the last concatenates its
``heads[l]`` heads, so it emits ``hidden[l] * heads[l]`` features; the last layer averages its
heads, so it emits ``hidden[-1] == out_channels`` logits (or concatenates them when
``concat_last``, then ``hidden[-1] * heads[-1] == out_channels``). The teacher
"hidden 256,256,121, heads 4,4,6" is thus 50 -> 1024 -> 1024 -> 121.

Residual convention (the LSP authors' DGL code, ``ihollywhy/DistillGCN.PyTorch``): no skip on
the first layer; every later layer adds a bias-free linear projection of its input to its
pre-merge output (``heads * hidden`` wide, also on the averaged last layer). Their DGL 0.4
``GATConv`` chose an identity shortcut only when ``in == out`` per head, never the case here, so
all those skips are linear: that is what makes the teacher's 3.64M parameters come out
(3,643,522 here; DGL 0.4 had no bias vector, 3,640,748). The same convention gives the
student 185,958 parameters, not the paper's 0.16M, which no convention consistent with the
teacher's count reproduces (see ``tests/test_models_gat.py``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv

from study.errors import UserInputError
from study.models.attention import AttentionRecorder
from study.models.base import ModelOutput


class GAT(nn.Module):
    """A stack of ``GATConv`` layers with ELU between them, returning hidden features.

    Args:
        in_channels: input node feature width.
        hidden: per-head width of each layer, last entry included (see the module docstring);
            ``len(hidden)`` is the number of ``GATConv`` layers.
        heads: attention heads per layer, same length as ``hidden``.
        out_channels: number of logits per node.
        dropout: dropout on each layer's input features and on the attention coefficients.
        residual: linear skip connections on every layer after the first.
        concat_last: concatenate (rather than average) the last layer's heads.

    ``forward`` returns ``ModelOutput(logits [N, out_channels], hidden, None)`` where ``hidden``
    holds, for every layer before the last, its output after ELU (``[N, hidden[l] * heads[l]]``);
    with a single layer, ``hidden == [logits]`` so a layer map always finds something to match.
    The default layer map pairs the last entries: the teacher's and student's last hidden layers.
    With attention recording on (:func:`study.models.attention.set_attention_recording`, what
    ``edge_attention`` does), ``attention`` gives every layer's log-attention, one per
    ``GATConv``; off (the default) the forward keeps nothing more.
    """

    def __init__(
        self,
        in_channels: int,
        hidden: list[int],
        heads: list[int],
        out_channels: int,
        *,
        dropout: float = 0.0,
        residual: bool = True,
        concat_last: bool = False,
    ) -> None:
        super().__init__()
        hidden, heads = [int(h) for h in hidden], [int(h) for h in heads]
        _check_widths(in_channels, hidden, heads, out_channels, dropout, concat_last)
        self.dropout = float(dropout)
        self.concat_last = bool(concat_last)
        self.heads = heads
        self.convs = nn.ModuleList()
        width_in = in_channels
        for layer, (per_head, num_heads) in enumerate(zip(hidden, heads, strict=True)):
            # Every layer concatenates inside GATConv; the last one averages afterwards, so its
            # residual is heads * per_head wide as in the authors' code (PyG's own
            # concat=False residual would be per_head wide: 0.6M fewer teacher parameters).
            self.convs.append(
                GATConv(
                    width_in,
                    per_head,
                    heads=num_heads,
                    concat=True,
                    dropout=self.dropout,
                    residual=residual and layer > 0,
                )
            )
            width_in = per_head * num_heads
        #: Reads the layers' attention when a method asks (``ModelOutput.attention``).
        self.attention_recorder = AttentionRecorder(self)
        self.spec: dict = {
            "arch": "gat",
            "in_channels": int(in_channels),
            "out_channels": int(out_channels),
            "hidden": hidden,
            "heads": heads,
            "dropout": self.dropout,
            "residual": bool(residual),
            "concat_last": self.concat_last,
        }

    def forward(self, x: Tensor, edge_index: Tensor) -> ModelOutput:
        """Run all layers.

        Args:
            x: ``[N, in_channels]`` node features.
            edge_index: ``[2, E]`` edges (source row 0, target row 1).

        Returns:
            ``ModelOutput`` with ``logits [N, out_channels]`` and the hidden features.
        """
        hidden: list[Tensor] = []
        self.attention_recorder.start()
        for layer in range(self.num_layers):
            x = self.layer(layer, x, edge_index)
            if layer < self.num_layers - 1:
                hidden.append(x)
        x = self.readout(x)
        attention = self.attention_recorder.take()
        return ModelOutput(logits=x, hidden=hidden or [x], attention=attention)

    #: Layer-wise inference (:mod:`study.inference`) gives each chunk its nodes' neighbours.
    reads_graph = True

    @property
    def num_layers(self) -> int:
        """Number of ``GATConv`` layers."""
        return len(self.convs)

    def chunk_state(self, rowptr: Tensor, col: Tensor) -> Tensor | None:
        """Nothing: attention normalises over each target's incoming edges, which a chunk of
        targets has whole."""
        return None

    def chunk_edges(
        self, edge_index: Tensor, node_ids: Tensor, num_targets: int, state: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """A chunk's edges as they are: ``GATConv`` adds the targets' self-loops itself."""
        return edge_index, None

    def layer(
        self,
        index: int,
        x: Tensor,
        edge_index: Tensor,
        edge_weight: Tensor | None = None,
        num_targets: int | None = None,
    ) -> Tensor:
        """Layer ``index``: dropout, ``GATConv`` (heads concatenated), ELU unless it is the last.

        ``num_targets``: see :meth:`study.models.stack.ConvStack.layer` (bipartite; the first
        ``num_targets`` rows of ``x`` are the targets, so self-loops stay right)."""
        x = F.dropout(x, p=self.dropout, training=self.training)
        conv = self.convs[index]
        if num_targets is None:
            x = conv(x, edge_index)
        else:
            x = conv((x, x[:num_targets]), edge_index, size=(x.shape[0], num_targets))
        return F.elu(x) if index < self.num_layers - 1 else x

    def readout(self, x: Tensor) -> Tensor:
        """``[N, out_channels]`` logits from the last layer's ``[N, heads * per_head]``."""
        if self.concat_last:
            return x
        return x.view(x.shape[0], self.heads[-1], -1).mean(dim=1)


def _check_widths(
    in_channels: int,
    hidden: list[int],
    heads: list[int],
    out_channels: int,
    dropout: float,
    concat_last: bool,
) -> None:
    if not hidden:
        raise UserInputError("gat: hidden must list at least one layer width (got [])")
    if len(heads) != len(hidden):
        raise UserInputError(f"gat: heads {heads} must have one entry per layer in hidden {hidden}")
    if min(hidden) < 1 or min(heads) < 1 or in_channels < 1 or out_channels < 1:
        raise UserInputError(
            f"gat: widths and heads must be positive (in_channels={in_channels}, "
            f"hidden={hidden}, heads={heads}, out_channels={out_channels})"
        )
    final = hidden[-1] * heads[-1] if concat_last else hidden[-1]
    if final != out_channels:
        rule = "hidden[-1] * heads[-1]" if concat_last else "hidden[-1]"
        raise UserInputError(
            f"gat: {rule} = {final} must equal out_channels = {out_channels} "
            f"(concat_last={concat_last})"
        )
    if not 0.0 <= dropout < 1.0:
        raise UserInputError(f"gat: dropout={dropout} must be in [0, 1)")


def build_gat(
    in_channels: int,
    out_channels: int,
    *,
    width: int,
    depth: int,
    heads: int | list[int],
    dropout: float = 0.0,
    residual: bool = True,
) -> GAT:
    """A GAT from free width and depth (what a search space varies).

    Args:
        in_channels: input node feature width.
        out_channels: logits per node.
        width: per-head width of every hidden layer.
        depth: number of ``GATConv`` layers, the output layer included (``>= 1``).
        heads: heads of every layer, or one entry per layer.
        dropout: see :class:`GAT`.
        residual: see :class:`GAT`.
    """
    if depth < 1:
        raise UserInputError(f"gat: depth={depth} must be at least 1")
    head_list = [int(heads)] * depth if isinstance(heads, int) else [int(h) for h in heads]
    if len(head_list) != depth:
        raise UserInputError(f"gat: heads {head_list} must have depth={depth} entries")
    hidden = [int(width)] * (depth - 1) + [int(out_channels)]
    return GAT(in_channels, hidden, head_list, out_channels, dropout=dropout, residual=residual)


def gat_ppi_teacher(in_channels: int = 50, out_channels: int = 121, **kwargs) -> GAT:
    """The PPI teacher: 3 layers, 4,4,6 heads of 256,256,out (3.64M parameters on PPI)."""
    return GAT(in_channels, [256, 256, out_channels], [4, 4, 6], out_channels, **kwargs)


def gat_ppi_student(in_channels: int = 50, out_channels: int = 121, **kwargs) -> GAT:
    """The PPI student: 5 layers, 2 heads each of 68,68,68,68,out (0.19M; paper says 0.16M)."""
    return GAT(in_channels, [68] * 4 + [out_channels], [2] * 5, out_channels, **kwargs)
