"""Build a model by architecture name and optional paper preset; count its parameters.

Every model built here carries ``model.spec``: a JSON-friendly dict such that
``build_model(**model.spec)`` rebuilds the same architecture, so a checkpoint can be checked
against the architecture it is loaded into (and teachers cached by the hash of their spec).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from study.errors import UserInputError, choose
from study.models.dgcnn import (
    DGCNN,
    build_dgcnn,
    dgcnn_modelnet_student,
    dgcnn_modelnet_teacher,
)
from study.models.gat import GAT, build_gat, gat_ppi_student, gat_ppi_teacher
from study.models.gcn import GCN
from study.models.mlp import MLP
from study.models.sage import GraphSAGE

ARCHITECTURES = ("dgcnn", "gat", "gcn", "mlp", "sage")

# Plain stacks built from the free form only (their spec holds the same keys).
_STACKS: dict[str, type[nn.Module]] = {"gcn": GCN, "sage": GraphSAGE, "mlp": MLP}

# preset name -> (builder(in_channels, out_channels, **overrides), overridable keywords)
_PRESETS: dict[str, dict[str, tuple[Callable[..., nn.Module], set[str]]]] = {
    "gat": {
        "ppi_teacher": (gat_ppi_teacher, {"dropout", "residual"}),
        "ppi_student": (gat_ppi_student, {"dropout", "residual"}),
    },
    "dgcnn": {
        "modelnet_teacher": (
            lambda i, o, **kw: dgcnn_modelnet_teacher(o, in_channels=i, **kw),
            {"dropout"},
        ),
        "modelnet_student": (
            lambda i, o, **kw: dgcnn_modelnet_student(o, in_channels=i, **kw),
            {"dropout"},
        ),
    },
}

# Keyword sets accepted without a preset: the full constructor form (what ``spec`` holds) or
# the free width/depth form a search space uses.
_GAT_FULL = {"hidden", "heads", "dropout", "residual", "concat_last"}
_GAT_FREE = {"width", "depth", "heads", "dropout", "residual"}
_DGCNN_FULL = {"edge_channels", "emb_dims", "mlp", "k", "dropout"}
_DGCNN_FREE = {"width", "depth", "k", "emb_dims", "mlp", "dropout"}
_STACK_FREE = {"width", "depth", "dropout"}


def build_model(
    arch: str,
    *,
    in_channels: int,
    out_channels: int,
    preset: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a model by name, from a paper preset or from explicit sizes.

    Args:
        arch: ``"gat"``, ``"gcn"``, ``"sage"``, ``"mlp"`` (node classification) or ``"dgcnn"``
            (point clouds).
        in_channels: input width per node (node models) or per point (DGCNN, 3 for xyz).
        out_channels: logits per node (node models) or classes (DGCNN).
        preset: ``ppi_teacher``/``ppi_student`` (GAT) or ``modelnet_teacher``/
            ``modelnet_student`` (DGCNN); ``kwargs`` may then override only ``dropout``
            (and ``residual`` for GAT). GCN, GraphSAGE and MLP have no presets.
        **kwargs: without a preset, either the constructor's sizes (GAT: ``hidden, heads``;
            DGCNN: ``edge_channels, emb_dims, mlp, k``) or free sizes (GAT: ``width, depth,
            heads``; DGCNN: ``width, depth, k, emb_dims, mlp``; GCN, GraphSAGE, MLP: ``width,
            depth``), plus ``dropout`` etc.

    Returns:
        The model, with ``model.spec`` set.
    """
    choose("architecture", arch, ARCHITECTURES)
    if preset is not None:
        if arch not in _PRESETS:
            raise UserInputError(f"unknown {arch} preset {preset!r} ({arch} has no presets)")
        choose(f"{arch} preset", preset, _PRESETS[arch])
        builder, allowed = _PRESETS[arch][preset]
        _check_keys(f"{arch} preset {preset}", kwargs, allowed)
        return builder(in_channels, out_channels, **kwargs)
    if arch in _STACKS:
        _check_keys(arch, kwargs, _STACK_FREE, required=("width", "depth"))
        return _STACKS[arch](in_channels, out_channels, **kwargs)
    if arch == "gat":
        return _build_gat(in_channels, out_channels, kwargs)
    return _build_dgcnn(in_channels, out_channels, kwargs)


def _build_gat(in_channels: int, out_channels: int, kwargs: dict[str, Any]) -> GAT:
    if "hidden" in kwargs:
        _check_keys("gat", kwargs, _GAT_FULL, required=("hidden", "heads"))
        return GAT(in_channels, out_channels=out_channels, **kwargs)
    _check_keys("gat", kwargs, _GAT_FREE, required=("width", "depth", "heads"))
    return build_gat(in_channels, out_channels, **kwargs)


def _build_dgcnn(in_channels: int, out_channels: int, kwargs: dict[str, Any]) -> DGCNN:
    if "edge_channels" in kwargs:
        _check_keys("dgcnn", kwargs, _DGCNN_FULL, required=("edge_channels", "emb_dims", "mlp"))
        return DGCNN(in_channels, num_classes=out_channels, **kwargs)
    _check_keys("dgcnn", kwargs, _DGCNN_FREE, required=("width", "depth", "k", "emb_dims", "mlp"))
    return build_dgcnn(out_channels, in_channels=in_channels, **kwargs)


def _check_keys(
    what: str, kwargs: dict[str, Any], allowed: set[str], required: tuple[str, ...] = ()
) -> None:
    for key in kwargs:
        if key not in allowed:
            raise UserInputError(
                f"{what}: unknown option {key!r} (valid: {', '.join(sorted(allowed))})"
            )
    missing = [key for key in required if key not in kwargs]
    if missing:
        raise UserInputError(f"{what}: missing option(s) {', '.join(missing)}")


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model`` (shared ones once, frozen ones included)."""
    return sum(p.numel() for p in model.parameters())
