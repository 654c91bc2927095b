"""FitNet hint loss: regress the teacher's hidden features through a trained adapter.

Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015 (DESIGN.md section 2).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class FitNetAdapter(nn.Module):
    """Linear map from the student's hidden width to the teacher's, trained with the student.

    Its parameters must be handed to the student's optimiser (they are not part of the student
    model), and it is discarded after training: the deployed student never runs it.

    Args:
        in_features: student width ``F_s``.
        out_features: teacher width ``F_t``.
        bias: whether the map has a bias.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)

    def forward(self, z_s: Tensor) -> Tensor:
        """Map ``[N, F_s]`` student features to ``[N, F_t]``."""
        return self.linear(z_s)


def fitnet_loss(z_s: Tensor, z_t: Tensor, adapter: nn.Module) -> Tensor:
    """``MSE(adapter(z_s), z_t)``, averaged over all ``N * F_t`` entries.

    Args:
        z_s: ``[N, F_s]`` student hidden features.
        z_t: ``[N, F_t]`` teacher hidden features (the target; normally computed under
            ``no_grad``).
        adapter: maps ``[N, F_s]`` to ``[N, F_t]``, usually a :class:`FitNetAdapter`.

    Returns:
        A scalar.
    """
    mapped = adapter(z_s)
    if mapped.shape != z_t.shape:
        raise ValueError(
            f"fitnet_loss: adapter output {tuple(mapped.shape)} does not match teacher features "
            f"{tuple(z_t.shape)}"
        )
    return F.mse_loss(mapped, z_t.to(mapped.dtype))
