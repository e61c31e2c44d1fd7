"""Every third-party module the project imports is pinned in requirements.txt.

A fresh machine installs only requirements.txt; a module this machine happens
to have (hypothesis was one) would pass here and stop pytest at collection
there.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCAL = {"toolchain", "tests", "tasks"}


def _requirements() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)", line)
            assert m, f"requirements.txt: '{line}' is not pinned as NAME==VERSION"
            pins[m[1].lower().replace("_", "-")] = m[2]
    return pins


def _imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    files = [
        ROOT / "tasks.py",
        *(ROOT / "toolchain").rglob("*.py"),
        *(ROOT / "tests").rglob("*.py"),
    ]
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for n in names:
                top = n.split(".")[0]
                if top not in sys.stdlib_module_names and top not in LOCAL:
                    found.setdefault(top, set()).add(str(f.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_a_pinned_requirement() -> None:
    pins = _requirements()
    owners = md.packages_distributions()
    missing = {}
    for module, files in _imports().items():
        dists = {d.lower().replace("_", "-") for d in owners.get(module, [module])}
        if not dists & set(pins):
            missing[module] = sorted(files)[:3]
    assert missing == {}, f"imported but not in requirements.txt: {missing}"
