"""Install a generated pair into an hvisor-tool tree and build the `hvisor` binary.

`install_and_build` copies generated/<spec>/virtio_blk.{c,h} over the tree's
own device, keeping the originals in PATH/.hvisor-blkgen/ (with a JSON state
file recording every hash), and runs hvisor-tool's own Makefile with the
variables it needs (goal `all`, ARCH, CROSS_COMPILE, CC and LOG given
explicitly). `restore` puts the originals back byte for byte and removes the
backup. Any failure in between (a compiler error, a warning in the pair, a
timeout, Ctrl-C) puts back whatever the two files held before the command,
so the tree is never left half-modified.

No hvisor-tool file is ever copied into this project: the tree is only
read, built, and has the two device files swapped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .proc import Timeout, first_line, run, sha256_bytes, sha256_file

# The two files of the device pair, relative to the tree root.
TREE_C = "tools/virtio/devices/blk/virtio_blk.c"
TREE_H = "tools/virtio/include/virtio_blk.h"
PAIR = {"virtio_blk.c": TREE_C, "virtio_blk.h": TREE_H}

# What makes a directory an hvisor-tool tree (all must exist).
TREE_MARKERS = (
    "tools/Makefile",
    "tools/virtio/virtio.c",
    "tools/virtio/include/virtio.h",
    "tools/virtio/devices/blk",
    "tools/virtio/devices/blk/Makefile",
    TREE_C,
    TREE_H,
)
CJSON = "cJSON/cJSON.c"
CJSON_COMMIT = "324973008ced4ea03d1626a00915d0399ecbd9db"

STATE_DIR = ".hvisor-blkgen"
STATE_FILE = "state.json"
STATE_VERSION = 1
BINARY = "tools/hvisor"

WARNING_RE = re.compile(
    r"^(?P<file>[^\s:]*(?:virtio/devices/blk/virtio_blk\.c|virtio/include/virtio_blk\.h))"
    r":\d+(?::\d+)?: (?:warning|error):.*$",
    re.MULTILINE,
)
ANY_WARNING_RE = re.compile(r"^[^\s:]+:\d+(?::\d+)?: warning:", re.MULTILINE)


class HvisorError(RuntimeError):
    """The tree is not usable, or installing/building/restoring failed."""


@dataclass(frozen=True)
class MakeSettings:
    """How to call hvisor-tool's tools/Makefile."""

    cc: str  # e.g. aarch64-linux-gnu-gcc (from toolchain/targets/rk3588.yaml)
    arch: str = "arm64"
    log: str = "LOG_INFO"
    jobs: int = 1
    timeout: float = 900.0

    @property
    def cross_compile(self) -> str:
        """CROSS_COMPILE derived from CC: aarch64-linux-gnu-gcc -> aarch64-linux-gnu-."""
        name = Path(self.cc).name
        return name[: -len("gcc")] if name.endswith("gcc") else ""

    def argv(self, tree: Path) -> list[str]:
        """The make command, with every variable hvisor-tool's Makefile needs."""
        return [
            "make",
            "-C",
            str(tree / "tools"),
            f"-j{max(1, self.jobs)}",
            f"ARCH={self.arch}",
            f"CROSS_COMPILE={self.cross_compile}",
            f"CC={self.cc}",
            f"LOG={self.log}",
            "all",
        ]


@dataclass(frozen=True)
class TreeInfo:
    """A checked hvisor-tool tree."""

    root: Path
    git: bool  # a git work tree: the uncommitted-changes check applies
    revision: str  # `git describe --always --dirty` of the tree, or ''


@dataclass
class BuildReport:
    """What `install_and_build` did and produced."""

    tree: str
    spec: str
    spec_sha256: str
    binary: str  # copy under build/hvisor/<spec>/
    tree_binary: str  # tools/hvisor in the tree
    size: int
    sha256: str
    compiler: str
    command: str
    log: str
    seconds: float
    pair_warnings: list[str] = field(default_factory=list)
    other_warnings: int = 0
    git: bool = False
    tree_revision: str = ""
    reinstalled: bool = False  # a previous install of ours was replaced
    pair: str = ""  # the directory the pair was installed from


def _git(tree: Path, *args: str) -> subprocess.CompletedProcess[bytes] | None:
    if shutil.which("git") is None:
        return None
    try:
        return run(["git", "-C", str(tree), *args], timeout=30)
    except Timeout:
        return None


def check_tree(tree: Path) -> TreeInfo:
    """HvisorError unless tree is an hvisor-tool tree that can be built."""
    if not tree.is_dir():
        raise HvisorError(f"{tree}: no such directory")
    missing = [m for m in TREE_MARKERS if not (tree / m).exists()]
    if missing:
        raise HvisorError(
            f"{tree} is not an hvisor-tool tree: missing {', '.join(missing)}\n"
            "  pass the root of an hvisor-tool checkout "
            "(git clone https://github.com/syswonder/hvisor-tool)"
        )
    if not (tree / CJSON).is_file():
        raise HvisorError(
            f"{tree}/cJSON/ is empty: it is a git submodule. Run `git submodule update --init` "
            f"in the tree, or fill it from DaveGamble/cJSON at {CJSON_COMMIT}"
        )
    inside = _git(tree, "rev-parse", "--is-inside-work-tree")
    is_git = bool(inside and inside.returncode == 0 and inside.stdout.strip() == b"true")
    revision = ""
    if is_git:
        described = _git(tree, "describe", "--always", "--dirty")
        if described and described.returncode == 0:
            revision = described.stdout.decode().strip()
    return TreeInfo(tree.resolve(), is_git, revision)


def _dirty_pair(tree: Path) -> list[str]:
    """Pair files with uncommitted changes in a git tree (staged or not)."""
    proc = _git(tree, "status", "--porcelain", "--", TREE_C, TREE_H)
    if proc is None or proc.returncode != 0:
        raise HvisorError(f"{tree}: `git status` failed; cannot tell whether the pair is modified")
    return [line[3:] for line in proc.stdout.decode().splitlines() if line.strip()]


def state_path(tree: Path) -> Path:
    """PATH/.hvisor-blkgen/state.json"""
    return tree / STATE_DIR / STATE_FILE


def read_state(tree: Path) -> dict[str, object] | None:
    """Our install record in the tree, or None when nothing of ours is installed."""
    path = state_path(tree)
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HvisorError(
            f"{path}: unreadable install record ({exc}); inspect it by hand"
        ) from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise HvisorError(f"{path}: unknown install record format; inspect it by hand")
    return state


def _write_json_atomic(path: Path, data: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _put(data: bytes, dest: Path) -> None:
    """Replace dest's bytes (fresh mtime, so make rebuilds what depends on it)."""
    tmp = dest.with_name(f".{dest.name}.blkgen-tmp")
    mode = dest.stat().st_mode & 0o7777 if dest.exists() else 0o644
    tmp.write_bytes(data)
    tmp.chmod(mode)
    os.replace(tmp, dest)


def _current(tree: Path) -> dict[str, bytes]:
    return {rel: (tree / rel).read_bytes() for rel in PAIR.values()}


def _foreign_edits(tree: Path, state: dict[str, object]) -> list[str]:
    """Pair files holding neither what we installed nor the original (edited since)."""
    known = [state.get("installed"), state.get("originals")]
    return [
        rel
        for rel in PAIR.values()
        if not any(isinstance(k, dict) and sha256_file(tree / rel) == k.get(rel) for k in known)
    ]


def _force_recompile(tools: Path) -> None:
    """Delete objects built from the pair, so its warnings always show in the log."""
    for obj in (tools / "virtio/devices/blk").glob("*.o"):
        obj.unlink()
    for dep in tools.rglob("*.d"):
        try:
            text = dep.read_text(errors="replace")
        except OSError:
            continue
        if "virtio_blk.h" in text or "virtio_blk.c" in text:
            dep.with_suffix(".o").unlink(missing_ok=True)


def pair_warnings(log: str) -> list[str]:
    """Compiler diagnostics (warnings or errors) that point into the pair's two files."""
    return sorted({m.group(0).strip() for m in WARNING_RE.finditer(log)})


def make_env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "GNUMAKEFLAGS", "CFLAGS", "LDFLAGS"):
        env.pop(var, None)
    env["LC_ALL"] = "C"
    return env


def install_and_build(
    tree: Path,
    pair_dir: Path,
    spec: str,
    spec_sha256: str,
    out_dir: Path,
    settings: MakeSettings,
) -> BuildReport:
    """Install pair_dir's virtio_blk.{c,h} into tree and build tools/hvisor.

    On any failure the two files get back the bytes they had before this call
    (and a fresh backup is removed again); HvisorError says what went wrong.
    """
    info = check_tree(tree)
    tree = info.root
    for name in PAIR:
        if not (pair_dir / name).is_file():
            raise HvisorError(f"{pair_dir / name} is missing; run: invoke gen --spec {spec}")
    if shutil.which(settings.cc) is None:
        raise HvisorError(f"compiler '{settings.cc}' not found; run: invoke setup")
    if shutil.which("make") is None:
        raise HvisorError("'make' not found; install it with: sudo apt-get install -y make")

    state = read_state(tree)
    backup = tree / STATE_DIR
    if state is not None:
        edited = _foreign_edits(tree, state)
        if edited:
            raise HvisorError(
                f"{tree}: {', '.join(edited)} changed since blkgen installed spec "
                f"'{state.get('spec')}'; refusing to overwrite those edits. "
                "Save them elsewhere, then run: invoke hvisor --tree PATH --restore"
            )
    elif info.git:
        dirty = _dirty_pair(tree)
        if dirty:
            raise HvisorError(
                f"{tree} has uncommitted changes to {', '.join(dirty)}; commit or stash them "
                "first (blkgen only replaces a pristine pair or one it installed itself)"
            )

    before = _current(tree)
    fresh = state is None
    previous_state = json.loads(json.dumps(state)) if state is not None else None
    start = time.monotonic()
    log_path = out_dir / "make.log"
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = settings.argv(tree)
    binary = out_dir / "hvisor"
    old_binary = backup / "hvisor.before-build"
    try:
        if fresh:
            (backup / "orig").mkdir(parents=True, exist_ok=True)
            (backup / ".gitignore").write_text("*\n")
            for rel, data in before.items():
                (backup / "orig" / Path(rel).name).write_bytes(data)
            originals = {
                rel: sha256_file(backup / "orig" / Path(rel).name) for rel in PAIR.values()
            }
            for rel in PAIR.values():
                if originals[rel] != sha256_file(tree / rel):
                    raise HvisorError(f"backup of {rel} does not match the original")
            state = {
                "version": STATE_VERSION,
                "originals": originals,
                "backed_up_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        assert state is not None
        new = {rel: (pair_dir / name).read_bytes() for name, rel in PAIR.items()}
        state.update(
            {
                "spec": spec,
                "spec_sha256": spec_sha256,
                "installed": {rel: sha256_bytes(data) for rel, data in new.items()},
                "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
        # The record first: if we die between here and the copy, every file
        # still holds a known version (original or ours) and restore works.
        _write_json_atomic(state_path(tree), state)
        for rel, data in new.items():
            _put(data, tree / rel)

        _force_recompile(tree / "tools")
        if (tree / BINARY).is_file():
            # Kept aside until the build succeeded: a failed build leaves the old one.
            os.replace(tree / BINARY, old_binary)
        try:
            proc = run(cmd, timeout=settings.timeout, env=make_env())
        except Timeout as exc:
            raise HvisorError(f"build timed out: {exc}") from None
        text = (proc.stdout + proc.stderr).decode(errors="replace")
        log_path.write_text(f"$ {shlex.join(cmd)}\n{text}")
        ours = pair_warnings(text)
        if proc.returncode != 0:
            tail = "\n".join(text.strip().splitlines()[-25:])
            raise HvisorError(f"hvisor build failed (make exit {proc.returncode}):\n{tail}")
        if ours:
            raise HvisorError(
                "the pair compiled with diagnostics in hvisor-tool (there must be none):\n"
                + "\n".join(ours)
            )
        built = tree / BINARY
        if not built.is_file():
            raise HvisorError(f"make succeeded but {built} was not produced")
        tmp = out_dir / ".hvisor.tmp"
        shutil.copyfile(built, tmp)
        tmp.chmod(0o755)
        os.replace(tmp, binary)
        old_binary.unlink(missing_ok=True)
    except BaseException:
        for rel, data in before.items():
            _put(data, tree / rel)
        if old_binary.is_file():
            os.replace(old_binary, tree / BINARY)
        if previous_state is None:
            shutil.rmtree(backup, ignore_errors=True)
        else:
            # The previous install of ours is back: so is its record.
            _write_json_atomic(state_path(tree), previous_state)
        raise
    digest = sha256_file(binary)
    report = BuildReport(
        tree=str(tree),
        spec=spec,
        spec_sha256=spec_sha256,
        binary=str(binary),
        tree_binary=str(tree / BINARY),
        size=binary.stat().st_size,
        sha256=digest,
        compiler=first_line([settings.cc, "--version"]),
        command=shlex.join(cmd),
        log=str(log_path),
        seconds=round(time.monotonic() - start, 2),
        pair_warnings=ours,
        other_warnings=len(ANY_WARNING_RE.findall(text)),
        git=info.git,
        tree_revision=info.revision,
        reinstalled=not fresh,
        pair=str(pair_dir),
    )
    _write_json_atomic(out_dir / "hvisor.json", asdict(report))
    return report


@dataclass(frozen=True)
class RestoreReport:
    """What `restore` put back."""

    tree: str
    spec: str
    files: list[str]


def restore(tree: Path) -> RestoreReport:
    """Put the tree's original pair back and remove PATH/.hvisor-blkgen/."""
    info = check_tree(tree)
    tree = info.root
    state = read_state(tree)
    if state is None:
        raise HvisorError(f"{tree}: nothing to restore (no {STATE_DIR}/{STATE_FILE})")
    edited = _foreign_edits(tree, state)
    if edited:
        raise HvisorError(
            f"{tree}: {', '.join(edited)} changed since blkgen installed spec "
            f"'{state.get('spec')}'; refusing to overwrite those edits. The originals are in "
            f"{tree / STATE_DIR / 'orig'}"
        )
    originals = state.get("originals")
    assert isinstance(originals, dict)
    backup = tree / STATE_DIR / "orig"
    for rel in PAIR.values():
        saved = backup / Path(rel).name
        if not saved.is_file() or sha256_file(saved) != originals.get(rel):
            raise HvisorError(f"{saved}: backup missing or corrupted; tree left unchanged")
    for rel in PAIR.values():
        _put((backup / Path(rel).name).read_bytes(), tree / rel)
        if sha256_file(tree / rel) != originals[rel]:
            raise HvisorError(f"{tree / rel}: restored bytes differ from the backup")
    shutil.rmtree(tree / STATE_DIR)
    return RestoreReport(str(tree), str(state.get("spec", "")), list(PAIR.values()))


def load_build_record(out_dir: Path) -> dict[str, object] | None:
    """build/hvisor/<spec>/hvisor.json written by the last successful build, or None."""
    path = out_dir / "hvisor.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else None
