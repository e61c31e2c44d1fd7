"""Spec documentation and JSON Schema, both derived from the model."""

from __future__ import annotations

import json
from enum import Enum
from typing import Any

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


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " \\| ".join(f"`{m.value}`" for m in annotation)
    return {int: "integer", bool: "boolean", str: "string"}.get(annotation, str(annotation))


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
        bounds = [
            f"{k} {getattr(m, k)}" for m in field.metadata for k in ("ge", "le") if hasattr(m, k)
        ]
        extra = f" ({', '.join(bounds)})" if bounds else ""
        rows.append(
            f"| `{key}` | {_type_name(annotation)}{extra} | {_default(field.default)} "
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
