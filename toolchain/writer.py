"""Write rendered files: touch only what changed, or report drift."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class WriteReport:
    """What a write (or a check) found."""

    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # would change (check mode)
    extra: list[str] = field(default_factory=list)  # on disk, not generated


def sync(root: Path, files: dict[str, str], check: bool, owned: list[str]) -> WriteReport:
    """Bring root in line with files; with check, change nothing and report.

    owned: directories (relative to root) the generator owns entirely; files
    there that are not in `files` are reported as extra (and removed when
    not checking), so a renamed spec leaves no orphans.
    """
    report = WriteReport()
    for rel in sorted(files):
        path = root / rel
        old = path.read_text(encoding="utf-8") if path.is_file() else None
        if old == files[rel]:
            report.unchanged.append(rel)
            continue
        if check:
            report.stale.append(rel)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(files[rel], encoding="utf-8")
        tmp.replace(path)
        report.written.append(rel)
    for directory in owned:
        base = root / directory
        if not base.is_dir():
            continue
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            rel = str(path.relative_to(root))
            if rel not in files:
                report.extra.append(rel)
                if not check:
                    path.unlink()
    return report
