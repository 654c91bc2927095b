"""The built-in catalogs: every dataset, model architecture, distillation method and LSP kernel a
study can name, with its description, parameter schema (types, ranges, defaults) and factory.

This module is the one place those names live; config, training, the command line and the
reports all read them from here. It imports no torch: factories load when first used.
Adding a kernel, a model or a dataset is one module with its function plus one :class:`Entry`
line below (or, from another package, an entry point: see :mod:`study.catalog`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from study.catalog import Catalog, Entry
from study.layer_map import parse_layer_map

#: Kinds of task; a dataset is one and a model architecture solves one.
NODE = "node"
POINTCLOUD = "pointcloud"
TASK_WORDS = {NODE: "node-classification", POINTCLOUD: "point-cloud"}

#: Headline scores a node task can be judged by (``dataset.metric``).
NODE_METRICS = ("accuracy", "macro_f1", "micro_f1", "auroc")
#: Headline scores a point-cloud task can be judged by (``dataset.metric``).
POINTCLOUD_METRICS = ("accuracy", "mean_class_accuracy", "auroc")
#: By task kind.
TASK_METRICS = {NODE: NODE_METRICS, POINTCLOUD: POINTCLOUD_METRICS}


class Params(BaseModel):
    """Base of every parameter schema: unknown keys refused, no type coercion (``"8"`` is not
    8, ``true`` is not 1), no NaN or infinity, immutable."""

    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, populate_by_name=True, frozen=True
    )


def _whole(x: float) -> float:
    if not float(x).is_integer():
        raise ValueError("expected a whole number (a fractional power of a negative dot is NaN)")
    return x


#: The validator of a float that must be a whole number (config offers it int/logint ranges).
WHOLE = AfterValidator(_whole)
#: A ``layer_map`` (see :mod:`study.layer_map`): ``last``, ``uniform`` or explicit
#: ``[student, teacher]`` pairs; in a search choice, pairs may come as their JSON text.
LayerMap = Annotated[
    Literal["last", "uniform"] | tuple[tuple[int, int], ...], BeforeValidator(parse_layer_map)
]
#: The last hidden layer of the student and of the teacher.
DEFAULT_LAYER_MAP: tuple[tuple[int, int], ...] = ((-1, -1),)
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Count = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(ge=0, lt=1)]


# ------------------------------------------------------------------------------------ kernels


class RBFParams(Params):
    sigma: Positive = 1.0


class PolyParams(Params):
    degree: Annotated[float, Field(ge=1), WHOLE] = 2.0
    c: float = 0.0


KERNELS = Catalog(
    "kernel",
    "graph_distill_study.kernels",
    [
        Entry("linear", "z_i . z_j", "study.distill.kernels:linear_kernel"),
        Entry(
            "poly",
            "(z_i . z_j + c)^degree, paper degree 2, c 0",
            "study.distill.kernels:poly_kernel",
            PolyParams,
        ),
        Entry(
            "rbf",
            "exp(-||z_i - z_j||^2 / (2 sigma^2)), paper sigma 1 (the paper's headline kernel)",
            "study.distill.kernels:rbf_kernel",
            RBFParams,
        ),
        Entry("l2", "-||z_i - z_j||^2", "study.distill.kernels:l2_kernel"),
        Entry(
            "l1_official",
            "exp(-||z_i - z_j||_1 / 100), the official code's kernel",
            "study.distill.kernels:l1_official_kernel",
        ),
    ],
)


# ------------------------------------------------------------------------------------ methods


#: LSP's KL directions: the paper's KL(LS^s || LS^t), and the official code's KL(LS^t || LS^s).
Direction = Literal["student_teacher", "teacher_student"]


class KDParams(Params):
    temperature: Positive = 4.0
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.9


class FitNetParams(Params):
    lambda_: NonNegative = Field(1.0, alias="lambda")
    layer_map: LayerMap = DEFAULT_LAYER_MAP


class ATParams(Params):
    # beta = 1000 on the mean squared map difference, as Zagoruyko & Komodakis' code has it.
    lambda_: NonNegative = Field(1000.0, alias="lambda")
    p: Positive = 1.0
    layer_map: LayerMap = DEFAULT_LAYER_MAP


def _known_kernel(name: str) -> str:
    KERNELS.get(name)  # a miss raises UserInputError, a ValueError: pydantic reports it
    return name


class LSPParams(Params):
    """LSP's own parameters; the chosen kernel's (``sigma``, ``degree``, ``c``) come from its
    :data:`KERNELS` entry and sit beside these in a study file (``lsp.sigma``)."""

    lambda_: NonNegative = Field(100.0, alias="lambda")
    kernel: Annotated[str, AfterValidator(_known_kernel)] = "rbf"
    direction: Direction = "student_teacher"
    lsp_until_epoch: Count | None = None
    layer_map: LayerMap = DEFAULT_LAYER_MAP
    #: Heterogeneous datasets only: a weight per relation (``src__rel__dst``, or ``rel`` when
    #: unique); relations left out weigh 0. ``None``: uniform ``1/R``. Fixed, not searchable.
    relation_weights: dict[str, NonNegative] | None = None


class EdgeAttentionParams(Params):
    """edge_attention's parameters (see :mod:`study.distill.edge_attention`). ``layer_map``
    pairs attention layers (one per GATConv); ``uniform`` pairs every student layer with one
    of the teacher's, so every attention the student computes is taught."""

    lambda_: NonNegative = Field(1.0, alias="lambda")
    direction: Direction = "student_teacher"
    heads: Literal["mean", "uniform"] = "mean"
    teacher_source: Literal["attention", "gradient"] = "attention"
    floor: Annotated[float, Field(gt=0, lt=1)] = 1e-4
    layer_map: LayerMap = "uniform"


METHODS = Catalog(
    "method",
    "graph_distill_study.methods",
    [
        Entry(
            "none",
            "student trained alone on the hard labels (the baseline every method must beat)",
            "study.distill.methods:NoDistillation",
            info={"label": "student alone"},
        ),
        Entry(
            "kd",
            "Hinton et al. 2015: match the teacher's temperature-softened outputs",
            "study.distill.methods:KnowledgeDistillation",
            KDParams,
            {"label": "KD"},
        ),
        Entry(
            "fitnet",
            "Romero et al. 2015: regress the teacher's hidden features through a trained adapter",
            "study.distill.methods:FitNet",
            FitNetParams,
            {"label": "FitNet", "reads_hidden": True},
        ),
        Entry(
            "at",
            "Zagoruyko and Komodakis 2017: match L2-normalised per-node attention maps",
            "study.distill.methods:AttentionTransfer",
            ATParams,
            {"label": "AT", "reads_hidden": True},
        ),
        Entry(
            "lsp",
            "Yang et al. 2020: match each node's kernel distribution over its neighbours",
            "study.distill.methods:LocalStructurePreserving",
            LSPParams,
            {"label": "LSP", "reads_hidden": True},
        ),
        Entry(
            "edge_attention",
            "match each node's attention over its incoming edges to the teacher's (or to the "
            "teacher's gradient-based edge importance): per-target KL",
            "study.distill.methods:EdgeAttention",
            EdgeAttentionParams,
            {"label": "edge attention", "reads_attention": True, "opt_in": True},
        ),
    ],
)


# ------------------------------------------------------------------------------------ models


class GATParams(Params):
    width: Count = 8
    depth: Count = 2
    heads: Count = 8
    dropout: Fraction = 0.6


class GCNParams(Params):
    width: Count = 16
    depth: Count = 2
    dropout: Fraction = 0.5


class StackParams(Params):
    width: Count = 64
    depth: Count = 2
    dropout: Fraction = 0.5


class DGCNNParams(Params):
    width: Count = 64
    depth: Count = 4
    k: Count = 20
    emb_dims: Count = 1024
    mlp: tuple[Count, ...] = (512, 256)
    dropout: Fraction = 0.5


#: Sizes from Velickovic et al. 2018 (GAT) and Kipf and Welling 2017 (GCN) on Cora; GraphSAGE
#: and MLP the same two-layer shape, a little wider; DGCNN from Wang et al. 2019 on ModelNet40.
#: ``presets`` are the paper's models (Tables 1 and 3); a preset fixes every size but dropout.
MODELS = Catalog(
    "architecture",
    "graph_distill_study.models",
    [
        Entry(
            "gat",
            "graph attention network (Velickovic et al. 2018), ELU, heads concatenated",
            "study.models.gat:build_gat",
            GATParams,
            {
                "kind": NODE,
                "attention": True,
                "presets": {
                    "ppi_teacher": "study.models.gat:gat_ppi_teacher",
                    "ppi_student": "study.models.gat:gat_ppi_student",
                },
            },
        ),
        Entry(
            "gcn",
            "graph convolutional network (Kipf and Welling 2017), ReLU",
            "study.models.gcn:GCN",
            GCNParams,
            {"kind": NODE},
        ),
        Entry(
            "sage",
            "GraphSAGE with mean aggregation (Hamilton et al. 2017), ReLU",
            "study.models.sage:GraphSAGE",
            StackParams,
            {"kind": NODE},
        ),
        Entry(
            "mlp",
            "multi-layer perceptron on node features; reads no edges at inference",
            "study.models.mlp:MLP",
            StackParams,
            {"kind": NODE},
        ),
        Entry(
            "rgcn",
            "relational GCN (Schlichtkrull et al. 2018) for typed graphs: per-node-type input "
            "projection, one weight per relation; ReLU",
            "study.models.rgcn:RGCN",
            StackParams,
            {"kind": NODE, "typed": True},
        ),
        Entry(
            "dgcnn",
            "dynamic graph CNN (Wang et al. 2019): EdgeConv over per-layer kNN graphs",
            "study.models.dgcnn:build_dgcnn",
            DGCNNParams,
            {
                "kind": POINTCLOUD,
                "presets": {
                    "modelnet_teacher": "study.models.dgcnn:dgcnn_modelnet_teacher",
                    "modelnet_student": "study.models.dgcnn:dgcnn_modelnet_student",
                },
            },
        ),
    ],
)
#: Keys a preset leaves open.
PRESET_OVERRIDES: tuple[str, ...] = ("dropout",)


def preset_arch(preset: str) -> str | None:
    """The architecture whose entry offers ``preset``, if any."""
    return next((e.name for e in MODELS if preset in e.info.get("presets", {})), None)


# ------------------------------------------------------------------------------------ datasets
# Options left out take the loader's own default (hence ``None`` here, not a second default).


class PlanetoidOptions(Params):
    download: bool | None = None


class PPIOptions(Params):
    download: bool | None = None


class ModelNet40Options(Params):
    num_points: Count | None = None
    val_fraction: Fraction | None = None
    seed: Annotated[int, Field(ge=0)] | None = None
    normalize: bool | None = None
    max_shapes: Count | None = None
    format: Literal["auto", "text", "h5", "off"] | None = None
    cache: bool | None = None


class SBMOptions(Params):
    num_nodes: Count | None = None
    num_classes: Annotated[int, Field(ge=2)] | None = None
    num_features: Count | None = None
    p_in: Annotated[float, Field(ge=0, le=1)] | None = None
    p_out: Annotated[float, Field(ge=0, le=1)] | None = None
    feature_signal: NonNegative | None = None
    seed: Annotated[int, Field(ge=0)] | None = None
    train_per_class: Count | None = None
    val: Count | None = None
    test: Count | None = None


class TemporalOptions(Params):
    num_nodes: Annotated[int, Field(ge=8)] | None = None
    num_classes: Annotated[int, Field(ge=2)] | None = None
    num_features: Count | None = None
    feature_signal: NonNegative | None = None
    arrival_edges: Annotated[int, Field(ge=0)] | None = None
    homophily: Annotated[float, Field(ge=0, le=1)] | None = None
    reveal_edges: Annotated[int, Field(ge=0)] | None = None
    reveal_lag: Annotated[float, Field(gt=0, lt=1)] | None = None
    seed: Annotated[int, Field(ge=0)] | None = None


class TemporalSplit(Params):
    """``dataset.split`` of a temporal graph (``edge_time``, ``node_time``): the chronological
    cuts t1 (``train_until``) and t2 (``val_until``). ``by: quantile`` (the default) reads them as
    fractions of the labelled nodes in time order (0.6: the earliest 60% train); ``by: time`` as
    times in ``node_time``'s units. Train scores nodes with ``node_time <= t1`` on the edges with
    ``edge_time <= t1``; validation ``t1 < node_time <= t2`` on edges ``<= t2``; test the rest on
    every edge (see :mod:`study.data.temporal`)."""

    train_until: float = 0.6
    val_until: float = 0.8
    by: Literal["quantile", "time"] = "quantile"

    @model_validator(mode="after")
    def _ordered(self) -> TemporalSplit:
        if self.train_until >= self.val_until:
            raise ValueError(
                f"train_until ({self.train_until}) must be below val_until ({self.val_until})"
            )
        if self.by == "quantile" and not 0 < self.train_until < self.val_until < 1:
            raise ValueError("with by: quantile, expected 0 < train_until < val_until < 1")
        return self


class HeteroOptions(Params):
    num_users: Count | None = None
    num_merchants: Count | None = None
    num_devices: Count | None = None
    num_classes: Annotated[int, Field(ge=2)] | None = None
    user_features: Count | None = None
    merchant_features: Count | None = None
    device_features: Count | None = None
    friends: Count | None = None
    disputes: Count | None = None
    purchases: Count | None = None
    homophily: Annotated[float, Field(ge=0, le=1)] | None = None
    item_homophily: Annotated[float, Field(ge=0, le=1)] | None = None
    feature_signal: NonNegative | None = None
    seed: Annotated[int, Field(ge=0)] | None = None
    train_per_class: Count | None = None
    val: Count | None = None
    test: Count | None = None


class ShapesOptions(Params):
    num_per_class: Count | None = None
    num_classes: Annotated[int, Field(ge=2, le=5)] | None = None
    num_points: Count | None = None
    seed: Annotated[int, Field(ge=0)] | None = None
    val_per_class: Count | None = None
    test_per_class: Count | None = None
    noise: NonNegative | None = None


DATASETS = Catalog(
    "dataset",
    "graph_distill_study.datasets",
    [
        Entry(
            "cora",
            "Planetoid Cora citation graph: 2708 nodes, 1433 features, 7 classes (accuracy)",
            "study.data.planetoid:load_cora",
            PlanetoidOptions,
            {"kind": NODE, "files": True},
        ),
        Entry(
            "citeseer",
            "Planetoid CiteSeer citation graph: 3327 nodes, 3703 features, 6 classes",
            "study.data.planetoid:load_citeseer",
            PlanetoidOptions,
            {"kind": NODE, "files": True},
        ),
        Entry(
            "pubmed",
            "Planetoid PubMed citation graph: 19717 nodes, 500 features, 3 classes (accuracy)",
            "study.data.planetoid:load_pubmed",
            PlanetoidOptions,
            {"kind": NODE, "files": True},
        ),
        Entry(
            "ppi",
            "Protein-protein interaction: 20/2/2 graphs, 50 features, 121 labels (micro-F1)",
            "study.data.ppi:load_ppi",
            PPIOptions,
            {"kind": NODE, "files": True},
        ),
        Entry(
            "modelnet40",
            "ModelNet40 point clouds: 40 classes, text/h5/off layouts, val held out of train",
            "study.data.modelnet40:load_modelnet40",
            ModelNet40Options,
            {"kind": POINTCLOUD, "files": True},
        ),
        Entry(
            "synthetic_sbm",
            "Stochastic-block-model graph with Gaussian class features (no files)",
            "study.data.synthetic:synthetic_sbm",
            SBMOptions,
            {"kind": NODE, "files": False},
        ),
        Entry(
            "synthetic_temporal",
            "Temporal graph with timed edges; each node's own-class edges come after its label "
            "time, so leaking future edges inflates the score (no files; split: dataset.split)",
            "study.data.temporal:synthetic_temporal",
            TemporalOptions,
            {"kind": NODE, "files": False, "temporal": True},
        ),
        Entry(
            "synthetic_hetero",
            "Typed user/merchant/device graph: friend edges homophilous, dispute edges "
            "anti-correlated with the user's class (no files)",
            "study.data.hetero:synthetic_hetero",
            HeteroOptions,
            {"kind": NODE, "files": False, "hetero": True},
        ),
        Entry(
            "synthetic_shapes",
            "Procedural point clouds: sphere, cube, cylinder, cone, torus (no files)",
            "study.data.synthetic:synthetic_shapes",
            ShapesOptions,
            {"kind": POINTCLOUD, "files": False},
        ),
    ],
)


def method_label(name: str) -> str:
    """How reports name a method (``"LSP"``, ``"student alone"``); its name when it has none."""
    return str(METHODS.get(name).info.get("label", name)) if name in METHODS else name


def reads_hidden(method: str) -> bool:
    """Whether a method matches the models' hidden features (``info["reads_hidden"]``): a user
    model must then name its ``hidden`` submodules."""
    return bool(METHODS.get(method).info.get("reads_hidden", False))


def default_methods() -> tuple[str, ...]:
    """The methods of a study that lists none: every method but the opt-in ones
    (``info["opt_in"]``: edge_attention, which needs students with attention)."""
    return tuple(e.name for e in METHODS if not e.info.get("opt_in", False))


def reads_attention(method: str) -> bool:
    """Whether a method matches attention over edges (``info["reads_attention"]``): its student
    must expose attention (:func:`has_attention_layers`), its teacher too unless the method
    computes the teacher's gradient-based importance."""
    return bool(METHODS.get(method).info.get("reads_attention", False))


def reads_types(arch: str) -> bool:
    """Whether a built-in architecture is relation-aware (``info["typed"]``): built with the
    task's type counts and called with ``edge_type`` and ``node_type``."""
    return bool(MODELS.get(arch).info.get("typed", False))


def has_attention_layers(arch: str) -> bool:
    """Whether a built-in architecture exposes attention over edges (``info["attention"]``)."""
    return bool(MODELS.get(arch).info.get("attention", False))


def takes_kernel(method: Entry) -> bool:
    """Whether a method names a kernel of :data:`KERNELS` (a ``kernel`` parameter, as LSP): its
    study-file parameters then include that kernel's (``lsp.sigma`` beside ``lsp.lambda``)."""
    return "kernel" in method.param_names()


def kernel_params(kernel: str) -> tuple[str, ...]:
    """The parameter names a kernel reads (``("sigma",)`` for rbf)."""
    return KERNELS.get(kernel).param_names()
