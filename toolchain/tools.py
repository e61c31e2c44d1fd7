"""External programs the toolkit needs, and the command that installs each."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

# program -> Debian package that provides it
DEBIAN_PACKAGES: dict[str, str] = {
    "clang-format-14": "clang-format-14",
    "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
    "qemu-aarch64": "qemu-user",
    "gcc": "gcc",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-system-aarch64": "qemu-system-arm",
    "qemu-storage-daemon": "qemu-system-common",
    "clang-14": "clang-14",
}


class MissingTool(RuntimeError):
    """A program is not installed; the message says how to install it."""


def require(program: str) -> str:
    """Path of program, or MissingTool naming the exact install command."""
    path = shutil.which(program)
    if path is None:
        package = DEBIAN_PACKAGES.get(program, program)
        raise MissingTool(
            f"'{program}' is not installed; install it with: "
            f"sudo apt-get install -y {package}   (or run: invoke setup)"
        )
    return path


def run_filter(argv: Sequence[str], text: str) -> str:
    """Run a program as a text filter (stdin -> stdout); raise on failure."""
    proc = subprocess.run(list(argv), input=text, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout
