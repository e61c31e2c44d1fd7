"""How `invoke` runs our tasks: user mistakes end in one line, never a traceback.

- `task` (used by tasks.py instead of invoke's): a numeric option given a
  non-number (`--seconds abc`) is a parse error, `error: --seconds: ...`,
  which invoke's Program prints before exiting 1.
"""

from __future__ import annotations

import functools
from typing import Any

import invoke
from invoke.exceptions import ParseError
from invoke.parser import Argument

_NUMBER_NAMES = {int: "an integer", float: "a number"}


def _expected(kind: type) -> str:
    return _NUMBER_NAMES.get(kind, f"a {kind.__name__}")


class _NumberArgument(Argument):
    """An int or float option whose bad value is a ParseError, not a ValueError."""

    def set_value(self, value: Any, cast: bool = True) -> None:
        try:
            super().set_value(value, cast)
        except ValueError:
            raise ParseError(
                f"error: --{self.name}: expected {_expected(self.kind)}, got '{value}'"
            ) from None


class Task(invoke.Task):
    """invoke's Task, with numeric options that check their value."""

    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list[Argument]:
        """The options of the task; int and float ones refuse non-numbers."""
        return [
            _NumberArgument(
                names=a.names,
                kind=a.kind,
                default=a.default,
                help=a.help,
                positional=a.positional,
                optional=a.optional,
                incrementable=a.incrementable,
                attr_name=a.attr_name,
            )
            if a.kind in _NUMBER_NAMES and not a.incrementable
            else a
            for a in super().get_arguments(ignore_unknown_help)
        ]


#: `@task` and `@task(...)` as with invoke, making our Task.
task = functools.partial(invoke.task, klass=Task)
