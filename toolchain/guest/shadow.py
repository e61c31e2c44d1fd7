"""Expected disk contents, updated from completed requests."""

from __future__ import annotations

import struct

from .blk import (
    DISCARD_SEG,
    SECTOR_SIZE,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
    Completion,
)


class ShadowMismatch(AssertionError):
    """Data read from the device differs from the shadow."""


class ShadowDisk:
    """Byte-exact model of the disk image.

    Bytes whose value is not determined (after DISCARD) are tracked as
    unknown and ignored by read checks.
    """

    def __init__(self, size: int, initial: bytes | None = None) -> None:
        if initial is not None and len(initial) != size:
            raise ValueError("initial contents must be exactly size bytes")
        self.size = size
        self.data = bytearray(initial if initial is not None else bytes(size))
        self.known = bytearray(b"\x01") * size

    @classmethod
    def from_file(cls, path: str) -> ShadowDisk:
        """Shadow of an existing image file."""
        with open(path, "rb") as f:
            content = f.read()
        return cls(len(content), content)

    def write(self, offset: int, data: bytes) -> None:
        """Record ``data`` written at byte ``offset``."""
        self._check_range(offset, len(data))
        self.data[offset : offset + len(data)] = data
        self.known[offset : offset + len(data)] = b"\x01" * len(data)

    def forget(self, offset: int, n: int) -> None:
        """Mark ``n`` bytes at ``offset`` as undetermined."""
        self._check_range(offset, n)
        self.known[offset : offset + n] = bytes(n)

    def expected(self, offset: int, n: int) -> bytes:
        """The shadow's bytes (unknown bytes read as their last known value)."""
        self._check_range(offset, n)
        return bytes(self.data[offset : offset + n])

    def check_read(self, offset: int, got: bytes) -> None:
        """Raise ShadowMismatch if ``got`` differs from the shadow at a known byte."""
        self._check_range(offset, len(got))
        want = self.data[offset : offset + len(got)]
        if got == want:
            return
        for k, (a, b) in enumerate(zip(got, want, strict=True)):
            if a != b and self.known[offset + k]:
                raise ShadowMismatch(f"byte {offset + k:#x}: read {a:#04x}, expected {b:#04x}")

    def observe(self, c: Completion) -> None:
        """Apply a completed request: successful writes update, reads are checked."""
        req = c.request
        if c.status != VIRTIO_BLK_S_OK or req.type is None:
            return
        if req.type == VIRTIO_BLK_T_OUT:
            self.write(req.sector * SECTOR_SIZE, req.payload)
        elif req.type == VIRTIO_BLK_T_IN:
            self.check_read(req.sector * SECTOR_SIZE, c.data)
        elif req.type in (VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_T_DISCARD):
            for sector, count, _flags in struct.iter_unpack(DISCARD_SEG.format, req.payload):
                if req.type == VIRTIO_BLK_T_WRITE_ZEROES:
                    self.write(sector * SECTOR_SIZE, bytes(count * SECTOR_SIZE))
                else:
                    self.forget(sector * SECTOR_SIZE, count * SECTOR_SIZE)

    def _check_range(self, offset: int, n: int) -> None:
        if offset < 0 or n < 0 or offset + n > self.size:
            raise ValueError(f"range {offset:#x}+{n:#x} outside {self.size:#x}-byte disk")
