"""Teacher and student models (GAT, GCN, GraphSAGE, MLP, DGCNN) that return logits, hidden
features and (DGCNN) kNN graphs."""

from study.models.base import ModelOutput
from study.models.dgcnn import (
    DGCNN,
    build_dgcnn,
    dgcnn_modelnet_student,
    dgcnn_modelnet_teacher,
    edge_widths,
)
from study.models.gat import GAT, build_gat, gat_ppi_student, gat_ppi_teacher
from study.models.gcn import GCN
from study.models.knn import knn_graph_dense, knn_indices, knn_to_edge_index
from study.models.mlp import MLP
from study.models.registry import build_model, count_parameters
from study.models.sage import GraphSAGE

__all__ = [
    "DGCNN",
    "GAT",
    "GCN",
    "GraphSAGE",
    "MLP",
    "ModelOutput",
    "build_dgcnn",
    "build_gat",
    "build_model",
    "count_parameters",
    "dgcnn_modelnet_student",
    "dgcnn_modelnet_teacher",
    "edge_widths",
    "gat_ppi_student",
    "gat_ppi_teacher",
    "knn_graph_dense",
    "knn_indices",
    "knn_to_edge_index",
]
