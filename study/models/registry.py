"""Build a model by architecture name and optional paper preset; count its parameters.

Every model built here carries ``model.spec``: a JSON-friendly dict such that
``build_model(**model.spec)`` rebuilds the same architecture, so a checkpoint can be checked
against the architecture it is loaded into (and teachers cached by the hash of their spec).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from study.catalog import import_factory
from study.catalogs import MODELS
from study.errors import UserInputError, choose
from study.models.dgcnn import DGCNN, build_dgcnn
from study.models.gat import GAT, build_gat
from study.models.user import USER_ARCH, build_user_model

# Keyword sets accepted without a preset: the full constructor form (what ``spec`` holds) or
# the free width/depth form a search space uses.
_GAT_FULL = {"hidden", "heads", "dropout", "residual", "concat_last"}
_DGCNN_FULL = {"edge_channels", "emb_dims", "mlp", "k", "dropout"}
_PRESET_KEYS = {"gat": {"dropout", "residual"}, "dgcnn": {"dropout"}}


def build_model(
    arch: str | None = None,
    *,
    in_channels: int,
    out_channels: int,
    preset: str | None = None,
    factory: str | None = None,
    options: Mapping[str, Any] | None = None,
    hidden: Sequence[str] = (),
    base_dir: str | os.PathLike | None = None,
    types: Mapping[str, int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a model: a catalog architecture (from a paper preset or sizes) or a user's factory.

    Args:
        arch: an entry of :data:`~study.catalogs.MODELS` (``"gat"``, ``"gcn"``, ``"sage"``,
            ``"mlp"`` for node tasks, ``"dgcnn"`` for point clouds); ``None`` (or ``"factory"``,
            as a user model's ``spec`` says) with ``factory``.
        in_channels: input width per node (node models) or per point (DGCNN, 3 for xyz).
        out_channels: logits per node (node models) or classes (DGCNN).
        preset: a preset of the architecture's entry (``ppi_teacher``, ``modelnet_student``...);
            ``kwargs`` may then override only ``dropout`` (and ``residual`` for GAT).
        factory, options, hidden, base_dir: a user model (see :mod:`study.models.user`);
            ``hidden`` names its hooked submodules (for GAT it is the constructor's per-layer
            widths).
        **kwargs: without a preset, either the constructor's sizes (GAT: ``hidden, heads``;
            DGCNN: ``edge_channels, emb_dims, mlp, k``) or free sizes (the entry's schema:
            GAT ``width, depth, heads``; DGCNN ``width, depth, k, emb_dims, mlp``; GCN,
            GraphSAGE, MLP ``width, depth``), plus ``dropout`` etc.
        types: a typed graph's ``{"num_node_types", "num_relations"}`` (see
            :func:`study.data.base.io_channels`): sizes a relation-aware architecture (``rgcn``),
            ignored by the others (they see the relations collapsed into one graph).

    Returns:
        The model, with ``model.spec`` set: ``build_model(**model.spec)`` rebuilds it.
    """
    if factory is not None or arch == USER_ARCH:
        if factory is None or kwargs or preset is not None:
            raise UserInputError("a user model takes factory, options and hidden only")
        return build_user_model(
            factory,
            in_channels=in_channels,
            out_channels=out_channels,
            options=options,
            hidden=hidden,
            base_dir=base_dir,
        )
    if arch is None:
        raise UserInputError("a model needs an architecture name or a factory")
    if hidden:
        kwargs["hidden"] = list(hidden)  # GAT's constructor form: per-layer widths
    entry = MODELS.get(arch)
    if preset is not None:
        presets = entry.info.get("presets", {})
        if not presets:
            raise UserInputError(f"unknown {arch} preset {preset!r} ({arch} has no presets)")
        choose(f"{arch} preset", preset, presets)
        _check_keys(f"{arch} preset {preset}", kwargs, _PRESET_KEYS.get(arch, {"dropout"}))
        builder = import_factory(presets[preset])
        if arch == "dgcnn":
            return builder(out_channels, in_channels=in_channels, **kwargs)
        return builder(in_channels, out_channels, **kwargs)
    if arch == "gat":
        return _build_gat(in_channels, out_channels, kwargs)
    if arch == "dgcnn":
        return _build_dgcnn(in_channels, out_channels, kwargs)
    if entry.info.get("typed", False):
        # A spec (build_model(**model.spec)) carries its type counts; a study's sizes do not.
        counts: dict[str, Any] = {
            k: kwargs.pop(k) for k in ("num_node_types", "num_relations") if k in kwargs
        }
        counts.update(types or {})
        return entry.load()(in_channels, out_channels, **_free_sizes(arch, kwargs), **counts)
    # Sizes left out take the entry's schema defaults: one source for them, built-in or plugin.
    return entry.load()(in_channels, out_channels, **_free_sizes(arch, kwargs))


def _build_gat(in_channels: int, out_channels: int, kwargs: dict[str, Any]) -> GAT:
    if "hidden" in kwargs:
        _check_keys("gat", kwargs, _GAT_FULL, required=("hidden", "heads"))
        return GAT(in_channels, out_channels=out_channels, **kwargs)
    return build_gat(
        in_channels, out_channels, **_free_sizes("gat", kwargs, frozenset({"residual"}))
    )


def _build_dgcnn(in_channels: int, out_channels: int, kwargs: dict[str, Any]) -> DGCNN:
    if "edge_channels" in kwargs:
        _check_keys("dgcnn", kwargs, _DGCNN_FULL, required=("edge_channels", "emb_dims", "mlp"))
        return DGCNN(in_channels, num_classes=out_channels, **kwargs)
    return build_dgcnn(out_channels, in_channels=in_channels, **_free_sizes("dgcnn", kwargs))


def _free_sizes(
    arch: str, kwargs: dict[str, Any], extra: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """``kwargs`` checked against the entry's schema (plus ``extra`` constructor keywords), the
    sizes left out filled with the schema's defaults."""
    entry = MODELS.get(arch)
    _check_keys(arch, kwargs, set(entry.param_names()) | extra)
    return {**entry.defaults(), **kwargs}


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
