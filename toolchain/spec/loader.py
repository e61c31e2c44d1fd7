"""Load YAML while keeping the source position of every node.

PyYAML's composer gives us a node tree with marks; we turn it into plain
Python data and, alongside, a map from key path to the position of the node
(and of the key, for mappings), so validation errors can name file:line:col.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import Problem, SpecError

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Mark:
    """A 1-based line/column position in a spec file."""

    line: int
    col: int


@dataclass(frozen=True)
class LoadedYaml:
    """Plain data plus the source position of each node, keyed by path."""

    path: Path
    data: Any
    marks: dict[KeyPath, Mark]
    key_marks: dict[KeyPath, Mark]

    def mark_for(self, loc: KeyPath, at_key: bool = False) -> Mark:
        """Best position for a path: its key (at_key) or value, else the nearest parent."""
        if at_key and loc in self.key_marks:
            return self.key_marks[loc]
        for cut in range(len(loc), -1, -1):
            prefix = loc[:cut]
            if prefix in self.marks:
                return self.marks[prefix]
        return Mark(1, 1)


def _mark(node: yaml.Node | yaml.Event) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


_CORE_TAG = "tag:yaml.org,2002:"
# A spec is a few sections of scalars and short lists. Deeper nesting or more
# values can only come from a mistake or from aliases multiplying a value
# (each level of a "billion laughs" spec repeats the one before); both would
# otherwise exhaust the stack or hang.
MAX_DEPTH = 32
MAX_VALUES = 10_000


def _as_written(tag: str) -> str:
    """A resolved tag as the user wrote it: !!python/object, !custom."""
    return "!!" + tag[len(_CORE_TAG) :] if tag.startswith(_CORE_TAG) else tag


class _RecursiveAlias(yaml.ScalarNode):
    """Stands in for an alias to a value that is still being composed (it contains itself)."""

    def __init__(self, event: yaml.AliasEvent) -> None:
        super().__init__("tag:yaml.org,2002:null", "", event.start_mark, event.end_mark)
        self.anchor = str(event.anchor)


class _Composer(yaml.SafeLoader):
    """SafeLoader's composer, noting what a spec may not contain instead of following it.

    Explicit tags (`!!python/object`, `!foo`) are recorded per node so that
    conversion refuses them with the key path; an alias to a value that
    contains it becomes a _RecursiveAlias, so the node tree has no cycle.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.explicit_tags: dict[int, str] = {}
        self._open: list[str] = []  # anchors of the collections being composed
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) and event.anchor in self._open:
            self.get_event()
            return _RecursiveAlias(event)
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark
            )
        anchor = None if isinstance(event, yaml.AliasEvent) else event.anchor
        tag = getattr(event, "tag", None)
        if anchor is not None:
            self._open.append(anchor)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open.pop()
        if tag not in (None, "!"):
            self.explicit_tags[id(node)] = _as_written(str(node.tag))
        return node


@dataclass
class _Converter:
    """Turns a composed node tree into plain data, recording marks and problems."""

    file: str
    explicit_tags: dict[int, str]
    marks: dict[KeyPath, Mark] = field(default_factory=dict)
    key_marks: dict[KeyPath, Mark] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    values: int = 0
    cut_short: bool = False

    def _problem(self, mark: Mark, loc: KeyPath, message: str) -> None:
        self.problems.append(Problem(self.file, mark.line, mark.col, dotted(loc), message))

    def convert(self, node: yaml.Node, loc: KeyPath) -> Any:
        self.marks[loc] = _mark(node)
        self.values += 1
        if self.values > MAX_VALUES or len(loc) > MAX_DEPTH:
            if not self.cut_short:  # say it once, not for every value left out
                self.cut_short = True
                what = (
                    f"more than {MAX_VALUES} values"
                    if self.values > MAX_VALUES
                    else f"values nested deeper than {MAX_DEPTH} levels"
                )
                # Aliased values carry their anchor's mark: name the section instead.
                section = loc[:1]
                mark = self.key_marks.get(section, _mark(node))
                self._problem(mark, section, f"aliases expand the spec to {what}")
            return None
        if isinstance(node, _RecursiveAlias):
            self._problem(
                _mark(node),
                loc,
                f"alias '*{node.anchor}' is inside the value it names (a recursive alias)",
            )
            return None
        if id(node) in self.explicit_tags:
            self._problem(
                _mark(node),
                loc,
                f"YAML tag '{self.explicit_tags[id(node)]}' is not allowed in a spec; "
                "write the plain value",
            )
            return None
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = key_node.value
                m = _mark(key_node)
                if not isinstance(key_node, yaml.ScalarNode) or not isinstance(key, str):
                    self._problem(m, loc, "keys must be strings")
                    continue
                if key in out:
                    self._problem(m, (*loc, key), f"duplicate key '{key}'")
                    continue
                self.key_marks[(*loc, key)] = m
                out[key] = self.convert(value_node, (*loc, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(item, (*loc, i)) for i, item in enumerate(node.value)]
        # Scalars: the safe constructor resolves the tag (int, bool, str, null, ...).
        return yaml.constructor.SafeConstructor().construct_object(node, deep=True)


def _not_utf8(file: str, raw: bytes, exc: UnicodeDecodeError) -> Problem:
    """Where the first byte that is not UTF-8 is, as a Problem."""
    before = raw[: exc.start]
    line_start = before.rfind(b"\n") + 1
    col = len(before[line_start:].decode("utf-8")) + 1
    return Problem(
        file,
        before.count(b"\n") + 1,
        col,
        "(file)",
        f"spec is not UTF-8 text: byte 0x{raw[exc.start]:02x} cannot be decoded",
    )


def _reader_problem(file: str, text: str, exc: yaml.reader.ReaderError) -> Problem:
    """A character YAML refuses (control characters), as a Problem."""
    before = text[: exc.position]
    line = before.count("\n") + 1
    col = exc.position - (before.rfind("\n") + 1) + 1
    char = exc.character if isinstance(exc.character, int) else ord(exc.character)
    return Problem(
        file, line, col, "(syntax)", f"invalid YAML: character U+{char:04X} is not allowed"
    )


def dotted(loc: KeyPath) -> str:
    """A key path as users write it: device.queue_size (or '(top level)')."""
    return ".".join(str(p) for p in loc) if loc else "(top level)"


def load_yaml(path: Path, display: str | None = None) -> LoadedYaml:
    """Parse one YAML file into data plus marks; raise SpecError on syntax errors.

    display is the file name used in messages (default: the path as given).
    """
    file = display or str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(
            [Problem(file, 1, 1, "(file)", f"cannot read spec: {exc.strerror}")]
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([_not_utf8(file, raw, exc)]) from None
    try:
        composer = _Composer(text)  # the reader checks every character here
        node = composer.get_single_node()
    except yaml.MarkedYAMLError as exc:
        m = exc.problem_mark
        line, col = (m.line + 1, m.column + 1) if m is not None else (1, 1)
        raise SpecError(
            [Problem(file, line, col, "(syntax)", f"invalid YAML: {exc.problem}")]
        ) from None
    except yaml.reader.ReaderError as exc:
        raise SpecError([_reader_problem(file, text, exc)]) from None
    converter = _Converter(file, composer.explicit_tags)
    data = {} if node is None else converter.convert(node, ())
    if converter.problems:
        raise SpecError(converter.problems)
    return LoadedYaml(Path(file), data, converter.marks, converter.key_marks)
