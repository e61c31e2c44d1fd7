"""A cpio "newc" writer: the format the Linux kernel unpacks as an initramfs.

Archives can be concatenated (each with its own trailer); the kernel
unpacks them in order, so a cached base archive plus a small per-run one
(the init script and job files) makes one initramfs.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import BinaryIO

TRAILER = "TRAILER!!!"


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


class CpioWriter:
    """Write entries to a newc archive; mtimes are 0 and owners root, for reproducibility."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self._ino = 1
        self._names: set[str] = set()

    def _entry(
        self,
        name: str,
        mode: int,
        data: bytes = b"",
        nlink: int = 1,
        rdev: tuple[int, int] = (0, 0),
    ) -> None:
        name = name.lstrip("/")
        if name in self._names:
            raise ValueError(f"cpio: '{name}' added twice")
        self._names.add(name)
        encoded = name.encode() + b"\0"
        fields = (
            self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0,
        )  # fmt: skip
        header = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
        self.out.write(header + encoded + _pad(len(header) + len(encoded)))
        self.out.write(data + _pad(len(data)))
        self._ino += 1

    def directory(self, name: str, mode: int = 0o755) -> None:
        """A directory (parents must be added first)."""
        self._entry(name, stat.S_IFDIR | mode, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """A regular file with the given bytes."""
        self._entry(name, stat.S_IFREG | mode, data)

    def copy(self, name: str, source: Path, mode: int | None = None) -> None:
        """A regular file with the bytes of `source` (symlinks followed)."""
        real = source.resolve()
        self.file(
            name, real.read_bytes(), mode if mode is not None else real.stat().st_mode & 0o777
        )

    def symlink(self, name: str, target: str) -> None:
        """A symbolic link."""
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        """A character device node."""
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def close(self) -> None:
        """Write the trailer (the stream itself stays open)."""
        self._entry(TRAILER, 0, nlink=1)
