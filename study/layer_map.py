"""Which student layer learns from which teacher layer (``layer_map`` of FitNet, AT, LSP and
edge_attention). Pure Python, no torch: the study's config, the pre-flight checks and the
methods all read it.

A ``layer_map`` is one of

- ``last``: the last layer of each model, the pair ``(-1, -1)`` (the default, written
  ``[[-1, -1]]`` in older study files; both spell the same map);
- ``uniform``: every student layer ``s`` (0-based, ``S`` of them) with teacher layer
  ``round((s + 1) * T / S) - 1`` of ``T`` ("every N-th teacher layer", N = T / S), rounding
  halves up and never below layer 0; with ``S = T`` it is the identity;
- explicit pairs ``[[student layer, teacher layer], ...]``, negative indices from the end as in
  Python.

"Layers" are what the method compares: hidden layers (``ModelOutput.hidden``) for FitNet, AT and
LSP; attention layers for edge_attention. In a ``search`` dimension (``choice`` only) explicit
pairs are kept as their JSON text, ``"[[0, 1], [1, 3]]"``, because Optuna's categorical choices
must be plain values; the method's schema reads the text back.
"""

from __future__ import annotations

import json
from typing import Any

LayerPairs = tuple[tuple[int, int], ...]
#: The named maps.
LAST = "last"
UNIFORM = "uniform"
NAMED: tuple[str, ...] = (LAST, UNIFORM)
LAST_PAIRS: LayerPairs = ((-1, -1),)


def uniform_layer_map(student_layers: int, teacher_layers: int) -> LayerPairs:
    """``((s, round((s + 1) * T / S) - 1) for s in range(S))``, halves rounded up, at least 0.

    Exact integer arithmetic: ``round(x)`` for ``x = (s + 1) T / S`` is
    ``floor((2 (s + 1) T + S) / (2 S))``.
    """
    if student_layers < 1 or teacher_layers < 1:
        raise ValueError(
            f"uniform layer map: depths must be >= 1, got {student_layers}, {teacher_layers}"
        )
    s_n, t_n = student_layers, teacher_layers
    return tuple((s, max(0, (2 * (s + 1) * t_n + s_n) // (2 * s_n) - 1)) for s in range(s_n))


def parse_layer_map(value: Any) -> Any:
    """A layer map as a schema reads it: a name, or pairs (lists or the JSON text of a search
    choice) as a tuple of ``(int, int)``.

    Raises:
        ValueError: anything else, in one line (pydantic reports it at the key).
    """
    expected = "expected last, uniform or a list of [student layer, teacher layer] pairs"
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(expected) from None
    if value in NAMED:
        return value
    if isinstance(value, (list, tuple)) and value and all(_is_pair(p) for p in value):
        return tuple((int(s), int(t)) for s, t in value)
    raise ValueError(expected)  # callers name the value (config: ", got ..."; methods: "(got ...)")


def _is_pair(pair: Any) -> bool:
    return (
        isinstance(pair, (list, tuple))
        and len(pair) == 2
        and all(isinstance(i, int) and not isinstance(i, bool) for i in pair)
    )


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def layer_map_text(value: Any) -> Any:
    """How a search choice holds a layer map: a name as is, explicit pairs as JSON text."""
    if isinstance(value, (list, tuple)):
        return json.dumps([[int(a), int(b)] for a, b in value])
    return value


def resolve_layer_map(
    layer_map: str | LayerPairs, student_layers: int, teacher_layers: int
) -> LayerPairs:
    """The pairs of ``layer_map`` for models of ``student_layers`` and ``teacher_layers`` layers,
    as non-negative indices.

    Raises:
        ValueError: an unknown name, or a pair outside either model's layers (naming it).
    """
    if layer_map == LAST:
        pairs: LayerPairs = LAST_PAIRS
    elif layer_map == UNIFORM:
        pairs = uniform_layer_map(student_layers, teacher_layers)
    elif isinstance(layer_map, str):
        raise ValueError(f"unknown layer map {layer_map!r} (valid: {', '.join(NAMED)} or pairs)")
    else:
        pairs = tuple((int(s), int(t)) for s, t in layer_map)
    out = []
    for i, (s, t) in enumerate(pairs):
        if not (-student_layers <= s < student_layers and -teacher_layers <= t < teacher_layers):
            raise PairOutOfRange(i, (s, t), student_layers, teacher_layers)
        out.append((s % student_layers, t % teacher_layers))
    return tuple(out)


class PairOutOfRange(ValueError):
    """Pair ``index`` of a layer map names a layer neither model of these depths has."""

    def __init__(self, index: int, pair: tuple[int, int], student: int, teacher: int) -> None:
        self.index, self.pair = index, pair
        super().__init__(
            f"pair [{index}] = [{pair[0]}, {pair[1]}] is outside the student's {student} and the "
            f"teacher's {teacher} layers (expected -{student} <= student < {student} and "
            f"-{teacher} <= teacher < {teacher})"
        )
