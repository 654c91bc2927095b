"""Datasets by name: ``load_task("cora")``, ``load_task("modelnet40", num_points=512)``, ...

A miss lists the valid names; an option a loader does not take is named with the valid ones
(PyG ``resolver`` style). File-backed datasets are looked for under
:func:`study.paths.data_root` (``root=``, else ``$GDS_DATA_ROOT``, else the user cache):
Planetoid in ``<root>/planetoid/<Name>/raw``, PPI in ``<root>/ppi``, ModelNet40 in
``<root>/modelnet40``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from functools import partial

from study.data.base import NodeTask, PointCloudTask
from study.data.modelnet40 import load_modelnet40
from study.data.planetoid import load_planetoid
from study.data.ppi import load_ppi
from study.data.synthetic import synthetic_sbm, synthetic_shapes
from study.errors import UserInputError, choose

#: One line per dataset name.
DATASETS: dict[str, str] = {
    "cora": "Planetoid Cora citation graph: 2708 nodes, 1433 features, 7 classes (accuracy)",
    "citeseer": "Planetoid CiteSeer citation graph: 3327 nodes, 3703 features, 6 classes",
    "pubmed": "Planetoid PubMed citation graph: 19717 nodes, 500 features, 3 classes (accuracy)",
    "ppi": "Protein-protein interaction: 20/2/2 graphs, 50 features, 121 labels (micro-F1)",
    "modelnet40": "ModelNet40 point clouds: 40 classes, text/h5/off layouts, val held out of train",
    "synthetic_sbm": "Stochastic-block-model graph with Gaussian class features (no files)",
    "synthetic_shapes": "Procedural point clouds: sphere, cube, cylinder, cone, torus (no files)",
}

# name -> (loader, whether it takes root=)
_LOADERS: dict[str, tuple[Callable[..., NodeTask | PointCloudTask], bool]] = {
    "cora": (partial(load_planetoid, "Cora"), True),
    "citeseer": (partial(load_planetoid, "CiteSeer"), True),
    "pubmed": (partial(load_planetoid, "PubMed"), True),
    "ppi": (load_ppi, True),
    "modelnet40": (load_modelnet40, True),
    "synthetic_sbm": (synthetic_sbm, False),
    "synthetic_shapes": (synthetic_shapes, False),
}


def dataset_options(name: str) -> list[str]:
    """The keyword options ``load_task(name, ...)`` accepts besides ``root``."""
    choose("dataset", name, DATASETS)
    loader, _ = _LOADERS[name]
    params = inspect.signature(loader).parameters
    return sorted(k for k, p in params.items() if k != "root" and p.kind is not p.VAR_KEYWORD)


def load_task(
    name: str, *, root: str | os.PathLike | None = None, **options: object
) -> NodeTask | PointCloudTask:
    """Load a dataset by name.

    Args:
        name: one of :data:`DATASETS`.
        root: the data root for file-backed datasets (ignored by the synthetic ones).
        **options: the loader's keyword options, e.g. ``num_points``, ``val_fraction``,
            ``max_shapes`` for ModelNet40 or ``seed``, ``num_nodes`` for ``synthetic_sbm``.

    Raises:
        UserInputError: an unknown name or option, or data that cannot be found.
    """
    valid = dataset_options(name)
    for key in options:
        if key not in valid:
            raise UserInputError(
                f"unknown option {key!r} for dataset {name!r} (valid: {', '.join(valid) or 'none'})"
            )
    loader, takes_root = _LOADERS[name]
    if takes_root:
        return loader(root=root, **options)
    return loader(**options)
