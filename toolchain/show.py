"""What a spec amounts to (`invoke show`), and what an edit would change (`gen --diff`)."""

from __future__ import annotations

import difflib
import tempfile
from pathlib import Path
from typing import Any

import yaml

from .spec import Spec, SpecError, load_spec


def effective(spec: Spec) -> tuple[str, list[str]]:
    """The spec with every default filled in, as a spec file that loads to the
    same model, and the keys left out of it because they do not apply (a
    rule refuses them unless another key enables them), with the reason."""
    body = spec.body.model_dump(mode="json")
    left_out: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{spec.name}.yaml"
        for _ in range(8):  # each round drops what the last load refused
            text = yaml.safe_dump(body, sort_keys=False, default_flow_style=False, width=100)
            path.write_text(text, encoding="utf-8")
            try:
                load_spec(path, Path(tmp))
            except SpecError as exc:
                refused = [p for p in exc.problems if p.message.startswith("only with")]
                if len(refused) != len(exc.problems):
                    raise
                for p in refused:
                    section, key = p.key.split(".", 1)
                    del body[section][key]
                    left_out.append(f"{p.key} ({p.message})")
                continue
            return text, left_out
    raise RuntimeError(f"{spec.name}: no effective spec loads")  # rules that never settle


def _leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def differences(spec: Spec, reference: Spec) -> list[str]:
    """One line per key whose effective value differs from reference's (description aside)."""
    ours = _leaves(spec.body.model_dump(mode="json"))
    theirs = _leaves(reference.body.model_dump(mode="json"))
    return [
        f"{key}: {_scalar(ours[key])} ({reference.name}: {_scalar(theirs[key])})"
        for key in ours
        if key != "description" and ours[key] != theirs.get(key)
    ]


def describe(spec: Spec, reference: Spec, reference_is: str) -> str:
    """What `invoke show` prints: source and hash, the effective spec, the
    features offered, and the differences from the reference spec."""
    text, left_out = effective(spec)
    lines = [
        f"# {spec.name}: {spec.source} (model sha256 {spec.sha256[:16]})",
        f"# {spec.body.description}" if spec.body.description else f"# {spec.name}",
        "# every key, defaults filled in (a spec file that loads to the same model):",
        text.rstrip("\n"),
        "",
    ]
    lines += [f"# not applicable here: {k}" for k in left_out]
    lines.append(
        f"# offered: {', '.join(spec.feature_macros)} (feature bits 0x{spec.feature_mask:x})"
    )
    if spec.name == reference.name:
        lines.append(f"# this is {reference.name}, {reference_is}")
    else:
        diff = differences(spec, reference)
        lines.append(f"# against {reference.name} ({reference_is}): " + (
            f"{len(diff)} key{'s' if len(diff) != 1 else ''} differ" if diff else "no key differs"
        ))  # fmt: skip
        lines += [f"#   {d}" for d in diff]
    return "\n".join(lines) + "\n"


def unified(root: Path, files: dict[str, str], stale: list[str], extra: list[str]) -> str:
    """A unified diff, relative to root, of writing the stale files and removing the extra ones."""
    out: list[str] = []
    for rel in sorted(stale):
        path = root / rel
        old = path.read_text(encoding="utf-8") if path.is_file() else ""
        out += difflib.unified_diff(
            old.splitlines(keepends=True),
            files[rel].splitlines(keepends=True),
            fromfile=f"a/{rel}" if path.is_file() else "/dev/null",
            tofile=f"b/{rel}",
        )
    for rel in sorted(extra):
        old = (root / rel).read_text(encoding="utf-8", errors="replace")
        out += difflib.unified_diff(
            old.splitlines(keepends=True), [], fromfile=f"a/{rel}", tofile="/dev/null"
        )
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                   for line in out)  # fmt: skip
