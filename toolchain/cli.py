"""How `invoke` runs our tasks: user mistakes end in one line, never a traceback.

Three hooks into invoke, each the one place for its kind of mistake:

- `task` (used by tasks.py instead of invoke's): a numeric option given a
  non-number (`--seconds abc`) is a parse error, `error: --seconds: ...`.
- `Executor` (named by invoke.yaml's `tasks.executor_class`): every task runs
  under it. It reads INVOKE_BLKGEN_* variables with `Config` (a list setting
  takes a comma-separated list; a bad value is `error: VAR: ...`), refuses a
  blkgen setting invoke.yaml does not have (a typo in ~/.invoke.yaml), turns
  Ctrl-C into "interrupted" and exit status 130, and a closed output pipe
  (`invoke ... | head`) into a quiet exit.
- `quiet_broken_pipe()` (called by tasks.py): the same quiet exit when the
  pipe closes under invoke's own output (`invoke --list | head -3`), which
  no task and no Executor sees.

Everything is raised as invoke's own Exit or ParseError, which invoke's
Program prints and exits with.
"""

from __future__ import annotations

import difflib
import functools
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import invoke
import yaml
from invoke.env import Environment
from invoke.exceptions import ParseError, ThreadException
from invoke.parser import Argument

#: Exit status after Ctrl-C, as a shell reports a command killed by SIGINT.
INTERRUPTED = 130
#: Exit status when the reader of our output went away (SIGPIPE), as a shell
#: reports `yes | head`: nothing is printed, there is no one left to read it.
BROKEN_PIPE = 141

_NUMBER_NAMES = {int: "an integer", float: "a number"}


class UsageError(Exception):
    """A mistake in how the toolkit was called (options, environment): printed as error: ..."""


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


def split_list(value: str) -> list[str]:
    """An environment variable's value for a list setting: 'a, b' -> ['a', 'b']; '' -> []."""
    return [item.strip() for item in value.split(",") if item.strip()]


class _Environment(Environment):
    """invoke's environment loader, reading lists as comma-separated words."""

    def _cast(self, old: Any, new: Any) -> Any:
        if isinstance(old, list | tuple):
            return split_list(new)
        return super()._cast(old, new)

    def _path_set(self, key_path: Sequence[str], value: str) -> None:
        try:
            super()._path_set(key_path, value)
        except (ValueError, TypeError):
            var = (self._prefix or "") + self._to_env_var(key_path)
            old = self._path_get(key_path)
            raise UsageError(f"{var}: expected {_expected(type(old))}, got '{value}'") from None


class Config(invoke.Config):
    """invoke's Config, loading the shell environment with _Environment."""

    def load_shell_env(self) -> None:
        """As invoke's, but list settings take 'a,b' and bad values are UsageErrors."""
        self.merge()
        loader = _Environment(config=self._config, prefix=self._env_prefix)
        self._set(_env=loader.load())
        self.merge()


def _only_broken_pipes(exc: ThreadException) -> bool:
    return all(isinstance(w.value, BrokenPipeError) for w in exc.exceptions)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the exit's flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def quiet_broken_pipe() -> None:
    """Exit quietly (status 141) on a BrokenPipeError nothing caught, else as before.

    For invoke's own output (--list, --help), printed before any task runs;
    a task's output is the Executor's to handle.
    """
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if not issubclass(kind, BrokenPipeError):
            previous(kind, value, tb)
            return
        _silence_stdout()
        os._exit(BROKEN_PIPE)  # raising SystemExit from a hook only prints it

    sys.excepthook = hook


#: The project's own settings file: every blkgen setting there is, with its default.
PROJECT_CONFIG = Path(__file__).resolve().parent.parent / "invoke.yaml"
#: Settings whose keys are the user's to choose (sanitizer target -> test files).
_FREE_FORM = {"blkgen.sanitizer_tests"}


def unknown_settings(merged: Mapping[str, Any], known: Mapping[str, Any], at: str) -> list[str]:
    """Keys of merged (the config after every file and INVOKE_BLKGEN_*) that
    known (the project's invoke.yaml) does not have, as one message each."""
    out = []
    for key, value in merged.items():
        path = f"{at}.{key}"
        if key not in known:
            hint = difflib.get_close_matches(str(key), [str(k) for k in known], n=1)
            near = f" (did you mean '{hint[0]}'?)" if hint else ""
            out.append(f"unknown setting {path}{near}")
            continue
        nested = isinstance(value, Mapping) and isinstance(known[key], Mapping)
        if nested and path not in _FREE_FORM:
            out += unknown_settings(value, known[key], path)
    return out


def check_settings(config: invoke.Config) -> None:
    """UsageError naming every blkgen setting the project does not know (a
    typo in ~/.invoke.yaml would otherwise be ignored without a word)."""
    known = yaml.safe_load(PROJECT_CONFIG.read_text())["blkgen"]
    merged = config.get("blkgen")
    if not isinstance(merged, Mapping):
        return
    problems = unknown_settings(merged, known, "blkgen")
    if problems:
        raise UsageError("; ".join(problems) + f"; the settings are those in {PROJECT_CONFIG.name}")


class Executor(invoke.Executor):
    """invoke's Executor: our Config, and Ctrl-C or a closed pipe as a plain exit."""

    def __init__(
        self,
        collection: invoke.Collection,
        config: invoke.Config | None = None,
        core: Any = None,
    ) -> None:
        super().__init__(collection, (config or Config()).clone(into=Config), core)

    def execute(self, *tasks: Any) -> Any:
        """Run the tasks; mistakes and interruptions become invoke Exits."""
        try:
            try:
                check_settings(self.config)
                return super().execute(*tasks)
            finally:  # a pipe's reader may be gone: find out here, not at exit
                sys.stdout.flush()
        except UsageError as exc:
            raise invoke.Exit(f"error: {exc}", code=1) from None
        except KeyboardInterrupt:
            raise invoke.Exit("interrupted", code=INTERRUPTED) from None
        except BrokenPipeError:
            _silence_stdout()
            raise invoke.Exit(code=BROKEN_PIPE) from None
        except ThreadException as exc:  # c.run's output threads found the pipe closed
            if not _only_broken_pipes(exc):
                raise
            _silence_stdout()
            raise invoke.Exit(code=BROKEN_PIPE) from None
