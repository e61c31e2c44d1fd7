"""The spec hash: what a spec means, not how its file is spelled.

Banners, generated/<spec>/manifest.json, hvisor-tool install state, build
records and flash manifests all record this one hash, and flash compares it
to tell a stale build. It covers the validated model (every key with its
default filled in) and the toolkit version that gives the model its meaning,
so comments, blank lines, indentation, key order or quoting in the YAML, and
where the file lives, change nothing; a changed value or a new toolkit
version does.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from .. import __version__

if TYPE_CHECKING:
    from .model import SpecBody


def canonical_json(body: SpecBody) -> str:
    """The validated body and the toolkit version as compact JSON with sorted keys."""
    data = {"toolkit": __version__, "spec": body.model_dump(mode="json")}
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def spec_sha256(body: SpecBody) -> str:
    """The spec hash of a validated body (hex sha256 of canonical_json)."""
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()
