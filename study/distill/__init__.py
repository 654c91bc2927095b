"""Distillation losses as pure tensor functions, and the names a study may choose them by."""

from __future__ import annotations

from study.distill.at import at_loss, attention_map
from study.distill.fitnet import FitNetAdapter, fitnet_loss
from study.distill.kd import kd_loss
from study.distill.kernels import KERNELS, edge_kernel, kernel_values, squared_distance
from study.distill.lsp import local_structure, lsp_loss, scatter_log_softmax, union_edges
from study.distill.registry import (
    DIRECTIONS,
    KERNEL_DESCRIPTIONS,
    KERNEL_NAMES,
    METHOD_DESCRIPTIONS,
    METHODS,
    check_direction,
    check_kernel,
    check_method,
)

__all__ = [
    "DIRECTIONS",
    "KERNELS",
    "KERNEL_DESCRIPTIONS",
    "KERNEL_NAMES",
    "METHODS",
    "METHOD_DESCRIPTIONS",
    "FitNetAdapter",
    "at_loss",
    "attention_map",
    "check_direction",
    "check_kernel",
    "check_method",
    "edge_kernel",
    "fitnet_loss",
    "kd_loss",
    "kernel_values",
    "local_structure",
    "lsp_loss",
    "scatter_log_softmax",
    "squared_distance",
    "union_edges",
]
