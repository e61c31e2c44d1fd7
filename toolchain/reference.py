"""Spec documentation and JSON Schema, both derived from the model."""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel

from .spec import SpecBody

SCHEMA_PATH = "spec/schema.json"
REFERENCE_PATH = "docs/spec-reference.md"


def json_schema() -> str:
    """JSON Schema of a spec file, for editors (yaml-language-server etc.)."""
    schema = SpecBody.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$comment"] = (
        "AUTOMATICALLY GENERATED from toolchain/spec/model.py by 'invoke gen'; DO NOT MODIFY."
    )
    schema["title"] = "hvisor-blkgen virtio-blk device spec"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


_NAMES = {int: ("integer", "integers"), bool: ("boolean", "booleans"), str: ("string", "strings")}


def _range(metadata: list[Any]) -> str:
    """' 1 to 4', ' at least 1', ' at most 8' or '' from pydantic's ge/le constraints."""
    lo = next((m.ge for m in metadata if hasattr(m, "ge")), None)
    hi = next((m.le for m in metadata if hasattr(m, "le")), None)
    if lo is not None and hi is not None:
        return f" {lo} to {hi}"
    if lo is not None:
        return f" at least {lo}"
    return f" at most {hi}" if hi is not None else ""


def _type_name(annotation: Any, metadata: list[Any], plural: bool = False) -> str:
    """A key's type as a reader says it: 'integer 1 to 4', 'list of integers 0 to 1023'."""
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " \\| ".join(f"`{m.value}`" for m in annotation)
    if get_origin(annotation) is Annotated:
        base, *extra = get_args(annotation)
        inner = [m for e in extra for m in (getattr(e, "metadata", None) or [e])]
        return _type_name(base, [*metadata, *inner], plural)
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        return "list of " + _type_name(item, [], plural=True)
    if annotation in _NAMES:
        return _NAMES[annotation][plural] + _range(metadata)
    raise TypeError(f"no reader's name for the type {annotation!r}: add it to reference.py")


def _default(value: Any) -> str:
    if isinstance(value, Enum):
        return f"`{value.value}`"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str):
        return f'`"{value}"`' if value else '`""`'
    return f"`{value}`"


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows: list[str] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.append(f"| `{key}` | mapping | | {annotation.__doc__ or ''} |")
            rows.extend(_rows(annotation, key + "."))
            continue
        rows.append(
            f"| `{key}` | {_type_name(annotation, field.metadata)} | {_default(field.default)} "
            f"| {field.description or ''} |"
        )
    return rows


def reference_markdown() -> str:
    """Every spec key with its type, default and meaning."""
    lines = [
        "<!-- AUTOMATICALLY GENERATED from toolchain/spec/model.py by 'invoke gen';"
        " DO NOT MODIFY. -->",
        "# Spec key reference",
        "",
        "Every key is optional; an omitted key takes its default, and the defaults",
        "reproduce hvisor-tool HEAD's device. Unknown keys are errors. Cross-key",
        "rules are listed in [spec.md](spec.md).",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
        *_rows(SpecBody, ""),
        "",
    ]
    return "\n".join(lines)
