"""Datasets by name (the :data:`~study.catalogs.DATASETS` catalog), from a user's file, or from
a user's function: ``load_task("cora")``, ``load_task("modelnet40", num_points=512)``,
``load_dataset(path="graph.pt")``, ``load_dataset(factory="my_data:load", base_dir=...)``.

A miss lists the valid names; an option a loader does not take is named with the valid ones.
File-backed datasets are looked for under :func:`study.paths.data_root` (``root=``, else
``$GDS_DATA_ROOT``, else the user cache): Planetoid in ``<root>/planetoid/<Name>/raw``, PPI in
``<root>/ppi``, ModelNet40 in ``<root>/modelnet40``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from study.catalogs import DATASETS
from study.data.base import NodeTask, PointCloudTask
from study.errors import UserInputError


def load_task(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    split: Mapping[str, Any] | None = None,
    **options: object,
) -> NodeTask | PointCloudTask:
    """Load a catalog dataset by name.

    Args:
        name: an entry of :data:`~study.catalogs.DATASETS`.
        root: the data root for file-backed datasets (ignored by the synthetic ones).
        split: a temporal dataset's (``info["temporal"]``) chronological cuts, as
            ``dataset.split`` (:class:`~study.catalogs.TemporalSplit`; its defaults when ``None``).
        **options: the loader's keyword options, e.g. ``num_points``, ``val_fraction``,
            ``max_shapes`` for ModelNet40 or ``seed``, ``num_nodes`` for ``synthetic_sbm``.

    Raises:
        UserInputError: an unknown name or option, or data that cannot be found.
    """
    entry = DATASETS.get(name)
    valid = entry.param_names()
    for key in options:
        if key not in valid:
            raise UserInputError(
                f"unknown option {key!r} for dataset {name!r} (valid: {', '.join(valid) or 'none'})"
            )
    loader = entry.load()
    temporal = bool(entry.info.get("temporal", False))
    if split is not None and not temporal:
        raise UserInputError(
            f"dataset {name!r} has no times: split applies to temporal datasets only",
            key="dataset.split",
        )
    if entry.info.get("files", False):
        result = loader(root=root, **options)
    else:
        result = loader(**options)
    if temporal:  # the loader returns the timed graph; the split makes its snapshots
        from study.data.temporal import chronological_task

        return chronological_task(result, split, name=name, source=f"dataset {name!r}")
    return result


def load_dataset(
    *,
    name: str | None = None,
    path: str | None = None,
    factory: str | None = None,
    options: Mapping[str, Any] | None = None,
    metric: str | None = None,
    base_dir: str | os.PathLike = ".",
    root: str | os.PathLike | None = None,
    split: Mapping[str, Any] | None = None,
    target_node_type: str | None = None,
) -> NodeTask | PointCloudTask:
    """The dataset a study names: a catalog entry, a user's graph file or a user's function
    (exactly one of ``name``, ``path``, ``factory``); ``metric`` overrides the headline score
    (node tasks: :mod:`study.metrics`; point clouds: accuracy, mean_class_accuracy, auroc);
    ``split``: a temporal graph's chronological cuts (``dataset.split``);
    ``target_node_type``: the classified node type of a user's ``HeteroData``."""
    from study.data import user

    options = dict(options or {})
    if path is not None:
        return user.load_dataset_file(path, metric, split, target_node_type)
    if factory is not None:
        return user.load_dataset_factory(
            factory, options, base_dir, metric, split, target_node_type
        )
    if name is None:
        raise UserInputError("dataset: give one of name, path or factory")
    task = load_task(name, root=root, split=split, **options)
    if metric is not None:  # node or point-cloud headline, checked by the study's config
        task.metric = metric
    return task
