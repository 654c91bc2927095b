"""Distillation: the losses as pure tensor functions, and the methods built from them.

The names a study may choose (methods, kernels, their parameters and defaults) live in
:mod:`study.catalogs`; :func:`build_method` turns a :class:`~study.train_config.DistillConfig`
into a :class:`DistillMethod`.
"""

from __future__ import annotations

from study.distill.at import at_loss, attention_map
from study.distill.fitnet import FitNetAdapter, fitnet_loss
from study.distill.kd import kd_loss
from study.distill.kernels import edge_kernel, kernel_values, resolve_kernel, squared_distance
from study.distill.lsp import local_structure, lsp_loss, scatter_log_softmax, union_edges
from study.distill.methods import (
    AttentionTransfer,
    DistillMethod,
    FitNet,
    KnowledgeDistillation,
    LocalStructurePreserving,
    NoDistillation,
    build_method,
)

__all__ = [
    "AttentionTransfer",
    "DistillMethod",
    "FitNet",
    "FitNetAdapter",
    "KnowledgeDistillation",
    "LocalStructurePreserving",
    "NoDistillation",
    "at_loss",
    "attention_map",
    "build_method",
    "edge_kernel",
    "fitnet_loss",
    "kd_loss",
    "kernel_values",
    "local_structure",
    "lsp_loss",
    "resolve_kernel",
    "scatter_log_softmax",
    "squared_distance",
    "union_edges",
]
