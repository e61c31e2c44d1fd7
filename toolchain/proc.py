"""Running external programs with a bound on time, and hashing files."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

CHUNK = 1 << 16


class Timeout(RuntimeError):
    """A program ran longer than allowed; it and its children were killed."""


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """The hex sha256 of data."""
    return hashlib.sha256(data).hexdigest()


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str], grace: float = 3.0) -> None:
    """Stop a process started with start_new_session=True, and its children.

    SIGTERM to the process group whose id is the process's own PID, then
    SIGKILL if it is still there after `grace` seconds.
    """
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait(timeout=grace)


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv to completion, output captured; Timeout (after killing it) if too slow.

    The program gets its own process group, so a timeout also stops
    whatever it started (make's compilers, ssh's children).
    """
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        proc.communicate(timeout=5)
        raise Timeout(f"{argv[0]} did not finish within {timeout:g}s and was stopped") from None
    except BaseException:
        stop(proc)
        raise
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


def first_line(argv: Sequence[str], timeout: float = 10.0) -> str:
    """The first line a program prints (e.g. `cc --version`), or '' if it fails."""
    try:
        proc = run(argv, timeout=timeout)
    except (OSError, Timeout):
        return ""
    if proc.returncode != 0:
        return ""
    lines = proc.stdout.decode(errors="replace").splitlines()
    return lines[0].strip() if lines else ""
