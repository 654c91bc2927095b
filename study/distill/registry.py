"""Names a study may choose for distillation: methods, LSP kernels and LSP KL directions.

Lookups by name fail with a one-line :class:`~study.errors.UserInputError` listing the valid
names, like PyG's ``resolver``.
"""

from __future__ import annotations

from study.distill.kernels import KERNELS
from study.errors import choose

#: Distillation methods, ``none`` being the student trained alone.
METHODS: tuple[str, ...] = ("none", "kd", "fitnet", "at", "lsp")

#: One line per method, for help texts and reports.
METHOD_DESCRIPTIONS: dict[str, str] = {
    "none": "student trained alone on the hard labels (the baseline every method must beat)",
    "kd": "Hinton et al. 2015: match the teacher's temperature-softened outputs",
    "fitnet": "Romero et al. 2015: regress the teacher's hidden features through a trained adapter",
    "at": "Zagoruyko and Komodakis 2017: match L2-normalised per-node attention maps",
    "lsp": "Yang et al. 2020: match each node's kernel distribution over its neighbours",
}

#: LSP kernel names (see :mod:`study.distill.kernels`).
KERNEL_NAMES: tuple[str, ...] = tuple(KERNELS)

#: LSP KL directions: the paper's KL(LS^s || LS^t), and the official code's KL(LS^t || LS^s).
DIRECTIONS: tuple[str, ...] = ("student_teacher", "teacher_student")

#: One line per kernel, for help texts and reports.
KERNEL_DESCRIPTIONS: dict[str, str] = {
    "linear": "z_i . z_j",
    "poly": "(z_i . z_j + c)^degree, paper degree 2, c 0",
    "rbf": "exp(-||z_i - z_j||^2 / (2 sigma^2)), paper sigma 1 (the paper's headline kernel)",
    "l2": "-||z_i - z_j||^2",
    "l1_official": "exp(-||z_i - z_j||_1 / 100), the official code's kernel",
}


def check_method(name: str) -> str:
    """Return ``name`` if it is in :data:`METHODS`, else raise ``UserInputError``."""
    choose("method", name, METHODS)
    return name


def check_kernel(name: str) -> str:
    """Return ``name`` if it is in :data:`KERNEL_NAMES`, else raise ``UserInputError``."""
    choose("kernel", name, KERNEL_NAMES)
    return name


def check_direction(name: str) -> str:
    """Return ``name`` if it is in :data:`DIRECTIONS`, else raise ``UserInputError``."""
    choose("direction", name, DIRECTIONS)
    return name
