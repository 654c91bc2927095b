"""Dataset loaders by name: Planetoid, PPI, ModelNet40 and synthetic generators.

``load_task(name, root=..., **options)`` is the entry point; :data:`DATASETS` lists the names.
"""

from study.data.augment import augment_pointcloud
from study.data.base import NodeTask, PointCloudSet, PointCloudTask, Task
from study.data.registry import DATASETS, load_task

__all__ = [
    "DATASETS",
    "NodeTask",
    "PointCloudSet",
    "PointCloudTask",
    "Task",
    "augment_pointcloud",
    "load_task",
]
