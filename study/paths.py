"""Where data and caches live: ``GDS_DATA_ROOT`` for datasets, a per-user cache otherwise."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ROOT_ENV = "GDS_DATA_ROOT"
CACHE_ENV = "GDS_CACHE_DIR"


def user_cache_dir() -> Path:
    """The per-user cache folder (``$GDS_CACHE_DIR``, else ``$XDG_CACHE_HOME``/``~/.cache``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "graph-distill-study"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The datasets folder: ``root`` if given, else ``$GDS_DATA_ROOT``, else ``<cache>/data``."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV]).expanduser()
    return user_cache_dir() / "data"
