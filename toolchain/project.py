"""The project's operations (generate, build, check), called by tasks.py."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from . import fuzz, reference, show
from .build import BuildResult, build
from .render import render_spec
from .spec import Spec, load_specs, spec_paths
from .targets import load_target
from .writer import WriteReport, sync

DEFAULT_SPEC = "virtio-blk"
DEFAULT_TARGET = "rk3588"


@dataclass(frozen=True)
class Layout:
    """Where things live, relative to the project root.

    outside: spec files given by path that are not in spec/ (see resolve);
    each is known by its file's stem, like a shipped spec, and generated into
    build/generated/<stem>/, so the committed generated/ holds shipped specs only.
    """

    root: Path
    outside: tuple[Path, ...] = ()

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
        """generated/<spec>/; build/generated/<spec>/ for a spec given by an outside path."""
        if spec in self.outside_by_name:
            return self.build_dir / "generated" / spec
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

    @property
    def outside_by_name(self) -> dict[str, Path]:
        """The outside spec files by the name they go by (their stem)."""
        return {p.stem: p for p in self.outside}

    def spec_files(self, names: list[str] | None = None) -> list[Path]:
        """The YAML files of spec names (or paths), in order; default every shipped spec.

        SpecError names every unknown spec at once.
        """
        if not names:
            return spec_paths(self.spec_dir)
        outside = self.outside_by_name
        shipped = iter(spec_paths(self.spec_dir, [n for n in names if n not in outside]))
        return [outside[n] if n in outside else next(shipped) for n in names]

    def spec_argument(self, name: str) -> str:
        """What `--spec` takes for a spec name: the path it was given by, or the name."""
        outside = self.outside_by_name
        return str(outside[name]) if name in outside else name

    def test_files(self, patterns: list[str]) -> list[Path]:
        """Files matching patterns (globs relative to the root), in order, once each."""
        found: list[Path] = []
        for pattern in patterns:
            found += [p for p in sorted(self.root.glob(pattern)) if p not in found]
        return found


class SpecArgumentError(ValueError):
    """A --spec argument that cannot be used as given (one line, no position)."""


def _is_path(arg: str) -> bool:
    return Path(arg).suffix in (".yaml", ".yml")


def resolve(layout: Layout, args: list[str], force: bool = False) -> tuple[Layout, list[str]]:
    """Spec arguments (names or paths) -> (a layout that knows the paths, their names).

    The one place a --spec argument is interpreted. A path into spec/ is that
    shipped spec; any other path is generated into build/generated/<stem>/ and
    built into build/<target>/<stem>/ like one. A path outside spec/ whose stem
    is a shipped spec's name would take that spec's place in build/ and in test
    and bench reports: refused (SpecArgumentError) unless force. Unknown names
    and missing files: SpecError.
    """
    outside = layout.outside_by_name
    # every unknown name or missing file at once
    spec_paths(layout.spec_dir, [a for a in args if a not in outside])
    shipped = set(layout.spec_names())
    spec_dir = layout.spec_dir.resolve()
    names: list[str] = []
    for arg in args:
        if not _is_path(arg):
            names.append(arg)
            continue
        path = Path(arg)
        if path.suffix == ".yaml" and path.resolve().parent == spec_dir:
            names.append(path.stem)
            continue
        name = path.stem
        if name in outside and outside[name].resolve() != path.resolve():
            raise SpecArgumentError(
                f"{arg} and {outside[name]} are both named '{name}'; "
                f"build/ can hold one of them: rename one"
            )
        if name in shipped and not force:
            raise SpecArgumentError(
                f"{arg} is named like the shipped spec/{name}.yaml and would replace "
                f"its builds in build/; rename the file, or pass --force to replace them"
            )
        outside[name] = path
        names.append(name)
    return replace(layout, outside=tuple(outside.values())), names


def specs(layout: Layout, names: list[str] | None = None) -> list[Spec]:
    """Load and validate the named specs (default: all); SpecError on any problem."""
    return load_specs(layout.spec_files(names), layout.root)


def generate(
    layout: Layout, names: list[str] | None, check: bool, force: bool = False
) -> WriteReport:
    """Render specs into generated/ (plus schema and key reference); or check drift.

    names: spec names or paths (see resolve; force as there); default every
    shipped spec. A spec given by an outside path goes to build/generated/<name>/.
    """
    files, owned = _rendered(layout, names, force)
    return sync(layout.root, files, check=check, owned=owned)


def generate_diff(layout: Layout, names: list[str] | None, force: bool = False) -> str:
    """The unified diff `generate` would apply (empty when nothing would change); writes nothing."""
    files, owned = _rendered(layout, names, force)
    report = sync(layout.root, files, check=True, owned=owned)
    return show.unified(layout.root, files, report.stale, report.extra)


def _rendered(
    layout: Layout, names: list[str] | None, force: bool
) -> tuple[dict[str, str], list[str]]:
    """Every file generate writes, by path relative to the root, and the directories it owns."""
    if names:
        layout, names = resolve(layout, names, force)
    chosen = specs(layout, names)
    files: dict[str, str] = {
        reference.SCHEMA_PATH: reference.json_schema(),
        reference.REFERENCE_PATH: reference.reference_markdown(),
    }
    owned: list[str] = []
    for spec in chosen:
        base = layout.generated_for(spec.name).parent.relative_to(layout.root)
        for rel, text in render_spec(spec, layout.template_dir).items():
            files[f"{base}/{rel}"] = text
        owned.append(f"{base}/{spec.name}")
    if not names:
        owned = ["generated"]
    return files, owned


def _generated_pair(layout: Layout, spec: str) -> Path:
    """generated/<spec>/, or FileNotFoundError saying how to generate it."""
    generated = layout.generated_for(spec)
    if not (generated / "virtio_blk.c").is_file():
        raise FileNotFoundError(
            f"{generated} has no virtio_blk.c; run: invoke gen --spec {layout.spec_argument(spec)}"
        )
    return generated


def build_one(layout: Layout, spec: str, target: str) -> BuildResult:
    """Build build/<target>/<spec>/vhost-user-blk from generated/<spec>/."""
    return build(load_target(target), _generated_pair(layout, spec), layout.build_for(target, spec))


def build_fuzzer(layout: Layout, spec: str) -> BuildResult:
    """Build build/fuzz/<spec>/fuzz_blk from generated/<spec>/."""
    return fuzz.build_fuzzer(_generated_pair(layout, spec), layout.fuzz_for(spec))
