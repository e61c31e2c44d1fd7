"""Debian packages for the guest: downloaded with apt-get, unpacked, never installed.

Everything lands in a cache directory outside the repository
(``~/.cache/hvisor-blkgen/e2e/<arch>/`` unless ``HVISOR_BLKGEN_CACHE`` or
``XDG_CACHE_HOME`` says otherwise). A guest architecture other than the
host's needs dpkg to know it (``dpkg --add-architecture arm64`` and an
``apt-get update``), which `ensure_architecture` does when run as root.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..proc import Timeout, run, stop
from . import elf

APT_TIMEOUT = 600.0
QUERY_TIMEOUT = 60.0
# Dependencies that never carry a shared library fio loads.
NOT_LIBRARIES = frozenset({"python3", "init-system-helpers", "debconf", "dpkg", "adduser"})

Progress = Callable[[str], None]


class DebianError(RuntimeError):
    """apt or dpkg failed, or a package the guest needs cannot be had."""


@dataclass(frozen=True)
class Arch:
    """A guest architecture: Debian's name, the kernel flavour and the multiarch triplet."""

    name: str  # amd64 | arm64
    flavour: str
    triplet: str
    machine: int  # ELF e_machine

    @property
    def meta_kernel(self) -> str:
        """Debian's kernel metapackage, which depends on the current ABI's image."""
        return f"linux-image-{self.flavour}"


ARCHES: dict[str, Arch] = {
    "amd64": Arch("amd64", "amd64", "x86_64-linux-gnu", elf.EM_X86_64),
    "arm64": Arch("arm64", "arm64", "aarch64-linux-gnu", elf.EM_AARCH64),
}


def arch(name: str) -> Arch:
    """The named guest architecture; ValueError if unknown."""
    try:
        return ARCHES[name]
    except KeyError:
        raise ValueError(f"unknown guest arch '{name}'; known: {', '.join(ARCHES)}") from None


def cache_root() -> Path:
    """Where downloaded guest material is kept (outside the repository)."""
    explicit = os.environ.get("HVISOR_BLKGEN_CACHE")
    if explicit:
        return Path(explicit).expanduser() / "e2e"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hvisor-blkgen" / "e2e"


def host_arch() -> str:
    """dpkg's native architecture."""
    return _output(["dpkg", "--print-architecture"]).strip()


def _output(argv: list[str], timeout: float = QUERY_TIMEOUT, cwd: Path | None = None) -> str:
    if shutil.which(argv[0]) is None:
        raise DebianError(f"'{argv[0]}' is not installed; the guest's packages come from apt")
    try:
        proc = run(argv, timeout=timeout, cwd=cwd)
    except Timeout as exc:
        raise DebianError(str(exc)) from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise DebianError(f"{' '.join(argv)} failed ({proc.returncode}): {err}")
    return proc.stdout.decode(errors="replace")


def ensure_architecture(guest: Arch, progress: Progress) -> None:
    """Make dpkg/apt know a foreign guest architecture (root: do it; else say how)."""
    if guest.name == host_arch():
        return
    foreign = _output(["dpkg", "--print-foreign-architectures"]).split()
    if guest.name in foreign and _output(["apt-cache", "policy", f"libc6:{guest.name}"]).strip():
        return
    command = f"dpkg --add-architecture {guest.name} && apt-get update"
    if os.geteuid() != 0:
        raise DebianError(
            f"the {guest.name} guest's packages need apt to know {guest.name}; run as root: "
            f"{command}   (or: invoke setup)"
        )
    progress(f"adding {guest.name} to dpkg's architectures for the guest's packages: {command}")
    _output(["dpkg", "--add-architecture", guest.name])
    _output(["apt-get", "update", "-qq"], timeout=APT_TIMEOUT)


def _qualified(name: str, guest: Arch) -> str:
    return name if ":" in name else f"{name}:{guest.name}"


def _bare(name: str) -> str:
    """A package name without its :arch qualifier."""
    return name.split(":")[0]


def current_kernel(guest: Arch) -> str:
    """The image package Debian's kernel metapackage points at (linux-image-6.1.0-N-FLAVOUR)."""
    deps = depends([guest.meta_kernel], guest).get(guest.meta_kernel, [])
    found = [_bare(d) for d in deps if re.fullmatch(r"linux-image-\d.*", _bare(d))]
    if not found:
        raise DebianError(
            f"apt-cache knows no dependency of {guest.meta_kernel}:{guest.name}; "
            "run apt-get update (and invoke setup)"
        )
    return found[0]


def depends(packages: Iterable[str], guest: Arch) -> dict[str, list[str]]:
    """Direct Depends/Pre-Depends of packages (first alternative; virtual: first provider).

    One apt-cache call for all of them (each call reads apt's lists, seconds
    on a busy machine). Keys are bare package names; the names in the lists
    keep apt's ``:arch`` qualifier where apt prints one (a foreign
    architecture's arch-specific packages), so that they download as given;
    architecture-independent packages come without.
    """
    wanted = [_qualified(p, guest) for p in dict.fromkeys(packages)]
    if not wanted:
        return {}
    text = _output(
        [
            "apt-cache",
            "depends",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
            *wanted,
        ]
    )
    result: dict[str, list[str]] = {}
    names: list[str] = []
    want_provider = False
    for line in text.splitlines():
        if line and not line.startswith(" "):
            names = result.setdefault(_bare(line.strip()), [])
            continue
        m = re.match(r"^  \|?(?:Pre)?Depends: (\S+)", line)
        if m:
            name = m.group(1)
            want_provider = name.startswith("<")
            if not want_provider and name not in names:
                names.append(name)
            continue
        if want_provider and line.startswith("    "):
            names.append(line.strip())
            want_provider = False
    return result


class PackageCache:
    """Downloaded .debs and their unpacked trees for one guest architecture."""

    def __init__(self, root: Path, guest: Arch, progress: Progress) -> None:
        self.guest = guest
        self.debs = root / "debs"
        self.trees = root / "pkgs"
        self.progress = progress

    def deb(self, package: str) -> Path | None:
        """The downloaded .deb of a package, if any."""
        found = sorted(self.debs.glob(f"{package}_*_{self.guest.name}.deb")) + sorted(
            self.debs.glob(f"{package}_*_all.deb")
        )
        return found[-1] if found else None

    def version(self, package: str) -> str:
        """The version in the downloaded .deb's file name."""
        deb = self.deb(package)
        if deb is None:
            raise DebianError(f"{package} was not downloaded")
        return deb.name.split("_")[1].replace("%3a", ":")

    def download(self, packages: Iterable[str]) -> None:
        """apt-get download every package not downloaded yet (one apt call).

        Names are given as apt-cache prints them (see `depends`).
        """
        todo = [p for p in dict.fromkeys(packages) if self.deb(_bare(p)) is None]
        if not todo:
            return
        self.debs.mkdir(parents=True, exist_ok=True)
        self.progress(f"apt-get download ({self.guest.name}): {' '.join(map(_bare, todo))}")
        _output(["apt-get", "download", "-q", *todo], timeout=APT_TIMEOUT, cwd=self.debs)
        missing = [p for p in todo if self.deb(_bare(p)) is None]
        if missing:
            raise DebianError(f"apt-get download gave no .deb for: {', '.join(missing)}")

    def unpack(self, package: str, members: Iterable[str] = ()) -> Path:
        """dpkg -x the package (or only the given tar members) into pkgs/<package>/."""
        deb = self.deb(package)
        if deb is None:
            raise DebianError(f"{package} was not downloaded")
        dest = self.trees / package
        stamp = dest / ".unpacked"
        if stamp.is_file() and stamp.read_text() == deb.name:
            return dest
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        wanted = list(members)
        if wanted:  # part of a large package (the kernel): dpkg-deb's tar, filtered
            _extract_members(deb, dest, wanted)
        else:
            _output(["dpkg", "-x", str(deb), str(dest)], timeout=APT_TIMEOUT)
        stamp.write_text(deb.name)
        return dest


def _extract_members(deb: Path, dest: Path, members: list[str]) -> None:
    """dpkg-deb --fsys-tarfile DEB | tar -x MEMBERS, bounded in time."""
    fsys = subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    tar = subprocess.Popen(
        ["tar", "-x", "-C", str(dest), "--wildcards", *members],
        stdin=fsys.stdout,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert fsys.stdout is not None
    fsys.stdout.close()
    try:
        _, err = tar.communicate(timeout=APT_TIMEOUT)
        fsys.wait(timeout=60)
    except subprocess.TimeoutExpired:
        stop(tar)
        stop(fsys)
        raise DebianError(f"unpacking {deb.name} took longer than {APT_TIMEOUT:g}s") from None
    if fsys.returncode != 0 or tar.returncode != 0:
        raise DebianError(f"unpacking {deb.name}: {err.decode(errors='replace').strip()}")


def _shared_objects(tree: Path) -> dict[str, Path]:
    """soname-like file name -> path, for every shared object in an unpacked package."""
    found: dict[str, Path] = {}
    for path in tree.rglob("*.so*"):
        if not re.search(r"\.so(\.\d+)*$", path.name) or not path.exists():
            continue
        real = path.resolve()
        if real.is_file() and elf.is_elf(real):
            found.setdefault(path.name, path)
    return found


@dataclass(frozen=True)
class Resolved:
    """A program's shared libraries, found in downloaded packages."""

    interpreter: Path  # the dynamic loader's file
    interpreter_path: str  # where the program expects it (PT_INTERP)
    libraries: dict[str, Path]  # soname -> file
    packages: dict[str, str]  # package -> version, for everything used


def resolve_libraries(
    cache: PackageCache, package: str, program: str, max_rounds: int = 12
) -> Resolved:
    """Download and unpack the library packages `program` (from `package`) needs.

    Walks the package's Depends, but only below packages that supply a
    library in the program's DT_NEEDED closure, so a large dependency tree
    (fio's ceph and gluster engines) costs only what is loaded.
    """
    cache.download([_qualified(package, cache.guest)])
    root_tree = cache.unpack(package)
    binary = root_tree / program.lstrip("/")
    info = elf.read_info(binary)
    if info.machine != cache.guest.machine:
        raise DebianError(f"{binary} is not a {cache.guest.name} program")
    if info.interpreter is None:
        raise DebianError(f"{binary} is static; nothing to resolve")
    fetched: dict[str, Path] = {package: root_tree}
    expanded = {package}
    frontier = depends([package], cache.guest).get(package, [])
    index = {name: (package, path) for name, path in _shared_objects(root_tree).items()}
    needs: dict[Path, tuple[str, ...]] = {}
    for _ in range(max_rounds):
        todo = [p for p in frontier if _bare(p) not in fetched and _bare(p) not in NOT_LIBRARIES]
        cache.download(todo)
        for p in map(_bare, todo):
            fetched[p] = cache.unpack(p)
            for name, path in _shared_objects(fetched[p]).items():
                index.setdefault(name, (p, path))
        closure, missing = _closure(info.needed, index, needs)
        providers = {index[name][0] for name in closure}
        new = sorted(providers - expanded)
        expanded |= set(new)
        frontier = [
            d
            for deps in depends(new, cache.guest).values()
            for d in deps
            if _bare(d) not in fetched
        ]
        if not [p for p in frontier if _bare(p) not in NOT_LIBRARIES]:
            break
    else:
        raise DebianError(f"{program}: library resolution did not settle")
    loader = Path(info.interpreter).name
    if loader not in index:
        missing.add(loader)
    if missing:
        raise DebianError(
            f"{program} needs {', '.join(sorted(missing))}, found in none of its "
            "dependencies' packages"
        )
    used = {index[name][0] for name in closure} | {index[loader][0], package}
    return Resolved(
        interpreter=index[loader][1],
        interpreter_path=info.interpreter,
        libraries={name: index[name][1] for name in sorted(closure)},
        packages={p: cache.version(p) for p in sorted(used)},
    )


def _closure(
    roots: Iterable[str],
    index: dict[str, tuple[str, Path]],
    needs: dict[Path, tuple[str, ...]],
) -> tuple[set[str], set[str]]:
    """(found, missing) sonames reachable from roots through DT_NEEDED (`needs`: memo)."""
    found: set[str] = set()
    missing: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in found or name in missing:
            continue
        if name not in index:
            missing.add(name)
            continue
        found.add(name)
        path = index[name][1].resolve()
        if path not in needs:
            needs[path] = elf.read_info(path).needed
        todo += needs[path]
    return found, missing
