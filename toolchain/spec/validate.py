"""YAML -> SpecBody -> Spec, turning every failure into a positioned Problem."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from . import rules
from .errors import Problem, SpecError, did_you_mean, quoted
from .loader import KeyPath, LoadedYaml, dotted, load_yaml
from .model import Spec, SpecBody

_TYPE_NAMES = {
    "int_type": "an integer",
    "bool_type": "a boolean (true or false)",
    "string_type": "a string",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dict_type": "a mapping",
}


def _show(value: Any) -> str:
    """A value as the user wrote it, for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null (empty)"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"'{value}'"


def _model_at(loc: KeyPath) -> type[BaseModel] | None:
    """The section model a key path leads to, or None."""
    model: type[BaseModel] = SpecBody
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _annotation_at(loc: KeyPath) -> Any:
    """The annotation of the field a key path names, or None."""
    parent = _model_at(loc[:-1]) if loc else None
    field = parent.model_fields.get(loc[-1]) if parent and isinstance(loc[-1], str) else None
    return field.annotation if field else None


def _enum_of(annotation: Any) -> type[Enum] | None:
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return annotation
    if get_origin(annotation) is not None:
        for arg in get_args(annotation):
            found = _enum_of(arg)
            if found:
                return found
    return None


#: PyYAML reads YAML 1.1, where unquoted yes/no/on/off (any case) are booleans.
YAML11_BOOLEAN_HINT = (
    " (YAML reads an unquoted yes, no, on or off as a boolean: put the value in quotes)"
)


def _message(err: dict[str, Any]) -> str:
    text = _plain_message(err)
    if isinstance(err.get("input"), bool) and err["type"] != "bool_type":
        text += YAML11_BOOLEAN_HINT
    return text


def _plain_message(err: dict[str, Any]) -> str:
    kind = err["type"]
    loc: KeyPath = tuple(err["loc"])
    value = err.get("input")
    ctx = err.get("ctx", {})
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        valid = sorted(parent.model_fields) if parent else []
        return f"unknown key '{loc[-1]}'; valid keys: {quoted(valid)}{did_you_mean(loc[-1], valid)}"
    if kind in ("enum", "literal_error"):
        enum = _enum_of(_annotation_at(loc))
        allowed = [m.value for m in enum] if enum else [ctx.get("expected", "?")]
        return f"{_show(value)} is not one of {quoted(allowed)}{did_you_mean(value, allowed)}"
    if kind in _TYPE_NAMES:
        return f"expected {_TYPE_NAMES[kind]}, got {_show(value)}"
    if kind in ("greater_than_equal", "greater_than"):
        bound = ctx.get("ge", ctx.get("gt"))
        return f"{_show(value)} is too small; the minimum is {bound}"
    if kind in ("less_than_equal", "less_than"):
        bound = ctx.get("le", ctx.get("lt"))
        return f"{_show(value)} is too large; the maximum is {bound}"
    if kind == "missing":
        return f"missing required key '{loc[-1]}'"
    msg = str(err.get("msg", kind))
    return msg[:1].lower() + msg[1:]


def _problem(
    src: LoadedYaml, display: str, loc: KeyPath, message: str, at_key: bool = False
) -> Problem:
    mark = src.mark_for(loc, at_key)
    return Problem(display, mark.line, mark.col, dotted(loc), message)


def _display_path(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return str(path.resolve().relative_to(root.resolve()))
        except ValueError:
            pass
    return str(path)


def source_path(path: Path, root: Path | None) -> str:
    """How a spec's path is recorded (banner, manifest): relative to root, so never a
    machine's absolute path, and a `--spec` argument that works from the root.

    Inside root: `spec/fast.yaml`. Outside: `../elsewhere/fast.yaml`, which is
    how the user spelled it when running from the root.
    """
    if root is None:
        return str(path)
    if path.resolve().is_relative_to(root.resolve()):
        return _display_path(path, root)
    return os.path.relpath(os.path.abspath(path), os.path.abspath(root))


def load_spec(path: Path, root: Path | None = None) -> Spec:
    """Load and validate one spec; raise SpecError listing every problem."""
    display = _display_path(path, root)
    src = load_yaml(path, display)
    problems: list[Problem] = []
    name = path.stem
    if not name.replace("-", "").replace("_", "").isalnum() or not name.isascii():
        problems.append(
            Problem(
                display,
                1,
                1,
                "(file name)",
                f"spec name '{name}' must be letters, digits, '-' or '_'",
            )
        )
    if not isinstance(src.data, dict):
        problems.append(
            _problem(
                src, display, (), f"expected a mapping at the top level, got {_show(src.data)}"
            )
        )
        raise SpecError(problems)
    try:
        body = SpecBody.model_validate(src.data)
    except ValidationError as exc:
        for err in exc.errors():
            at_key = err["type"] in ("extra_forbidden", "missing")
            problems.append(_problem(src, display, tuple(err["loc"]), _message(dict(err)), at_key))
        raise SpecError(problems) from None
    for loc, message in rules.check(body):
        problems.append(_problem(src, display, loc, message))
    if problems:
        raise SpecError(problems)
    return Spec.from_body(path, body, source_path(path, root))


def load_specs(paths: list[Path], root: Path | None = None) -> list[Spec]:
    """Load several specs; one SpecError carries the problems of all of them."""
    specs: list[Spec] = []
    problems: list[Problem] = []
    for path in paths:
        try:
            specs.append(load_spec(path, root))
        except SpecError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SpecError(problems)
    return specs


def spec_paths(spec_dir: Path, names: list[str] | None = None) -> list[Path]:
    """The spec files to work on: the named ones, else every spec/*.yaml."""
    if names:
        out = []
        for name in names:
            candidate = Path(name)
            if candidate.suffix not in (".yaml", ".yml"):
                candidate = spec_dir / f"{name}.yaml"
            out.append(candidate)
        missing = [p for p in out if not p.is_file()]
        if missing:
            known = sorted(p.stem for p in spec_dir.glob("*.yaml"))
            raise SpecError(
                Problem(
                    str(p),
                    1,
                    1,
                    "(file)",
                    f"no such spec; known specs: {quoted(known)}{did_you_mean(p.stem, known)}",
                )
                for p in missing
            )
        return out
    return sorted(spec_dir.glob("*.yaml"))
