"""Deploy a built binary to a board: over ssh, into a directory, or into an ext4 image.

Every destination goes through the same steps, so a deployment either
completes or leaves the previous binary in place:

1. stage: copy the artifact to a temporary name next to the target
   (`.NAME.blkgen-tmp`), hashing the bytes as they are sent;
2. verify: the staged file's sha256, computed at the destination, must
   match; then mode 0755 and a flush to stable storage;
3. keep the previous binary as `NAME.prev` (a hard link, or a copy where
   links are not possible), replaced atomically; unless the binary there
   already has the same sha256 (a redeployment), which would turn `.prev`
   into a second copy of the live binary and lose the real previous one;
4. install: rename the staged file over `NAME` (one atomic rename), and check
   the installed file's sha256 again;
5. write `NAME.manifest.json` (what was deployed, from which spec and
   toolkit revision, with which compiler);
6. optionally run a restart command; if it fails, a copy of `NAME.prev`
   (never a hard link: `.prev` must survive anything done to the live file)
   and the previous manifest are put back and the deployment fails.

An interrupted copy leaves only the temporary name behind (the next
deployment overwrites it); the final name always holds a complete binary.

Destinations (`parse_dest`):
  ssh://[user@]host[:port]/path   sha256sum/ln/mv over OpenSSH (BatchMode)
  dir:PATH                        a mounted SD card or rootfs directory
  image:ROOTFS.ext4:/path         an unmounted ext4 image, through debugfs
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .proc import CHUNK, Timeout, run, sha256_file, stop

ARTIFACTS = ("hvisor", "vhost-user-blk")
TMP_SUFFIX = ".blkgen-tmp"
MANIFEST_SUFFIX = ".manifest.json"
PREV_SUFFIX = ".prev"

Say = Callable[[str], None]


class FlashError(RuntimeError):
    """A deployment step failed; the message says which and what state was left."""


@dataclass(frozen=True)
class SshOptions:
    """How to reach an ssh destination (invoke config blkgen.flash.*)."""

    identity_file: str = ""
    port: int = 0  # used when the URL has no port; 0: ssh's own default
    strict_host_key_checking: str = "accept-new"  # yes | accept-new | no
    known_hosts_file: str = ""
    connect_timeout: int = 10
    options: tuple[str, ...] = ()  # extra `-o` options

    def argv(self, port: int | None) -> list[str]:
        """ssh options (before the destination)."""
        args = [
            "-T",
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={self.connect_timeout}",
            "-o",
            "ServerAliveInterval=5",
            "-o",
            "ServerAliveCountMax=3",
            "-o",
            f"StrictHostKeyChecking={self.strict_host_key_checking}",
            "-o",
            "LogLevel=ERROR",
        ]
        if self.known_hosts_file:
            args += ["-o", f"UserKnownHostsFile={self.known_hosts_file}"]
        if self.identity_file:
            args += ["-i", self.identity_file, "-o", "IdentitiesOnly=yes"]
        chosen = port or self.port
        if chosen:
            args += ["-p", str(chosen)]
        for option in self.options:
            args += ["-o", option]
        return args


@dataclass(frozen=True)
class Timeouts:
    """Seconds allowed for each kind of step."""

    command: float = 120.0
    transfer: float = 600.0
    restart: float = 120.0


@dataclass(frozen=True)
class Dest:
    """A parsed destination; `path` is the binary's full path there."""

    kind: str  # ssh | dir | image
    path: str
    spec: str  # as given
    host: str = ""
    user: str = ""
    port: int | None = None
    image: str = ""


_SSH_RE = re.compile(
    r"^ssh://(?:(?P<user>[^@/]+)@)?(?P<host>\[[^\]]+\]|[^:/]+)(?::(?P<port>\d+))?(?P<path>/.*)$"
)


def parse_dest(text: str, default_name: str) -> Dest:
    """Parse ssh://[user@]host[:port]/path, dir:PATH or image:ROOTFS.ext4:/path.

    A path ending in `/` (or, for dir:, an existing directory) names the
    directory; the binary keeps its default name there.
    """
    if text.startswith("ssh://"):
        m = _SSH_RE.match(text)
        if not m or m.group("path") in ("", "/"):
            raise FlashError(
                f"bad ssh destination '{text}'; expected ssh://[user@]host[:port]/path"
            )
        path = m.group("path")
        if path.endswith("/"):
            path += default_name
        host = m.group("host").strip("[]")
        port = int(m.group("port")) if m.group("port") else None
        if port is not None and not 1 <= port <= 65535:
            raise FlashError(f"bad ssh destination '{text}': port {port} is not in 1-65535")
        return Dest("ssh", path, text, host=host, user=m.group("user") or "", port=port)
    if text.startswith("dir:"):
        raw = text[len("dir:") :]
        if not raw:
            raise FlashError("dir: needs a path, e.g. dir:/mnt/sd/usr/local/bin")
        path = Path(raw)
        if raw.endswith("/") or path.is_dir():
            path = path / default_name
        return Dest("dir", str(path.absolute()), text)
    if text.startswith("image:"):
        rest = text[len("image:") :]
        image, sep, inner = rest.rpartition(":")
        if not sep or not image or not inner.startswith("/"):
            raise FlashError(
                f"bad image destination '{text}'; expected image:ROOTFS.ext4:/path/in/image"
            )
        if inner.endswith("/"):
            inner += default_name
        if re.search(r"[\s\"'\\]", inner):
            raise FlashError(f"image path '{inner}': spaces and quotes are not supported")
        return Dest("image", inner, text, image=str(Path(image).absolute()))
    raise FlashError(
        f"unknown destination '{text}'; use ssh://[user@]host[:port]/path, dir:PATH "
        "or image:ROOTFS.ext4:/path/in/image"
    )


def artifact_dests(text: str) -> list[Dest]:
    """Where each artifact would be at DEST: one Dest per artifact when DEST names a
    directory, else DEST itself (a path naming a file holds one binary, whatever its kind)."""
    dests = [parse_dest(text, name) for name in ARTIFACTS]
    return dests if len({d.path for d in dests}) == len(dests) else dests[:1]


def names(final: str) -> tuple[str, str, str]:
    """(temporary, previous, manifest) paths for a final path."""
    p = PurePosixPath(final)
    return (
        str(p.with_name(f".{p.name}{TMP_SUFFIX}")),
        str(p.with_name(p.name + PREV_SUFFIX)),
        str(p.with_name(p.name + MANIFEST_SUFFIX)),
    )


class Site(ABC):
    """Where a binary goes; each operation is one step of a deployment."""

    def __init__(self, dest: Dest, timeouts: Timeouts) -> None:
        self.dest = dest
        self.timeouts = timeouts

    @abstractmethod
    def describe(self, op: str, *args: str) -> str:
        """What `op` would do, as a command line where there is one (for --dry-run)."""

    @abstractmethod
    def check(self) -> None:
        """FlashError unless the destination is reachable and its directory exists."""

    @abstractmethod
    def sha256(self, path: str) -> str | None:
        """sha256 of a file at the destination, or None when it does not exist."""

    @abstractmethod
    def upload(self, src: Path, tmp: str) -> tuple[str, int]:
        """Copy src to tmp; (sha256, size) of the bytes sent."""

    @abstractmethod
    def seal(self, tmp: str) -> None:
        """Mode 0755 and flush the staged file to stable storage."""

    @abstractmethod
    def keep_and_install(self, tmp: str, final: str, prev: str, keep: bool = True) -> None:
        """If keep and final exists, make it prev (atomically); then rename tmp over final."""

    @abstractmethod
    def read(self, path: str) -> bytes | None:
        """A small file's bytes, or None when it does not exist."""

    @abstractmethod
    def write(self, path: str, data: bytes) -> None:
        """Replace a small file atomically (mode 0644)."""

    @abstractmethod
    def remove(self, path: str) -> None:
        """Remove a file if it exists."""

    @abstractmethod
    def copy_over(self, src: str, dst: str, tmp: str) -> None:
        """Put a copy of src (a separate file, not a link) at dst atomically (through tmp)."""

    @abstractmethod
    def restart(self, command: str) -> tuple[int, str]:
        """Run the restart command; (exit status, output)."""

    def prepare(self, final: str, manifest_path: str) -> tuple[str | None, bytes | None]:
        """Check the destination; (sha256 of the current binary, its manifest), None if absent."""
        self.check()
        return self.sha256(final), self.read(manifest_path)

    def commit(self, tmp: str, final: str, prev: str, digest: str, keep: bool = True) -> None:
        """Verify the staged copy, seal it, keep .prev (if keep), rename it over final, verify."""
        staged = self.sha256(tmp)
        if staged != digest:
            raise FlashError(f"staged copy {tmp} has sha256 {staged}, expected {digest}")
        self.seal(tmp)
        self.keep_and_install(tmp, final, prev, keep)
        installed = self.sha256(final)
        if installed != digest:
            raise FlashError(f"{final} has sha256 {installed} after the rename, expected {digest}")

    def plan(
        self, source: Path, tmp: str, final: str, prev: str, manifest_path: str, restart: str
    ) -> list[tuple[str, str]]:
        """(what, how) for every step of a deployment, for --dry-run."""
        steps = [
            ("check", (str(PurePosixPath(final).parent),), "check the destination"),
            ("sha256", (final,), "note the current binary's sha256"),
            ("read", (manifest_path,), "keep the current manifest (for a rollback)"),
            ("upload", (tmp,), f"stage {source} as {tmp}"),
            ("sha256", (tmp,), "verify the staged copy's sha256"),
            ("seal", (tmp,), "mode 0755, flush"),
            (
                "keep_and_install",
                (tmp, final, prev),
                f"keep the old binary as {prev} (unless it is this one), install",
            ),
            ("sha256", (final,), "verify the installed binary's sha256"),
            ("write", (manifest_path,), f"write {manifest_path}"),
        ]
        if restart:
            steps.append(("restart", (restart,), "restart (if it fails: roll back to .prev)"))
        return [(what, self.describe(op, *args)) for op, args, what in steps]


# ---------------------------------------------------------------- ssh://


class SshSite(Site):
    """A board reached with OpenSSH; every step is one ssh command."""

    def __init__(self, dest: Dest, timeouts: Timeouts, options: SshOptions) -> None:
        super().__init__(dest, timeouts)
        self.options = options

    def _target(self) -> str:
        return f"{self.dest.user}@{self.dest.host}" if self.dest.user else self.dest.host

    def _failure(self, op: str, code: int, stderr: bytes) -> FlashError:
        """One line for a failed step: the reason first (ssh's own, or the board's), then where.

        The script itself is not repeated (`--dry-run` prints it): it would
        bury the reason. Exit 255 is ssh's own failure (connect, log in).
        """
        lines = [line.strip() for line in stderr.decode(errors="replace").splitlines()]
        reason = next((line for line in reversed(lines) if line), f"exit {code}")
        port = self.dest.port or self.options.port
        where = self._target() + (f":{port}" if port else "")
        step = _SSH_STEPS[op]
        if code != 255:
            return FlashError(f"{reason} (on {where}, {step}: exit {code})")
        hint = next((h for known, h in _SSH_HINTS if known in reason), "")
        return FlashError(f"{reason} (ssh to {where}, {step}){hint}")

    def argv(self, script: str) -> list[str]:
        """The ssh command running script in the remote shell."""
        return ["ssh", *self.options.argv(self.dest.port), self._target(), script]

    def _run(self, op: str, *args: Any, data: bytes | None = None) -> str:
        """Run one step's script (_SSH_SCRIPTS[op]); its stdout, FlashError if it fails."""
        argv = self.argv(_SSH_SCRIPTS[op](*args))
        try:
            proc = run(argv, timeout=self.timeouts.command, input=data)
        except Timeout as exc:
            raise FlashError(f"ssh to {self._target()}: {exc} ({_SSH_STEPS[op]})") from None
        if proc.returncode != 0:
            raise self._failure(op, proc.returncode, proc.stderr)
        return proc.stdout.decode(errors="replace")

    def describe(self, op: str, *args: str) -> str:
        return shlex.join(self.argv(_SSH_SCRIPTS[op](*args)))

    def check(self) -> None:
        parent = str(PurePosixPath(self.dest.path).parent)
        self._run("check", parent)

    def sha256(self, path: str) -> str | None:
        out = self._run("sha256", path).strip()
        if out == "MISSING":
            return None
        digest = out.split()[0] if out else ""
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise FlashError(f"unexpected sha256sum output from {self._target()}: {out!r}")
        return digest

    def upload(self, src: Path, tmp: str) -> tuple[str, int]:
        argv = self.argv(_SSH_SCRIPTS["upload"](tmp))
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        expired = threading.Event()

        def _expire() -> None:
            expired.set()
            stop(proc)

        watchdog = threading.Timer(self.timeouts.transfer, _expire)
        watchdog.start()
        digest, size = "", -1
        try:
            with contextlib.suppress(BrokenPipeError):  # ssh exited: its status says why
                digest, size = _stream(src, proc.stdin)
            # communicate() closes stdin (EOF ends the remote `cat`) and waits.
            _, err = proc.communicate(timeout=self.timeouts.transfer)
        except BaseException:
            stop(proc)
            raise
        finally:
            watchdog.cancel()
        if expired.is_set():
            raise FlashError(f"copy to {self._target()} exceeded {self.timeouts.transfer:g}s")
        if proc.returncode != 0 or size < 0:
            raise self._failure("upload", proc.returncode, err)
        return digest, size

    def seal(self, tmp: str) -> None:
        self._run("seal", tmp)

    # One round trip each instead of one per step: an ssh handshake costs
    # most of a second on a small board.
    def prepare(self, final: str, manifest_path: str) -> tuple[str | None, bytes | None]:
        parent = str(PurePosixPath(final).parent)
        out = self._run("prepare", parent, final, manifest_path)
        first, _, rest = out.partition("\n")
        marker, _, manifest = rest.partition("\n")
        digest = None if first.strip() == "MISSING" else first.split()[0] if first else ""
        if digest is not None and not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise FlashError(f"unexpected sha256sum output from {self._target()}: {first!r}")
        return digest, manifest.encode() if marker == "MANIFEST" else None

    def commit(self, tmp: str, final: str, prev: str, digest: str, keep: bool = True) -> None:
        out = self._run("commit", tmp, final, prev, digest, keep).strip()
        installed = out.split()[0] if out else ""
        if installed != digest:
            raise FlashError(f"{final} has sha256 {installed} after the rename, expected {digest}")

    def plan(
        self, source: Path, tmp: str, final: str, prev: str, manifest_path: str, restart: str
    ) -> list[tuple[str, str]]:
        parent = str(PurePosixPath(final).parent)
        steps = [
            (
                "check the destination, note the current binary's sha256 and manifest",
                self.describe("prepare", parent, final, manifest_path),
            ),
            (f"stage {source} as {tmp}", self.describe("upload", tmp)),
            (
                f"verify the staged sha256, mode 0755, sync, keep the old binary as {prev} "
                "(unless it is this one), "
                "rename into place, verify again",
                self.describe("commit", tmp, final, prev, "SHA256"),
            ),
            (f"write {manifest_path}", self.describe("write", manifest_path)),
        ]
        if restart:
            steps.append(
                ("restart (if it fails: roll back to .prev)", self.describe("restart", restart))
            )
        return steps

    def keep_and_install(self, tmp: str, final: str, prev: str, keep: bool = True) -> None:
        self._run("keep_and_install", tmp, final, prev, keep)

    def read(self, path: str) -> bytes | None:
        argv = self.argv(_SSH_SCRIPTS["read"](path))
        try:
            proc = run(argv, timeout=self.timeouts.command)
        except Timeout as exc:
            raise FlashError(f"ssh to {self._target()}: {exc}") from None
        if proc.returncode == 3:
            return None
        if proc.returncode != 0:
            raise self._failure("read", proc.returncode, proc.stderr)
        return proc.stdout

    def write(self, path: str, data: bytes) -> None:
        self._run("write", path, data=data)

    def remove(self, path: str) -> None:
        self._run("remove", path)

    def copy_over(self, src: str, dst: str, tmp: str) -> None:
        self._run("copy_over", src, dst, tmp)

    def restart(self, command: str) -> tuple[int, str]:
        try:
            proc = run(self.argv(command), timeout=self.timeouts.restart)
        except Timeout as exc:
            return 124, str(exc)
        return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")


def _q(path: str) -> str:
    return shlex.quote(path)


def _ssh_check(d: str) -> str:
    """Fail unless sha256sum exists and d is a writable directory."""
    return (
        f"command -v sha256sum >/dev/null || {{ echo 'sha256sum not found' >&2; exit 1; }}; "
        f"[ -d {_q(d)} ] || {{ echo 'no such directory: {d}' >&2; exit 1; }}; "
        f"[ -w {_q(d)} ] || {{ echo 'directory not writable: {d}' >&2; exit 1; }}"
    )


def _ssh_keep_and_install(t: str, f: str, p: str, keep: bool = True) -> str:
    """.prev by hard link (or copy, e.g. on vfat), replaced atomically; then the rename."""
    install = f"mv -f {_q(t)} {_q(f)}; sync"
    if not keep:
        return install
    staging = _q(p + TMP_SUFFIX)
    return (
        f"if [ -e {_q(f)} ]; then "
        f"ln -f {_q(f)} {staging} 2>/dev/null || cp -p {_q(f)} {staging}; "
        f"mv -f {staging} {_q(p)}; fi; " + install
    )


# What each step was doing, for error messages.
_SSH_STEPS: dict[str, str] = {
    "check": "checking the destination",
    "prepare": "checking the destination",
    "sha256": "reading a sha256",
    "upload": "copying the binary",
    "seal": "sealing the staged copy",
    "commit": "verifying and installing the binary",
    "keep_and_install": "installing the binary",
    "read": "reading the manifest",
    "write": "writing the manifest",
    "remove": "removing a file",
    "copy_over": "putting the previous binary back",
}

# Known ssh failures (exit 255) and what to do about them.
_SSH_HINTS: tuple[tuple[str, str], ...] = (
    (
        "Permission denied",
        "; flash logs in with a key only (ssh BatchMode): set blkgen.flash.ssh_identity_file "
        "or add the key to ssh-agent (README: Board workflow)",
    ),
    (
        "Host key verification failed",
        "; the board's host key is not the known one: see blkgen.flash.ssh_known_hosts_file "
        "and ssh_strict_host_key_checking",
    ),
)

# Remote POSIX sh scripts (coreutils or busybox): one per step.
_SSH_SCRIPTS: dict[str, Callable[..., str]] = {
    "check": lambda d: _ssh_check(d),
    "sha256": lambda p: f"if [ -e {_q(p)} ]; then sha256sum -- {_q(p)}; else echo MISSING; fi",
    "prepare": lambda d, f, m: (
        _ssh_check(d)
        + f"; if [ -e {_q(f)} ]; then sha256sum -- {_q(f)}; else echo MISSING; fi"
        + f"; if [ -f {_q(m)} ]; then echo MANIFEST; cat -- {_q(m)}; else echo NONE; fi"
    ),
    "commit": lambda t, f, p, digest, keep=True: (
        f"set -e; actual=$(sha256sum -- {_q(t)} | cut -d' ' -f1); "
        f'if [ "$actual" != {_q(digest)} ]; then rm -f -- {_q(t)}; '
        f'echo "staged copy has sha256 $actual, expected {digest}" >&2; exit 4; fi; '
        f"chmod 0755 {_q(t)}; sync; "
        + _ssh_keep_and_install(t, f, p, keep)
        + f"; sha256sum -- {_q(f)}"
    ),
    "upload": lambda t: f"umask 022 && cat > {_q(t)}",
    "seal": lambda t: f"chmod 0755 {_q(t)} && sync",
    "keep_and_install": lambda t, f, p, keep=True: (
        "set -e; " + _ssh_keep_and_install(t, f, p, keep)
    ),
    "read": lambda p: f"if [ -f {_q(p)} ]; then cat -- {_q(p)}; else exit 3; fi",
    "write": lambda p: (
        f"umask 022 && cat > {_q(p + TMP_SUFFIX)} && mv -f {_q(p + TMP_SUFFIX)} {_q(p)} && sync"
    ),
    "remove": lambda p: f"rm -f -- {_q(p)} && sync",
    "copy_over": lambda s, d, t: f"set -e; cp -p {_q(s)} {_q(t)}; mv -f {_q(t)} {_q(d)}; sync",
    "restart": lambda c: c,
}


def _stream(src: Path, out: Any) -> tuple[str, int]:
    """Copy src into a binary file object, returning (sha256, size) of what was copied."""
    import hashlib

    digest = hashlib.sha256()
    size = 0
    with src.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
            out.write(block)
            size += len(block)
    out.flush()
    return digest.hexdigest(), size


# ---------------------------------------------------------------- dir:


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _local_restart(command: str, timeout: float) -> tuple[int, str]:
    try:
        proc = run(["sh", "-c", command], timeout=timeout)
    except Timeout as exc:
        return 124, str(exc)
    return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")


class DirSite(Site):
    """A directory on this machine (a mounted SD card or rootfs)."""

    def describe(self, op: str, *args: str) -> str:
        steps: dict[str, Callable[..., str]] = {
            "check": lambda d: f"check that {d} is a writable directory",
            "sha256": lambda p: f"sha256 of {p}",
            "upload": lambda t: f"copy the artifact to {t} (fsync)",
            "seal": lambda t: f"chmod 0755 {t}",
            "keep_and_install": lambda t, f, p: (
                f"if {f} exists: hard-link (or copy) it to {p} atomically; rename {t} -> {f}; "
                "fsync the directory"
            ),
            "read": lambda p: f"read {p}",
            "write": lambda p: f"write {p} atomically (tmp, fsync, rename)",
            "remove": lambda p: f"remove {p}",
            "copy_over": lambda s, d, t: f"copy {s} to {t}, rename {t} -> {d}",
            "restart": lambda c: f"sh -c {shlex.quote(c)}   (on this machine)",
        }
        return steps[op](*args)

    def check(self) -> None:
        parent = Path(self.dest.path).parent
        if not parent.is_dir():
            raise FlashError(f"{parent}: no such directory (is the SD card / rootfs mounted?)")
        if not os.access(parent, os.W_OK):
            raise FlashError(f"{parent}: not writable")

    def sha256(self, path: str) -> str | None:
        p = Path(path)
        return sha256_file(p) if p.is_file() else None

    def upload(self, src: Path, tmp: str) -> tuple[str, int]:
        with open(tmp, "wb") as out:
            digest, size = _stream(src, out)
            os.fsync(out.fileno())
        return digest, size

    def seal(self, tmp: str) -> None:
        os.chmod(tmp, 0o755)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _link_or_copy(self, src: str, dst: str, link: bool = True) -> None:
        """dst becomes src's bytes, atomically (via dst + TMP_SUFFIX); a hard link if link."""
        staging = dst + TMP_SUFFIX
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        if link:
            with contextlib.suppress(OSError):  # e.g. vfat: no hard links
                os.link(src, staging)
        if not os.path.lexists(staging):
            shutil.copy2(src, staging)
            fd = os.open(staging, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(staging, dst)

    def keep_and_install(self, tmp: str, final: str, prev: str, keep: bool = True) -> None:
        if keep and os.path.lexists(final):
            self._link_or_copy(final, prev)
        os.replace(tmp, final)
        _fsync_dir(Path(final).parent)

    def read(self, path: str) -> bytes | None:
        p = Path(path)
        return p.read_bytes() if p.is_file() else None

    def write(self, path: str, data: bytes) -> None:
        staging = path + TMP_SUFFIX
        with open(staging, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(staging, 0o644)
        os.replace(staging, path)
        _fsync_dir(Path(path).parent)

    def remove(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        _fsync_dir(Path(path).parent)

    def copy_over(self, src: str, dst: str, tmp: str) -> None:
        self._link_or_copy(src, dst, link=False)
        _fsync_dir(Path(dst).parent)

    def restart(self, command: str) -> tuple[int, str]:
        return _local_restart(command, self.timeouts.restart)


# ---------------------------------------------------------------- image:

_DEBUGFS_NOISE = re.compile(r"^(debugfs \d[^\n]*|debugfs: .*|Allocated inode: \d+)$")
_DEBUGFS_ENV = {**os.environ, "DEBUGFS_PAGER": "__none__", "PAGER": "cat", "LC_ALL": "C"}


def _debugfs_exe() -> str:
    """debugfs lives in /usr/sbin, which a non-root PATH may lack."""
    exe = shutil.which("debugfs") or "/usr/sbin/debugfs"
    if not Path(exe).exists():
        raise FlashError("debugfs not found; install it with: sudo apt-get install -y e2fsprogs")
    return exe


class ImageSite(Site):
    """An ext4 image, changed with e2fsprogs' debugfs (never mounted).

    debugfs 1.47 has no rename: a rename is `ln` (new name, link count not
    adjusted) then `unlink` (old name, count not adjusted), which together
    move the entry with a correct link count.
    """

    def __init__(self, dest: Dest, timeouts: Timeouts) -> None:
        super().__init__(dest, timeouts)
        self.image = dest.image

    def _argv(
        self, write: bool, request: str | None = None, script: str | None = None
    ) -> list[str]:
        argv = ["debugfs"]
        if write:
            argv.append("-w")
        if request is not None:
            argv += ["-R", request]
        if script is not None:
            argv += ["-f", script]
        return [*argv, self.image]

    def _debugfs(self, commands: list[str], write: bool, tolerate: tuple[str, ...] = ()) -> str:
        """Run debugfs commands; FlashError on any message that is not progress."""
        with tempfile.NamedTemporaryFile("w", suffix=".debugfs", delete=False) as f:
            f.write("\n".join(commands) + "\n")
            script = f.name
        try:
            argv = self._argv(write, script=script)
            argv[0] = _debugfs_exe()
            proc = run(argv, timeout=self.timeouts.command, env=_DEBUGFS_ENV)
        except Timeout as exc:
            raise FlashError(f"debugfs on {self.image}: {exc}") from None
        finally:
            os.unlink(script)
        text = (proc.stdout + proc.stderr).decode(errors="replace")
        problems = [
            line
            for line in text.splitlines()
            if line.strip()
            and not _DEBUGFS_NOISE.match(line.strip())
            and not any(t in line for t in tolerate)
        ]
        if proc.returncode != 0 or problems:
            why = "; ".join(problems) or f"exit {proc.returncode}"
            raise FlashError(
                f"debugfs on {self.image} failed: {why}\n  commands: {' ; '.join(commands)}"
            )
        return text

    def describe(self, op: str, *args: str) -> str:
        def dbg(*commands: str, write: bool = True) -> str:
            return " && ".join(shlex.join(self._argv(write, request=c)) for c in commands)

        steps: dict[str, Callable[..., str]] = {
            "check": lambda d: dbg(f"stat {d}", write=False),
            "sha256": lambda p: dbg(f"dump {p} LOCAL.tmp", write=False) + "  # then sha256",
            "upload": lambda t: (
                "stage locally, then "
                + dbg(
                    f"rm {t}",
                    f"write LOCAL {t}",
                    f"sif {t} mode 0100755",
                    f"sif {t} uid 0",
                    f"sif {t} gid 0",
                )
            ),
            "seal": lambda t: f"fsync {self.image}",
            "keep_and_install": lambda t, f, p: (
                f"debugfs -w -f SCRIPT {shlex.quote(self.image)}  # "
                f"rm {p}; ln {f} {p}; unlink {f}; ln {t} {f}; unlink {t}"
            ),
            "read": lambda p: dbg(f"dump {p} LOCAL", write=False),
            "write": lambda p: (
                f"debugfs -w -f SCRIPT  # write LOCAL {p}{TMP_SUFFIX}; "
                f"rm {p}; ln {p}{TMP_SUFFIX} {p}; unlink {p}{TMP_SUFFIX}"
            ),
            "remove": lambda p: dbg(f"rm {p}"),
            "copy_over": lambda s, d, t: (
                f"dump {s} LOCAL; write LOCAL {t}; rm {d}; ln {t} {d}; unlink {t}"
            ),
            "restart": lambda c: f"sh -c {shlex.quote(c)}   (on this machine)",
        }
        return steps[op](*args)

    def check(self) -> None:
        if not Path(self.image).is_file():
            raise FlashError(f"{self.image}: no such image file")
        parent = str(PurePosixPath(self.dest.path).parent)
        out = self._stat(parent)
        if out is None or "Type: directory" not in out:
            raise FlashError(f"{self.image}: {parent} is not a directory in the image")

    def _stat(self, path: str) -> str | None:
        """debugfs's `stat` of path in the image, or None when it does not exist."""
        try:
            proc = run(
                [_debugfs_exe(), "-R", f"stat {path}", self.image],
                timeout=self.timeouts.command,
                env=_DEBUGFS_ENV,
            )
        except Timeout as exc:
            raise FlashError(f"debugfs on {self.image}: {exc}") from None
        text = (proc.stdout + proc.stderr).decode(errors="replace")
        if "File not found" in text:
            return None
        if "Inode:" in text:
            return text
        raise FlashError(f"debugfs stat {path} on {self.image}: {text.strip()}")

    def exists(self, path: str) -> bool:
        """Whether path exists in the image."""
        return self._stat(path) is not None

    def _dump(self, path: str, local: Path) -> bool:
        if not self.exists(path):
            return False
        self._debugfs([f"dump {path} {local}"], write=False)
        return local.is_file()

    def sha256(self, path: str) -> str | None:
        with tempfile.TemporaryDirectory() as d:
            local = Path(d) / "dump"
            return sha256_file(local) if self._dump(path, local) else None

    def _write_commands(self, local: Path, tmp: str, mode: str) -> list[str]:
        commands = [f"rm {tmp}"] if self.exists(tmp) else []
        return [
            *commands,
            f"write {local} {tmp}",
            f"sif {tmp} mode {mode}",
            f"sif {tmp} uid 0",
            f"sif {tmp} gid 0",
        ]

    def _move_commands(self, src: str, dst: str) -> list[str]:
        commands = [f"rm {dst}"] if self.exists(dst) else []
        return [*commands, f"ln {src} {dst}", f"unlink {src}"]

    def upload(self, src: Path, tmp: str) -> tuple[str, int]:
        with tempfile.TemporaryDirectory() as d:
            local = Path(d) / "artifact"
            with local.open("wb") as out:
                digest, size = _stream(src, out)
            self._debugfs(self._write_commands(local, tmp, "0100755"), write=True)
        return digest, size

    def seal(self, tmp: str) -> None:
        # Mode and owner were set with the write; debugfs closes the image
        # (flushing it) when it exits. Flush the image file itself, too.
        fd = os.open(self.image, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def keep_and_install(self, tmp: str, final: str, prev: str, keep: bool = True) -> None:
        commands: list[str] = []
        if self.exists(final) and not keep:
            commands.append(f"rm {final}")
        elif self.exists(final):
            if self.exists(prev):
                commands.append(f"rm {prev}")
            commands += [f"ln {final} {prev}", f"unlink {final}"]
        commands += [f"ln {tmp} {final}", f"unlink {tmp}"]
        self._debugfs(commands, write=True)

    def read(self, path: str) -> bytes | None:
        with tempfile.TemporaryDirectory() as d:
            local = Path(d) / "dump"
            return local.read_bytes() if self._dump(path, local) else None

    def write(self, path: str, data: bytes) -> None:
        staging = path + TMP_SUFFIX
        with tempfile.TemporaryDirectory() as d:
            local = Path(d) / "data"
            local.write_bytes(data)
            self._debugfs(self._write_commands(local, staging, "0100644"), write=True)
        self._debugfs(self._move_commands(staging, path), write=True)

    def remove(self, path: str) -> None:
        if self.exists(path):
            self._debugfs([f"rm {path}"], write=True)

    def copy_over(self, src: str, dst: str, tmp: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            local = Path(d) / "copy"
            if not self._dump(src, local):
                raise FlashError(f"{self.image}: {src} does not exist")
            self._debugfs(self._write_commands(local, tmp, "0100755"), write=True)
        self._debugfs(self._move_commands(tmp, dst), write=True)

    def restart(self, command: str) -> tuple[int, str]:
        return _local_restart(command, self.timeouts.restart)


def make_site(dest: Dest, timeouts: Timeouts, ssh: SshOptions) -> Site:
    """The Site implementation for a destination."""
    if dest.kind == "ssh":
        return SshSite(dest, timeouts, ssh)
    if dest.kind == "dir":
        return DirSite(dest, timeouts)
    return ImageSite(dest, timeouts)


# ---------------------------------------------------------------- deployment


@dataclass(frozen=True)
class Artifact:
    """A local file to deploy and the facts its manifest records."""

    path: Path
    kind: str  # hvisor | vhost-user-blk
    facts: dict[str, object] = field(default_factory=dict)


@dataclass
class Outcome:
    """What a deployment did."""

    final: str
    sha256: str
    size: int
    previous_sha256: str | None  # what NAME.prev holds (the manifest's previous_sha256)
    manifest: dict[str, object]
    restarted: bool = False
    redeployed: bool = False  # the binary there had the same sha256; .prev was left alone


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def deploy(
    site: Site,
    artifact: Artifact,
    restart: str = "",
    dry_run: bool = False,
    say: Say = print,
) -> Outcome | None:
    """Deploy artifact to site.dest.path (see the module docstring for the steps).

    Returns None for a dry run. FlashError on failure, after putting back
    the previous binary where one had been replaced.
    """
    final = site.dest.path
    tmp, prev, manifest_path = names(final)
    if dry_run:
        say(f"dry run: deploy {artifact.path} to {site.dest.spec}")
        for i, (what, how) in enumerate(
            site.plan(artifact.path, tmp, final, prev, manifest_path, restart), 1
        ):
            say(f"  {i}. {what}\n       {how}")
        return None

    say(f"==> checking {site.dest.spec}")
    old_sha, old_manifest = site.prepare(final, manifest_path)
    say(f"==> staging {artifact.path.name} as {tmp}")
    try:
        digest, size = site.upload(artifact.path, tmp)
        # The same bytes again: making them .prev would lose the real previous binary.
        redeploy = digest == old_sha
        keeping = (
            f"keeping {prev} as it is (same sha256 as {final})" if redeploy else f"keeping {prev}"
        )
        say(f"==> verifying {digest} ({size} bytes), {keeping}, installing {final}")
        site.commit(tmp, final, prev, digest, keep=not redeploy)
        previous = site.sha256(prev) if redeploy else old_sha
    except BaseException:
        with contextlib.suppress(Exception):
            site.remove(tmp)
        raise
    manifest: dict[str, object] = {
        **artifact.facts,
        "artifact": artifact.kind,
        "file": PurePosixPath(final).name,
        "sha256": digest,
        "size": size,
        "previous_sha256": previous,
        "destination": site.dest.spec,
        "deployed_at": _now(),
    }
    site.write(manifest_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    say(f"==> wrote {manifest_path}")
    outcome = Outcome(final, digest, size, previous, manifest, redeployed=redeploy)
    if not restart:
        return outcome
    say(f"==> restart: {restart}")
    code, output = site.restart(restart)
    if output.strip():
        say(output.rstrip())
    if code == 0:
        outcome.restarted = True
        return outcome
    say(f"!!  restart failed (exit {code}); rolling back")
    if redeploy:
        # The binary is the one that was there; only the manifest changed.
        _put_back_manifest(site, manifest_path, old_manifest)
        say(f"==> {final} was already this binary ({old_sha}); previous manifest put back")
    elif old_sha is not None:
        site.copy_over(prev, final, tmp)
        back = site.sha256(final)
        if back != old_sha:
            raise FlashError(f"rollback of {final} failed: sha256 {back}, expected {old_sha}")
        _put_back_manifest(site, manifest_path, old_manifest)
        say(f"==> {final} is the previous binary again ({old_sha})")
        code2, output2 = site.restart(restart)
        again = "succeeded" if code2 == 0 else f"failed too (exit {code2}): {output2.strip()}"
        say(f"==> restart with the previous binary {again}")
    else:
        site.remove(final)
        site.remove(manifest_path)
        say(f"==> there was no previous binary; removed {final}")
    raise FlashError(f"restart command failed (exit {code}); rolled back {final}")


def _put_back_manifest(site: Site, manifest_path: str, old: bytes | None) -> None:
    """Restore the manifest a deployment replaced (remove it if there was none)."""
    if old is not None:
        site.write(manifest_path, old)
    else:
        site.remove(manifest_path)


@dataclass
class Status:
    """What `status` found at a destination."""

    final: str
    manifest: dict[str, object] | None
    sha256: str | None
    prev_sha256: str | None

    @property
    def present(self) -> bool:
        """There is a binary or a manifest."""
        return self.manifest is not None or self.sha256 is not None

    @property
    def matches(self) -> bool:
        """The binary is there and is what the manifest says was deployed."""
        return (
            self.manifest is not None
            and self.sha256 is not None
            and self.manifest.get("sha256") == self.sha256
        )


def status(site: Site) -> Status:
    """Read the manifest and hash the binary at the destination."""
    final = site.dest.path
    _, prev, manifest_path = names(final)
    raw = site.read(manifest_path)
    manifest: dict[str, object] | None = None
    if raw is not None:
        try:
            loaded = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise FlashError(f"{manifest_path}: not valid JSON ({exc})") from None
        manifest = loaded if isinstance(loaded, dict) else None
    return Status(final, manifest, site.sha256(final), site.sha256(prev))


@dataclass(frozen=True)
class Survey:
    """What `flash --status` found at DEST: one Status per artifact looked for there."""

    dest: str
    found: tuple[Status, ...]

    @property
    def problem(self) -> str | None:
        """Why the status check fails (exit 1), or None.

        A binary without a manifest was not deployed by blkgen: it fails the
        check only when it is the one binary asked about. Looking at a
        directory, the check fails when a blkgen artifact there differs from
        its manifest, or when there is none.
        """
        differ = [st.final for st in self.found if st.manifest is not None and not st.matches]
        if len(self.found) == 1 and not self.found[0].matches:
            return f"{self.found[0].final} does not match a blkgen manifest"
        if differ:
            return f"{', '.join(differ)}: not what the manifest says was deployed"
        if not any(st.manifest is not None for st in self.found):
            looked = ", ".join(names(st.final)[2] for st in self.found)
            return f"no blkgen artifact at {self.dest} (none of {looked} exists)"
        return None


def survey(dest: str, sites: list[Site]) -> Survey:
    """The status of each site (the artifacts DEST can hold, see `artifact_dests`)."""
    return Survey(dest, tuple(status(site) for site in sites))


def format_survey(sv: Survey) -> str:
    """Human-readable report: each artifact found, and the ones that are not there."""
    if len(sv.found) == 1:
        return format_status(sv.found[0])
    blocks = [
        format_status(st) if st.present else f"absent:    {st.final} (no binary, no manifest)"
        for st in sv.found
    ]
    return "\n\n".join(blocks)


def format_status(st: Status) -> str:
    """Human-readable status report."""
    lines = [f"binary:    {st.final}"]
    if st.manifest is None:
        lines.append("manifest:  none (not deployed by blkgen)")
    else:
        for key in sorted(st.manifest):
            lines.append(f"  {key + ':':20} {st.manifest[key]}")
    if st.sha256 is None:
        lines.append("sha256:    binary missing")
    else:
        verdict = "matches the manifest" if st.matches else "DIFFERS from the manifest"
        lines.append(f"sha256:    {st.sha256} ({verdict})")
    lines.append(f"previous:  {st.prev_sha256 or 'none'}")
    return "\n".join(lines)


# ---------------------------------------------------------------- facts


def git_revision(root: Path) -> str:
    """`git describe --always --dirty` of the toolkit, or 'unknown'."""
    try:
        proc = run(["git", "-C", str(root), "describe", "--always", "--dirty"], timeout=30)
    except (OSError, Timeout):
        return "unknown"
    return proc.stdout.decode().strip() if proc.returncode == 0 else "unknown"
