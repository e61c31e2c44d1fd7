"""One error type holding every problem found in a spec."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Problem:
    """One problem at one place: rendered as file:line:col: key.path: message."""

    file: str
    line: int
    col: int
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.key}: {self.message}"


class SpecError(Exception):
    """Every problem found in one or more specs, sorted by position."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = sorted(set(problems))
        super().__init__("\n".join(str(p) for p in self.problems))


def quoted(values: Iterable[object]) -> str:
    """'a', 'b', 'c' — the house style for listing allowed values."""
    return ", ".join(f"'{v}'" for v in values)


def did_you_mean(value: object, allowed: Iterable[object]) -> str:
    """A ' (did you mean 'x'?)' hint for near misses, else ''."""
    choices = [str(a) for a in allowed]
    close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
