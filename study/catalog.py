"""Extension points: a catalog per kind of component (datasets, model architectures,
distillation methods, LSP kernels), built-in and third-party entries alike.

An :class:`Entry` is a name, a one-line description, a parameter schema with the defaults (a
pydantic model, or ``None`` for "takes no parameters") and a factory named ``"module:attribute"``
that is imported only when the entry is used, so that reading a study file imports no torch.

Third-party packages add entries through Python entry points, the way pytest and MLflow plugins
register: in their ``pyproject.toml``::

    [project.entry-points."graph_distill_study.models"]
    my_gat = "my_package.gds_plugin:MY_GAT"      # an Entry (or a list of Entries)

The groups are ``graph_distill_study.datasets``, ``graph_distill_study.models``,
``graph_distill_study.methods`` and ``graph_distill_study.kernels``. A plugin module should not
import torch at its top level (its factory may), since catalogs are read when a study file is.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from study.errors import UserInputError, choose

#: ``module.path:attribute``: a module path (dotted identifiers) and an attribute in it.
FACTORY_RE = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*")


@dataclass(frozen=True)
class Entry:
    """One component a study can choose by name.

    Attributes:
        name: what study files call it (``"lsp"``, ``"gat"``, ``"cora"``, ``"rbf"``).
        description: one line, for help texts and reports.
        factory: ``"module:attribute"``; imported by :meth:`load` when first used.
        params: the hyperparameters it takes, their types, ranges and defaults; ``None`` when it
            takes none.
        info: facts of the kind that are not parameters (a dataset's or model's task kind,
            a model's presets, a method's report label and whether it reads hidden features).
    """

    name: str
    description: str
    factory: str
    params: type[BaseModel] | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    def load(self) -> Any:
        """The factory object (imports its module on first use)."""
        return import_factory(self.factory)

    def defaults(self) -> dict[str, Any]:
        """The parameters' defaults, by the names study files use (aliases)."""
        if self.params is None:
            return {}
        return self.params().model_dump(by_alias=True)

    def param_names(self) -> tuple[str, ...]:
        """The parameter names study files use."""
        if self.params is None:
            return ()
        return tuple(f.alias or name for name, f in self.params.model_fields.items())


class Catalog:
    """The entries of one kind, by name: built-ins first, then those of installed plugins.

    Args:
        kind: what an entry is, for messages (``"method"``, ``"dataset"``).
        group: the entry-point group plugins register under.
        entries: the built-in entries.
    """

    def __init__(self, kind: str, group: str, entries: Iterable[Entry]) -> None:
        self.kind = kind
        self.group = group
        self._entries: dict[str, Entry] = {}
        self._plugins_loaded = False
        for entry in entries:
            self.register(entry)

    def register(self, entry: Entry) -> Entry:
        """Add ``entry``; a name that is taken is refused (plugins cannot shadow built-ins)."""
        if entry.name in self._entries:
            raise ValueError(f"{self.kind} {entry.name!r} is registered twice")
        if not FACTORY_RE.fullmatch(entry.factory):
            raise ValueError(f"{self.kind} {entry.name!r}: factory {entry.factory!r} is not 'm:f'")
        self._entries[entry.name] = entry
        return entry

    def _all(self) -> dict[str, Entry]:
        if not self._plugins_loaded:
            self._plugins_loaded = True
            for point in importlib.metadata.entry_points(group=self.group):
                self._load_plugin(point)
        return self._entries

    def _load_plugin(self, point: importlib.metadata.EntryPoint) -> None:
        where = f"entry point {point.name!r} of group {self.group}"
        try:
            loaded = point.load()
        except Exception as exc:  # a broken plugin must name itself, not break every study
            raise UserInputError(f"{where}: cannot load {point.value!r} ({exc})") from None
        for entry in loaded if isinstance(loaded, (list, tuple)) else [loaded]:
            if not isinstance(entry, Entry):
                raise UserInputError(
                    f"{where}: {point.value!r} is a {type(entry).__name__}, "
                    "expected a study.catalog.Entry"
                )
            try:
                self.register(entry)
            except ValueError as exc:
                raise UserInputError(f"{where}: {exc}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._all()

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._all().values())

    def names(self) -> tuple[str, ...]:
        """Every name, built-ins first."""
        return tuple(self._all())

    def get(self, name: str) -> Entry:
        """The entry called ``name``; a miss lists the valid names (:class:`UserInputError`)."""
        entries = self._all()
        choose(self.kind, name, entries)
        return entries[name]


def import_factory(reference: str, base_dir: str | os.PathLike[str] | None = None) -> Any:
    """Import ``"module:attribute"``, looking for the module in ``base_dir`` first if given.

    Raises:
        UserInputError: a reference that is not ``module:attribute``, a module that does not
            import (with its error) or a missing attribute.
    """
    if not FACTORY_RE.fullmatch(reference):
        raise UserInputError(f"expected 'module:function', got {reference!r}")
    module_name, _, attribute = reference.partition(":")
    if base_dir is not None:
        folder = str(Path(base_dir).resolve())
        if folder not in sys.path:
            # A user's module sits beside their study file; the folder stays on the path so that
            # checkpoints and pickles that name the module find it again in this process.
            sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise UserInputError(f"cannot import module {module_name!r} ({reason})") from None
    if base_dir is not None:
        _check_loaded_from(module_name, base_dir)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise UserInputError(
            f"module {module_name!r} ({getattr(module, '__file__', '?')}) has no {attribute!r}"
        ) from None


def _check_loaded_from(module_name: str, base_dir: str | os.PathLike[str]) -> None:
    """Refuse a module that exists beside the study but was imported from elsewhere: Python
    keeps the first module of a name, so another study's (or an installed) ``models`` would run
    here while Ray ships this folder's file to the workers."""
    origin = module_origin(module_name, base_dir)
    top = sys.modules.get(module_name.split(".")[0])
    loaded = getattr(top, "__file__", None)
    if origin is None or loaded is None:
        return
    where = origin if origin.is_dir() else origin.parent
    if not Path(loaded).resolve().is_relative_to(where.resolve()):
        raise UserInputError(
            f"module {module_name!r} is already imported from {loaded}, not from {origin}: "
            "give the module a name of its own"
        )


def module_origin(reference: str, base_dir: str | os.PathLike[str]) -> Path | None:
    """The file or package folder of a factory's top-level module when it lies in ``base_dir``
    (what Ray must ship to the workers), else ``None`` (an installed package)."""
    top = reference.partition(":")[0].split(".")[0]
    base = Path(base_dir).resolve()
    for candidate in (base / top, base / f"{top}.py"):
        if candidate.exists():
            return candidate
    return None


def check_options(
    function: Any, options: Mapping[str, Any], where: str, reserved: tuple[str, ...] = ()
) -> None:
    """Refuse options that ``function``'s signature does not take (before calling it), and the
    ``reserved`` ones the caller sets itself (a model's ``in_channels`` come from the task)."""
    for key in options:
        if key in reserved:
            raise UserInputError(
                f"{key} comes from the task, not from options", key=f"{where}.{key}"
            )
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return  # a builtin without a signature: let the call say
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    takes = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in options:
        if key not in takes:
            raise UserInputError(
                f"{getattr(function, '__name__', function)} takes no option {key!r} "
                f"(valid: {', '.join(takes) or 'none'})",
                key=f"{where}.{key}",
            )
