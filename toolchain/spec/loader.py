"""Load YAML while keeping the source position of every node.

PyYAML's composer gives us a node tree with marks; we turn it into plain
Python data and, alongside, a map from key path to the position of the node
(and of the key, for mappings), so validation errors can name file:line:col.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def _mark(node: yaml.Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


def _convert(
    node: yaml.Node,
    loc: KeyPath,
    marks: dict[KeyPath, Mark],
    key_marks: dict[KeyPath, Mark],
    problems: list[Problem],
    file: str,
) -> Any:
    marks[loc] = _mark(node)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            m = _mark(key_node)
            if not isinstance(key_node, yaml.ScalarNode) or not isinstance(key, str):
                problems.append(Problem(file, m.line, m.col, dotted(loc), "keys must be strings"))
                continue
            if key in out:
                problems.append(
                    Problem(file, m.line, m.col, dotted((*loc, key)), f"duplicate key '{key}'")
                )
                continue
            key_marks[(*loc, key)] = m
            out[key] = _convert(value_node, (*loc, key), marks, key_marks, problems, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _convert(item, (*loc, i), marks, key_marks, problems, file)
            for i, item in enumerate(node.value)
        ]
    # Scalars: the safe constructor resolves the tag (int, bool, str, null, ...).
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)


def dotted(loc: KeyPath) -> str:
    """A key path as users write it: device.queue_size (or '(top level)')."""
    return ".".join(str(p) for p in loc) if loc else "(top level)"


def load_yaml(path: Path, display: str | None = None) -> LoadedYaml:
    """Parse one YAML file into data plus marks; raise SpecError on syntax errors.

    display is the file name used in messages (default: the path as given).
    """
    file = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(
            [Problem(file, 1, 1, "(file)", f"cannot read spec: {exc.strerror}")]
        ) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        m = exc.problem_mark
        line, col = (m.line + 1, m.column + 1) if m is not None else (1, 1)
        raise SpecError(
            [Problem(file, line, col, "(syntax)", f"invalid YAML: {exc.problem}")]
        ) from None
    marks: dict[KeyPath, Mark] = {}
    key_marks: dict[KeyPath, Mark] = {}
    problems: list[Problem] = []
    data = {} if node is None else _convert(node, (), marks, key_marks, problems, file)
    if problems:
        raise SpecError(problems)
    return LoadedYaml(Path(file), data, marks, key_marks)
