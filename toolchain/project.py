"""The project's operations (generate, build, check), called by tasks.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import fuzz, reference
from .build import BuildResult, build
from .render import render_spec
from .spec import Spec, load_specs, spec_paths
from .targets import load_target
from .writer import WriteReport, sync

DEFAULT_SPEC = "virtio-blk"
DEFAULT_TARGET = "rk3588"


@dataclass(frozen=True)
class Layout:
    """Where things live, relative to the project root."""

    root: Path

    @property
    def spec_dir(self) -> Path:
        return self.root / "spec"

    @property
    def template_dir(self) -> Path:
        return self.root / "templates"

    @property
    def generated(self) -> Path:
        return self.root / "generated"

    @property
    def build_dir(self) -> Path:
        return self.root / "build"

    def generated_for(self, spec: str) -> Path:
        """generated/<spec>/"""
        return self.generated / spec

    def build_for(self, target: str, spec: str) -> Path:
        """build/<target>/<spec>/"""
        return self.build_dir / target / spec

    def fuzz_for(self, spec: str) -> Path:
        """build/fuzz/<spec>/: the fuzzer, its working corpus, crash files, log"""
        return self.build_dir / "fuzz" / spec

    @property
    def fuzz_seeds(self) -> Path:
        """The committed seed corpus (written by tests/fuzz/make_corpus.py only)."""
        return self.root / "tests" / "fuzz" / "corpus"

    def spec_names(self) -> list[str]:
        """Every shipped spec, sorted."""
        return sorted(p.stem for p in self.spec_dir.glob("*.yaml"))

    def test_files(self, patterns: list[str]) -> list[Path]:
        """Files matching patterns (globs relative to the root), in order, once each."""
        found: list[Path] = []
        for pattern in patterns:
            found += [p for p in sorted(self.root.glob(pattern)) if p not in found]
        return found


def specs(layout: Layout, names: list[str] | None = None) -> list[Spec]:
    """Load and validate the named specs (default: all); SpecError on any problem."""
    return load_specs(spec_paths(layout.spec_dir, names), layout.root)


def generate(layout: Layout, names: list[str] | None, check: bool) -> WriteReport:
    """Render specs into generated/ (plus schema and key reference); or check drift."""
    chosen = specs(layout, names)
    files: dict[str, str] = {
        reference.SCHEMA_PATH: reference.json_schema(),
        reference.REFERENCE_PATH: reference.reference_markdown(),
    }
    for spec in chosen:
        for rel, text in render_spec(spec, layout.template_dir).items():
            files[f"generated/{rel}"] = text
    owned = [f"generated/{s.name}" for s in chosen] if names else ["generated"]
    return sync(layout.root, files, check=check, owned=owned)


def build_one(layout: Layout, spec: str, target: str) -> BuildResult:
    """Build build/<target>/<spec>/vhost-user-blk from generated/<spec>/."""
    generated = layout.generated_for(spec)
    if not (generated / "virtio_blk.c").is_file():
        raise FileNotFoundError(f"{generated} has no virtio_blk.c; run: invoke gen --spec {spec}")
    return build(load_target(target), generated, layout.build_for(target, spec))


def build_fuzzer(layout: Layout, spec: str) -> BuildResult:
    """Build build/fuzz/<spec>/fuzz_blk from generated/<spec>/."""
    generated = layout.generated_for(spec)
    if not (generated / "virtio_blk.c").is_file():
        raise FileNotFoundError(f"{generated} has no virtio_blk.c; run: invoke gen --spec {spec}")
    return fuzz.build_fuzzer(generated, layout.fuzz_for(spec))
