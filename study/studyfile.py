"""Reading a study file safely: the one way a study's text becomes plain data.

``run``, ``run --smoke``, ``validate`` and ``resume`` (which re-reads the text kept in
``gds_context.json``) all go through :func:`read_study_file` and :func:`load_study_yaml`, so a
hostile file is refused the same way everywhere, as one :class:`~study.errors.UserInputError`
line naming the file (and the line where YAML knows it):

- at most :data:`MAX_BYTES` (1 MiB) of UTF-8 text; the largest shipped study is under 3 KiB;
- a safe loader (no tags, no code), YAML 1.2 floats (``5e-4`` is a number), duplicate keys
  refused;
- anchors and aliases are allowed, for convenience (``train: &t {...}`` reused, ``<<: *t``),
  but all aliases together may repeat at most :data:`MAX_ALIAS_NODES` nodes: an alias bomb
  (9 levels of 9 aliases is 9**9 nodes, gigabytes) is refused after composing its few hundred
  distinct nodes and before building any Python object; an alias inside its own anchor
  (a recursive value) is refused too;
- nesting at most :data:`MAX_DEPTH` levels, aliases expanded (PyYAML composes recursively:
  deeper text would end in ``RecursionError``).
"""

from __future__ import annotations

import os
import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from study.errors import UserInputError

#: The largest study file read, in bytes of UTF-8.
MAX_BYTES = 1 << 20
#: Nodes (scalars, lists, mappings) all aliases of a file may repeat together. A study file has
#: a few hundred nodes; reusing a train block or a choice list a few times stays far below.
MAX_ALIAS_NODES = 10_000
#: Nesting levels of a study file (its deepest key path is about six).
MAX_DEPTH = 50


def _where(mark: yaml.Mark | None) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""


def _refuse(source: str, mark: yaml.Mark | None, message: str) -> UserInputError:
    return UserInputError(" ".join(f"{source}: {_where(mark)}{message}".split()))


class _StudyLoader(yaml.SafeLoader):
    """``SafeLoader`` that reads YAML 1.2 floats, refuses duplicate keys and notes each alias
    (with its mark) and the nesting depth while composing, for :func:`_check_aliases`."""

    def __init__(self, stream: str, source: str) -> None:
        super().__init__(stream)
        self.source = source
        self.aliases: list[tuple[yaml.AliasEvent, Node]] = []
        self.depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)  # the anchored node itself, not a copy
            self.aliases.append((event, node))
            return node
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _refuse(self.source, mark, f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


# PyYAML follows YAML 1.1, where `5e-4` (no dot) is a string; study files write rates that way.
_StudyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _construct_mapping(loader: _StudyLoader, node: MappingNode, deep: bool = False) -> Any:
    # PyYAML silently keeps the last of two equal keys: a typo'd study would lose a setting.
    # Only the keys written here count: a merge (`<<: *train`) is meant to be overridden.
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue  # an unhashable key: construct_mapping reports it
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StudyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _Sizes:
    """Expanded sizes and heights of composed nodes, each node measured once (so a bomb's
    9**9 expansion costs its distinct nodes, not its expansion)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.memo: dict[int, tuple[int, int]] = {}
        self.busy: set[int] = set()

    def children(self, node: Node) -> list[Node]:
        if isinstance(node, SequenceNode):
            return list(node.value)
        if isinstance(node, MappingNode):
            return [n for pair in node.value for n in pair]
        return []

    def measure(self, node: Node, level: int = 1) -> tuple[int, int]:
        """``(nodes, height)`` of ``node`` with every alias expanded."""
        if id(node) in self.busy:
            raise _refuse(self.source, node.start_mark, "an alias inside its own anchor")
        if level > MAX_DEPTH:
            message = f"nested deeper than {MAX_DEPTH} levels (aliases expanded)"
            raise _refuse(self.source, node.start_mark, message)
        if id(node) not in self.memo:
            self.busy.add(id(node))
            size, height = 1, 0
            for child in self.children(node):
                n, h = self.measure(child, level + 1)
                size, height = size + n, max(height, h)
            self.busy.discard(id(node))
            self.memo[id(node)] = (size, height + 1)
        size, height = self.memo[id(node)]
        if level + height - 1 > MAX_DEPTH:
            message = f"nested deeper than {MAX_DEPTH} levels (aliases expanded)"
            raise _refuse(self.source, node.start_mark, message)
        return size, height


def _check_aliases(loader: _StudyLoader, root: Node) -> int:
    """Refuse a document whose aliases repeat more than :data:`MAX_ALIAS_NODES` nodes, naming
    the alias that crosses the bound; the number of nodes the aliases repeat otherwise."""
    sizes = _Sizes(loader.source)
    sizes.measure(root)
    repeated = 0
    # Each alias stands for its anchor's whole expansion; counted in file order, the first one
    # over the bound is the one named.
    for event, node in loader.aliases:
        repeated += sizes.measure(node)[0]
        if repeated > MAX_ALIAS_NODES:
            raise _refuse(
                loader.source,
                event.start_mark,
                f"alias *{event.anchor} brings the nodes the file's aliases repeat to "
                f"{repeated:,}, over the limit of {MAX_ALIAS_NODES:,}; write the values out",
            )
    return repeated


def _check_size(source: str, size: int) -> None:
    if size > MAX_BYTES:
        raise UserInputError(
            f"{source}: the study file is over {MAX_BYTES // (1 << 20)} MiB; "
            "a study file is a few KiB of YAML"
        )


def read_study_file(path: str | os.PathLike[str]) -> str:
    """The text of a study file, at most :data:`MAX_BYTES` of UTF-8.

    Raises:
        UserInputError: missing, unreadable, too large or not UTF-8 text.
    """
    source = str(path)
    try:
        with open(path, "rb") as f:
            # Read one byte past the bound, never more: /dev/zero or a huge file stops here.
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise UserInputError(f"{source}: no such study file") from None
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserInputError(f"{source}: cannot read the study file ({reason})") from None
    _check_size(source, len(data))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserInputError(
            f"{source}: not a UTF-8 text file (byte 0x{data[err.start]:02x} at offset "
            f"{err.start}); a study file is YAML"
        ) from None


def load_study_yaml(text: str, source: str) -> Any:
    """A study file's text as plain data, checked as the module docstring says; ``source``
    names it in errors.

    Raises:
        UserInputError: too large, invalid YAML (with its line), a duplicate key, aliases over
            the bound, or nesting too deep.
    """
    _check_size(source, len(text.encode("utf-8", errors="surrogatepass")))
    try:
        loader = _StudyLoader(text, source)  # reads the whole text: control characters fail here
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position)
        column = err.position - (text.rfind("\n", 0, err.position) + 1)
        what = f"unacceptable character #x{err.character:04x}: {err.reason}"
        raise _refuse(
            source,
            yaml.Mark(source, err.position, line, column, None, None),
            f"invalid YAML: {what}",
        ) from None
    try:
        root = loader.get_single_node()  # composing: aliases are shared nodes, nothing expands
        if root is None:
            return None
        _check_aliases(loader, root)
        return loader.construct_document(root)  # a SafeLoader: no tags, no code
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        what = err.problem or str(err)
        if err.context:
            what = f"{what} ({err.context})"
        raise _refuse(source, mark, f"invalid YAML: {what}") from None
    except yaml.YAMLError as err:
        raise UserInputError(f"{source}: invalid YAML: {' '.join(str(err).split())}") from None
    finally:
        loader.dispose()
