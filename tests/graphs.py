"""A small hand-written graph shared by the model tests."""

from __future__ import annotations

import torch


def small_graph(num_nodes: int = 7, num_features: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x [N, F], edge_index [2, 20])``: a ring with three chords, both directions, seeded."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(num_nodes, num_features, generator=gen)
    src = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 2, 4])
    dst = torch.tensor([1, 2, 3, 4, 5, 6, 0, 3, 5, 1])
    return x, torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])
