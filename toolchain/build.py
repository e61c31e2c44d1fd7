"""Compile a generated device plus the standalone runtime into one binary."""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .flash import git_revision
from .targets import WARNINGS, Target
from .tools import require

RUNTIME_DIR = Path(__file__).parent / "runtime"
BINARY = "vhost-user-blk"
#: The checkout's root: paths under it are recorded relative to it in the
#: binary (__FILE__ in log lines, debug info), so the same commit built with
#: the same compiler gives the same bytes in any folder.
SOURCE_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BuildResult:
    """Where a build put its binary and whether it had to compile."""

    binary: Path
    rebuilt: bool


class BuildError(RuntimeError):
    """The compiler failed; the message carries its output and command."""


def sources(generated: Path) -> list[Path]:
    """The device pair's .c plus every runtime .c, in a stable order."""
    return [generated / "virtio_blk.c", *sorted(RUNTIME_DIR.glob("*.c"))]


def headers(generated: Path) -> list[Path]:
    """Headers the build depends on (for the up-to-date check)."""
    return [generated / "virtio_blk.h", *sorted(RUNTIME_DIR.glob("*.h"))]


def version(target: Target, generated: Path) -> str:
    """What `vhost-user-blk --version` prints: spec, its model hash, toolkit
    revision, target. The same commit gives the same text in any folder."""
    manifest = generated / "manifest.json"
    spec = json.loads(manifest.read_text()) if manifest.is_file() else {}
    return (
        f"spec {spec.get('spec', 'unknown')} (sha256 {spec.get('sha256', 'unknown')}), "
        f"toolkit {git_revision(SOURCE_ROOT)}, target {target.name}"
    )


def compile_command(
    target: Target, generated: Path, out: Path, extra_cflags: tuple[str, ...] = ()
) -> list[str]:
    """The one compiler invocation that builds the binary."""
    cc = require(target.cc)
    return [
        cc,
        *target.cflags,
        *WARNINGS,
        *extra_cflags,
        f'-DBLKGEN_VERSION="{version(target, generated)}"',
        f"-ffile-prefix-map={SOURCE_ROOT}=.",
        f"-I{generated}",
        f"-I{RUNTIME_DIR}",
        *(str(s) for s in sources(generated)),
        "-o",
        str(out),
        *target.ldflags,
    ]


def build(
    target: Target, generated: Path, out_dir: Path, extra_cflags: tuple[str, ...] = ()
) -> BuildResult:
    """Build generated/<spec> for target into out_dir (skipped if up to date)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / BINARY
    cmd = compile_command(target, generated, binary, extra_cflags)
    return compile_cached(cmd, sources(generated) + headers(generated), binary)


def compile_cached(cmd: list[str], inputs: list[Path], binary: Path) -> BuildResult:
    """Run cmd to make binary unless the command and every input are unchanged.

    The command goes to build.cmd and the compiler's output to build.log,
    next to the binary.
    """
    out_dir = binary.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(shlex.join(cmd).encode())
    for path in inputs:
        digest.update(path.read_bytes())
    stamp = out_dir / ".stamp"
    if binary.is_file() and stamp.is_file() and stamp.read_text() == digest.hexdigest():
        return BuildResult(binary, rebuilt=False)
    (out_dir / "build.cmd").write_text(shlex.join(cmd) + "\n")
    # From the root: the compile directory is recorded too (debug info).
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=SOURCE_ROOT)
    (out_dir / "build.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        stamp.unlink(missing_ok=True)
        raise BuildError(
            f"build failed for {out_dir}:\n{proc.stderr.strip()}\ncommand: {shlex.join(cmd)}"
        )
    stamp.write_text(digest.hexdigest())
    return BuildResult(binary, rebuilt=True)
