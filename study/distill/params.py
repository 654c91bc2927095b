"""Validating a catalog entry's parameters (a method's, a kernel's) into its pydantic schema, with
the one-line :class:`~study.errors.UserInputError` messages the command line and study files show.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from study.catalog import Entry
from study.errors import UserInputError


def _tuples(value: Any) -> Any:
    # YAML, JSON and Ray Tune's search spaces have lists where the schemas have tuples
    # (``layer_map``); a list is the same value there, not a coercion of its type.
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def validate_params(what: str, entry: Entry, values: Mapping[str, Any]) -> BaseModel | None:
    """``values`` (by the names study files use) checked against ``entry.params``.

    Missing parameters take the schema's defaults.

    Args:
        what: how messages name the entry (``"method 'lsp'"``, ``"kernel 'rbf'"``).
        entry: a catalog entry; ``entry.params is None`` means it takes no parameters.
        values: the given parameters.

    Returns:
        The validated schema instance, or ``None`` for an entry without parameters.

    Raises:
        UserInputError: an unknown key (naming it and the valid ones) or a value the schema
            refuses (type or range), in one line.
    """
    valid = entry.param_names()
    unknown = [key for key in values if key not in valid]
    if unknown:
        takes = f"valid: {', '.join(valid)}" if valid else "it takes none"
        raise UserInputError(f"{what}: unknown parameter {unknown[0]!r} ({takes})")
    if entry.params is None:
        return None
    try:
        return entry.params.model_validate({k: _tuples(v) for k, v in values.items()})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        got = error.get("input")
        raise UserInputError(f"{what}: {where}: {message} (got {got!r})") from None


def as_kwargs(params: BaseModel | None) -> dict[str, Any]:
    """A validated schema as keyword arguments of its factory (field names, not aliases)."""
    return {} if params is None else params.model_dump()
