"""hvisor-tool's own daemon, built off the board with the /dev/hvisor stand-in.

The user's checkout is never changed: its ``tools/``, ``include/`` and
``cJSON/`` are copied into ``build/hvisor-sim/<variant>/<arch>/src/``, a
spec's pair is put over the copy's (or the tree's own pair is kept:
``upstream``), and hvisor-tool's own Makefile builds ``hvisor`` there with
the stand-in linked in by wrapping (toolchain/bridge/wrap.c +
toolchain/runtime/hvisor_dev.c):

    make -C tools ARCH=... CROSS_COMPILE=... CC=... LOG=LOG_INFO all \\
        LDFLAGS="-lpthread -static -Wl,--wrap=open,... wrap.o hvisor_dev.o"

``arm64`` builds with the rk3588 target's cross compiler and runs under
qemu-aarch64; ``x86_64`` builds with the host's gcc and runs natively.
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import hvisor
from ..proc import Timeout, run

HERE = Path(__file__).parent
RUNTIME = HERE.parent / "runtime"
STANDIN_SOURCES = (HERE / "wrap.c", RUNTIME / "hvisor_dev.c")
STANDIN_HEADERS = (RUNTIME / "hvisor_dev.h",)
WRAPPED = ("open", "ioctl", "mmap", "close", "openlog", "syslog")
#: What is copied from the tree: the daemon's sources and nothing else.
COPIED = ("tools", "include", "cJSON")
UPSTREAM = "upstream"


@dataclass(frozen=True)
class Arch:
    """How to build and run the daemon for one architecture."""

    name: str  # hvisor-tool's ARCH
    cc: str
    cross_compile: str
    runner: tuple[str, ...]


ARCHES = {
    "arm64": Arch("arm64", "aarch64-linux-gnu-gcc", "aarch64-linux-gnu-", ("qemu-aarch64",)),
    "x86_64": Arch("x86_64", "gcc", "", ()),
}
#: The project's targets and the daemon build that stands for each.
ARCH_OF_TARGET = {"rk3588": "arm64", "host": "x86_64"}


class DaemonError(RuntimeError):
    """The tree cannot be built with the stand-in (message says why and what to do)."""


@dataclass(frozen=True)
class Daemon:
    """A built daemon and how to run it."""

    variant: str  # a spec name, or "upstream" (the tree's own pair)
    arch: Arch
    binary: Path
    revision: str
    log: Path


def _copy_tree(tree: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    ignore = shutil.ignore_patterns("*.o", "*.d", "*.d.*", "hvisor", ".git")
    for part in COPIED:
        shutil.copytree(tree / part, dest / part, ignore=ignore, symlinks=True)


def _digest(tree: Path, pair_dir: Path | None, arch: Arch) -> str:
    h = hashlib.sha256(arch.name.encode())
    files = sorted(p for part in COPIED for p in (tree / part).rglob("*") if p.is_file())
    for p in [*files, *STANDIN_SOURCES, *STANDIN_HEADERS]:
        if p.suffix in {".o", ".d"} or p.name == "hvisor":
            continue
        h.update(str(p).encode())
        h.update(p.read_bytes())
    if pair_dir is not None:
        for name in hvisor.PAIR:
            h.update((pair_dir / name).read_bytes())
    return h.hexdigest()


def build(
    tree: Path,
    out_root: Path,
    variant: str,
    pair_dir: Path | None,
    arch_name: str,
    jobs: int = 2,
    timeout: float = 600.0,
) -> Daemon:
    """Build the daemon for ``variant`` (a spec's pair in ``pair_dir``, or upstream)."""
    try:
        info = hvisor.check_tree(tree)
    except hvisor.HvisorError as e:
        raise DaemonError(str(e)) from None
    arch = ARCHES[arch_name]
    if shutil.which(arch.cc) is None:
        raise DaemonError(f"compiler '{arch.cc}' not found; run: invoke setup")
    for tool in arch.runner:
        if shutil.which(tool) is None:
            raise DaemonError(f"'{tool}' not found; run: invoke setup")
    out = out_root / variant / arch.name
    binary = out / "hvisor"
    stamp = out / ".stamp"
    digest = _digest(info.root, pair_dir, arch)
    log = out / "make.log"
    if binary.is_file() and stamp.is_file() and stamp.read_text() == digest:
        return Daemon(variant, arch, binary, info.revision, log)

    src = out / "src"
    _copy_tree(info.root, src)
    if pair_dir is not None:
        for name, rel in hvisor.PAIR.items():
            shutil.copyfile(pair_dir / name, src / rel)
    objects = []
    for source in STANDIN_SOURCES:
        obj = out / f"{source.stem}.o"
        cmd = [arch.cc, "-std=gnu17", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{RUNTIME}",
               "-c", str(source), "-o", str(obj)]  # fmt: skip
        proc = run(cmd, timeout=timeout)
        if proc.returncode != 0:
            raise DaemonError(f"stand-in build failed:\n{proc.stderr.decode(errors='replace')}")
        objects.append(str(obj))
    wrap = ",".join(f"--wrap={s}" for s in WRAPPED)
    ldflags = f"-lpthread -static -Wl,{wrap} {' '.join(objects)}"
    cmd = [
        "make", "-C", str(src / "tools"), f"-j{jobs}", f"ARCH={arch.name}",
        f"CROSS_COMPILE={arch.cross_compile}", f"CC={arch.cc}", "LOG=LOG_INFO",
        f"LDFLAGS={ldflags}", "all",
    ]  # fmt: skip
    try:
        proc = run(cmd, timeout=timeout, env=hvisor.make_env())
    except Timeout as e:
        raise DaemonError(f"hvisor build timed out: {e}") from None
    text = (proc.stdout + proc.stderr).decode(errors="replace")
    log.write_text(f"$ {shlex.join(cmd)}\n{text}")
    built = src / "tools" / "hvisor"
    if proc.returncode != 0 or not built.is_file():
        tail = "\n".join(text.strip().splitlines()[-20:])
        raise DaemonError(f"hvisor build failed (make exit {proc.returncode}); see {log}:\n{tail}")
    ours = hvisor.pair_warnings(text) if pair_dir is not None else []
    if ours:
        raise DaemonError("the pair compiled with diagnostics in hvisor-tool:\n" + "\n".join(ours))
    shutil.copyfile(built, binary)
    binary.chmod(0o755)
    stamp.write_text(digest)
    return Daemon(variant, arch, binary, info.revision, log)
