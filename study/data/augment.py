"""Training-time point-cloud augmentation, as in DGCNN's reference code.

DGCNN (``WangYueFt/dgcnn``, ``pytorch/data.py``) augments every training cloud with
``translate_pointcloud``: a random per-axis scale in ``[2/3, 3/2]`` and a random per-axis shift
in ``[-0.2, 0.2]``, followed by ``np.random.shuffle`` of the points. This is the same, for a whole
batch at once and drawn from an explicit generator so that a run is reproducible.
"""

from __future__ import annotations

import torch
from torch import Tensor

SCALE_RANGE = (2.0 / 3.0, 3.0 / 2.0)
SHIFT_RANGE = (-0.2, 0.2)


def augment_pointcloud(points: Tensor, generator: torch.Generator) -> Tensor:
    """Randomly scale, translate and shuffle each cloud of a batch (DGCNN's augmentation).

    Every cloud ``b`` gets its own scale ``s_b ~ U[2/3, 3/2]^3`` and shift ``t_b ~ U[-0.2, 0.2]^3``
    (``out = points * s_b + t_b``), then its points are permuted at random. The draws come from
    ``generator`` only (on the generator's device), so equal seeds give equal batches.

    Args:
        points: ``[B, P, 3]`` clouds.
        generator: the source of randomness.

    Returns:
        ``[B, P, 3]`` augmented clouds, a new tensor on ``points``' device and dtype.
    """
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must be [B, P, 3], got {list(points.shape)}")
    b, p, _ = points.shape
    dev = generator.device
    lo, hi = SCALE_RANGE
    scale = lo + (hi - lo) * torch.rand(b, 1, 3, generator=generator, device=dev)
    lo, hi = SHIFT_RANGE
    shift = lo + (hi - lo) * torch.rand(b, 1, 3, generator=generator, device=dev)
    # argsort of uniform noise: an independent random permutation per cloud, in one call.
    perm = torch.rand(b, p, generator=generator, device=dev).argsort(dim=1)
    scale, shift, perm = (t.to(points.device) for t in (scale, shift, perm))
    out = points * scale.to(points.dtype) + shift.to(points.dtype)
    return out.gather(1, perm[..., None].expand(b, p, 3))
