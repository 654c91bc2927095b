"""Dynamic graph CNN (Wang et al. 2019) for point-cloud classification: the ModelNet40 models.

Each EdgeConv layer rebuilds a kNN graph on its own input (the coordinates for the first) and
computes ``h_i = max_j LeakyReLU(BN(W [x_j - x_i, x_i]))`` over the ``k`` neighbours ``j`` of
``i`` (the point itself included, as in DGCNN's code). The layer outputs are concatenated,
lifted to ``emb_dims`` per point, max- and mean-pooled over the cloud and classified by an MLP.

The edge MLP is evaluated in dense form without materialising ``[B, P, k, 2F]`` edge inputs:
``W [x_j - x_i, x_i] = W_a x_j + (W_b - W_a) x_i``, so both products are taken per point and
only the ``[B, P, k, C]`` result is gathered. Parameters are those of the ordinary layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from study.errors import UserInputError
from study.models.base import ModelOutput
from study.models.knn import knn_indices, knn_to_edge_index, neighbour_max

_SLOPE = 0.2  # DGCNN's LeakyReLU slope everywhere


class EdgeConvDense(nn.Module):
    """One EdgeConv layer on batched clouds, given each point's neighbour indices.

    Args:
        in_channels: input feature width ``F``.
        out_channels: output width ``C``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        # Input order [x_j - x_i, x_i] as in DGCNN; no bias because BN follows.
        self.lin = nn.Linear(2 * in_channels, out_channels, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.in_channels = in_channels

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:
        """Aggregate over the given neighbours.

        Args:
            x: ``[B, P, F]`` point features.
            idx: ``[B, P, k]`` neighbour indices within each cloud.

        Returns:
            ``[B, P, C]`` new point features.
        """
        if not self.training and self.bn.running_mean is not None:
            return self._inference(x, idx)
        w_diff, w_centre = self.lin.weight.split(self.in_channels, dim=1)
        neighbour = x @ w_diff.t()  # [B, P, C]
        centre = x @ (w_centre - w_diff).t()  # [B, P, C]
        batch, num_points, k = idx.shape
        flat = (idx + torch.arange(batch, device=x.device).view(-1, 1, 1) * num_points).view(-1)
        gathered = neighbour.reshape(batch * num_points, -1)[flat].view(batch, num_points, k, -1)
        edge = gathered + centre.unsqueeze(2)  # [B, P, k, C]
        # BatchNorm2d over [B, C, P, k] gives the statistics of DGCNN's Conv2d layers.
        edge = self.bn(edge.permute(0, 3, 1, 2))
        edge = F.leaky_relu(edge, _SLOPE)
        return edge.amax(dim=-1).transpose(1, 2)

    def _inference(self, x: Tensor, idx: Tensor) -> Tensor:
        """Eval mode: BatchNorm is then a per-channel affine map ``v * s + t`` and LeakyReLU is
        increasing, so ``max_j LeakyReLU(BN(n_j + c_i)) = LeakyReLU(max_j(s * n_j) + s * c_i
        + t)`` (a negative ``s`` turns the max of ``n_j`` into ``s`` times its min, which
        ``max_j(s * n_j)`` is). Folding ``s`` into the weights leaves one max over neighbours of
        a per-point product, and no ``[B, P, k, C]`` edge tensor: the same output, far less
        memory traffic (this is the teacher forward of every LSP step)."""
        bn = self.bn
        # Eval mode reads the running statistics, which BatchNorm keeps by default.
        assert bn.running_var is not None and bn.running_mean is not None
        scale = bn.running_var.add(bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        w_diff, w_centre = self.lin.weight.split(self.in_channels, dim=1)
        neighbour = x @ (w_diff * scale.unsqueeze(1)).t()  # [B, P, C]
        centre = torch.addmm(  # [B*P, C]: s * c_i + t in one product
            shift, x.reshape(-1, x.shape[-1]), ((w_centre - w_diff) * scale.unsqueeze(1)).t()
        )
        extreme = neighbour_max(neighbour, idx)  # [B, P, C]
        return F.leaky_relu(extreme + centre.view_as(extreme), _SLOPE)


class DGCNN(nn.Module):
    """DGCNN classifier that also returns every EdgeConv layer's features and graph.

    Args:
        in_channels: per-point input width (3 for xyz; 6 with normals). The first kNN graph is
            built on the coordinates ``points[..., :3]``.
        edge_channels: output width of each EdgeConv layer.
        emb_dims: per-point width after the concatenated layers are lifted (before pooling).
        mlp: hidden widths of the classifier head (Linear + BN + LeakyReLU + dropout each).
        num_classes: number of classes.
        k: neighbours per point in every layer's graph.
        dropout: dropout after each hidden layer of the head.

    ``forward(points [B, P, in_channels])`` returns ``ModelOutput(logits [B, num_classes],
    hidden, edge_indices)``: ``hidden[l]`` is EdgeConv layer ``l``'s output ``[B*P, C_l]`` and
    ``edge_indices[l]`` the ``[2, B*P*k]`` graph it aggregated over (flat ``b * P + p``).
    """

    def __init__(
        self,
        in_channels: int = 3,
        edge_channels: list[int] | None = None,
        emb_dims: int = 1024,
        mlp: list[int] | None = None,
        num_classes: int = 40,
        k: int = 20,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        edge_channels = [64, 64, 128, 256] if edge_channels is None else list(edge_channels)
        mlp = [512, 256] if mlp is None else list(mlp)
        edge_channels, mlp = [int(c) for c in edge_channels], [int(c) for c in mlp]
        _check(in_channels, edge_channels, emb_dims, mlp, num_classes, k, dropout)
        self.k = int(k)
        self.edge_convs = nn.ModuleList()
        width = in_channels
        for channels in edge_channels:
            self.edge_convs.append(EdgeConvDense(width, channels))
            width = channels
        self.embed = nn.Sequential(
            nn.Linear(sum(edge_channels), emb_dims, bias=False),
            _PointBatchNorm(emb_dims),
            nn.LeakyReLU(_SLOPE),
        )
        head: list[nn.Module] = []
        width = 2 * emb_dims  # max pool and mean pool side by side
        for channels in mlp:
            head += [
                nn.Linear(width, channels, bias=False),
                nn.BatchNorm1d(channels),
                nn.LeakyReLU(_SLOPE),
                nn.Dropout(dropout),
            ]
            width = channels
        head.append(nn.Linear(width, num_classes))
        self.head = nn.Sequential(*head)
        self.spec: dict = {
            "arch": "dgcnn",
            "in_channels": int(in_channels),
            "out_channels": int(num_classes),
            "edge_channels": edge_channels,
            "emb_dims": int(emb_dims),
            "mlp": mlp,
            "k": self.k,
            "dropout": float(dropout),
        }

    def forward(self, points: Tensor, *, with_logits: bool = True) -> ModelOutput:
        """Classify a batch of equal-sized clouds.

        Args:
            points: ``[B, P, in_channels]`` clouds.
            with_logits: ``False`` stops after the EdgeConv layers (``logits=None``): what a
                frozen teacher runs for LSP, FitNet and AT, which read only its layers. The
                lift to ``emb_dims`` and the head are a fifth of the ModelNet teacher's forward.

        Returns:
            ``ModelOutput`` with ``logits [B, num_classes]``, ``hidden`` and ``edge_indices``.
        """
        batch, num_points, _ = points.shape
        x = points
        layer_out: list[Tensor] = []
        edges: list[Tensor] = []
        for layer, conv in enumerate(self.edge_convs):
            idx = knn_indices(points[..., :3] if layer == 0 else x, self.k, include_self=True)
            x = conv(x, idx)
            layer_out.append(x)
            edges.append(knn_to_edge_index(idx))
        hidden = [h.reshape(batch * num_points, -1) for h in layer_out]
        if not with_logits:
            return ModelOutput(logits=None, hidden=hidden, edge_indices=edges)
        emb = self.embed(torch.cat(layer_out, dim=-1))  # [B, P, emb_dims]
        pooled = torch.cat([emb.amax(dim=1), emb.mean(dim=1)], dim=-1)
        logits = self.head(pooled)
        return ModelOutput(logits=logits, hidden=hidden, edge_indices=edges)


class _PointBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over the channel dim of ``[B, P, C]`` (DGCNN's Conv1d + BN1d layout).

    Statistics over ``B`` and ``P`` are those over the rows of ``[B*P, C]``, and normalising
    that contiguous view is 4-5x faster on CPU than the transposed ``[B, C, P]`` one.
    """

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).view_as(x)


def _check(
    in_channels: int,
    edge_channels: list[int],
    emb_dims: int,
    mlp: list[int],
    num_classes: int,
    k: int,
    dropout: float,
) -> None:
    if not edge_channels:
        raise UserInputError("dgcnn: edge_channels must list at least one layer (got [])")
    widths = [in_channels, emb_dims, num_classes, *edge_channels, *mlp]
    if min(widths) < 1:
        raise UserInputError(
            f"dgcnn: widths must be positive (in_channels={in_channels}, "
            f"edge_channels={edge_channels}, emb_dims={emb_dims}, mlp={mlp}, "
            f"num_classes={num_classes})"
        )
    if k < 1:
        raise UserInputError(f"dgcnn: k={k} must be at least 1")
    if not 0.0 <= dropout < 1.0:
        raise UserInputError(f"dgcnn: dropout={dropout} must be in [0, 1)")


def edge_widths(width: int, depth: int) -> list[int]:
    """DGCNN's width pattern ``w, w, 2w, 4w, 8w, ...`` (64,64,128,256 for ``w=64, depth=4``)."""
    return [width * 2 ** max(0, layer - 1) for layer in range(depth)]


def build_dgcnn(
    num_classes: int,
    *,
    width: int,
    depth: int,
    k: int,
    emb_dims: int,
    mlp: list[int],
    in_channels: int = 3,
    dropout: float = 0.5,
) -> DGCNN:
    """A DGCNN from free width and depth (what a search space varies).

    Args:
        num_classes: number of classes.
        width: first EdgeConv width; layer widths follow :func:`edge_widths`.
        depth: number of EdgeConv layers (``>= 1``).
        k: neighbours per point.
        emb_dims: per-point embedding width before pooling.
        mlp: hidden widths of the classifier head.
        in_channels: per-point input width.
        dropout: head dropout.
    """
    if depth < 1 or width < 1:
        raise UserInputError(f"dgcnn: width={width} and depth={depth} must be at least 1")
    return DGCNN(
        in_channels,
        edge_widths(width, depth),
        emb_dims,
        mlp,
        num_classes=num_classes,
        k=k,
        dropout=dropout,
    )


def dgcnn_modelnet_teacher(
    num_classes: int = 40, *, in_channels: int = 3, dropout: float = 0.5
) -> DGCNN:
    """The ModelNet40 teacher: EdgeConv 64,64,128,256, emb 1024, MLP 512,256, K=20 (1.81M)."""
    return DGCNN(
        in_channels, [64, 64, 128, 256], 1024, [512, 256], num_classes, k=20, dropout=dropout
    )


def dgcnn_modelnet_student(
    num_classes: int = 40, *, in_channels: int = 3, dropout: float = 0.5
) -> DGCNN:
    """The ModelNet40 student: EdgeConv 32,32,64,128, MLP 256, K=10, emb 88 (0.10M).

    The paper does not give the student's embedding width; 88 (a multiple of 8) is the one that
    lands at its 0.10M parameters: 101,784 with 40 classes (emb 1024 would give 0.82M).
    """
    return DGCNN(in_channels, [32, 32, 64, 128], 88, [256], num_classes, k=10, dropout=dropout)
