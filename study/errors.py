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


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` of an exception on one line, cut at ``limit`` characters."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def state_dict_mismatch(exc: BaseException) -> str:
    """The useful part of ``load_state_dict``'s error (missing, unexpected or misshapen keys),
    on one line: its first line only says which class failed."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    detail = " ".join(lines[1:]) or (lines[0] if lines else type(exc).__name__)
    return detail if len(detail) <= 300 else detail[:297] + "..."


def unsafe_load_reason(exc: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, without torch's advice to
    load it unsafely: the unpickler's own complaint (``Unsupported operand 149``, ``Unsupported
    global: GLOBAL os.system``) or the error's type."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
        return " ".join(detail.split()) or type(exc).__name__
    lines = text.strip().splitlines()
    return " ".join(lines[0].split()) if lines else type(exc).__name__
