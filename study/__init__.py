"""graph-distill-study: distil small, fast GNN students from large teachers, at study scale."""

__version__ = "0.1.0"
