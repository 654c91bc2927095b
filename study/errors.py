"""The one error type the command line turns into a one-line message and exit code 2."""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad input from a user (a file, a key, a name, a path): say what was expected, start nothing.

    The message is one line that names the offending value and what would be valid, e.g.
    ``search_spaces/x.yaml: methods[1]: unknown method 'kdd' (valid: at, fitnet, kd, lsp, none)``.

    ``key`` optionally names the study-file key below the component that failed (``"hidden"``,
    ``"options.width"``), so that whoever knows the file and the component's place in it can
    complete the path (see :mod:`study.preflight`).
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def choose(kind: str, name: str, valid: dict | list | tuple | set) -> None:
    """Raise :class:`UserInputError` unless ``name`` is one of ``valid`` (PyG-resolver style)."""
    if name not in valid:
        names = ", ".join(sorted(valid))
        raise UserInputError(f"unknown {kind} {name!r} (valid: {names})")
