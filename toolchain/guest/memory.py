"""Guest RAM shared with a vhost-user backend.

Guest memory is one or more memfd-backed regions, each mapped MAP_SHARED in
this process.  The backend maps the same file descriptors after
VHOST_USER_SET_MEM_TABLE, so every byte written here is visible to it and
vice versa.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Self

#: Offset added to a guest-physical address to form the frontend "user address"
#: that SET_MEM_TABLE and SET_VRING_ADDR speak in.
UADDR_OFFSET = 0x7F00_0000_0000

DEFAULT_GPA = 0x1000_0000
DEFAULT_SIZE = 64 * 1024 * 1024


class GuestMemoryError(Exception):
    """Raised for accesses outside guest RAM or allocator exhaustion."""


@dataclass
class MemoryRegion:
    """One contiguous piece of guest RAM backed by its own memfd."""

    guest_phys_addr: int
    size: int
    fd: int
    mm: mmap.mmap
    userspace_addr: int
    mmap_offset: int = 0

    @property
    def end(self) -> int:
        """First guest-physical address past this region."""
        return self.guest_phys_addr + self.size

    def contains(self, gpa: int) -> bool:
        """Whether ``gpa`` lies inside this region."""
        return self.guest_phys_addr <= gpa < self.end


@dataclass
class _FreeList:
    """First-fit allocator over one region's address range."""

    holes: list[tuple[int, int]] = field(default_factory=list)  # (start, end)

    def take(self, size: int, align: int) -> int | None:
        for i, (start, end) in enumerate(self.holes):
            base = (start + align - 1) & ~(align - 1)
            if base + size <= end:
                pieces = []
                if base > start:
                    pieces.append((start, base))
                if base + size < end:
                    pieces.append((base + size, end))
                self.holes[i : i + 1] = pieces
                return base
        return None

    def give(self, start: int, end: int) -> None:
        self.holes.append((start, end))
        self.holes.sort()
        merged: list[tuple[int, int]] = []
        for s, e in self.holes:
            if merged and merged[-1][1] == s:
                merged[-1] = (merged[-1][0], e)
            else:
                merged.append((s, e))
        self.holes = merged


#: memfd_secret(2) on x86_64 and aarch64 (the guest layer runs on the host).
_NR_MEMFD_SECRET = 447


def _memfd_secret() -> int:
    """A memfd_secret file descriptor; GuestMemoryError with the reason if there is none."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(_NR_MEMFD_SECRET, 0x80000)  # O_CLOEXEC
    if fd < 0:
        err = ctypes.get_errno()
        raise GuestMemoryError(
            f"memfd_secret is unavailable here ({os.strerror(err)}; Linux >= 5.14, "
            "secretmem enabled)"
        )
    return int(fd)


class GuestMemory:
    """Guest RAM made of memfd regions, with a small first-fit allocator.

    ``regions`` is a sequence of ``(guest_phys_addr, size)``; by default one
    64 MiB region at GPA 0x1000_0000.  Use :meth:`with_gap` for several
    regions separated by unmapped guest-physical space.
    """

    def __init__(
        self, regions: Sequence[tuple[int, int]] | None = None, *, unpinnable: bool = False
    ) -> None:
        """``unpinnable``: back the regions with memfd_secret, memory the kernel
        cannot pin for a device (O_DIRECT into it fails with EFAULT), as
        hvisor's zone memory in the root zone (hvisor-api.md section 14)."""
        layout = list(regions) if regions else [(DEFAULT_GPA, DEFAULT_SIZE)]
        layout.sort()
        for (a, sa), (b, _) in pairwise(layout):
            if a + sa > b:
                raise GuestMemoryError(f"regions overlap at {b:#x}")
        self.regions: list[MemoryRegion] = []
        # Alignment the device requires of data buffers and their lengths
        # (an O_DIRECT backend needs its block size); 1 = none.
        self.io_align = 1
        self._free: list[_FreeList] = []
        self._allocs: dict[int, tuple[int, int, int]] = {}  # gpa -> (region, start, end)
        for n, (gpa, size) in enumerate(layout):
            if size <= 0 or size % mmap.PAGESIZE or gpa % mmap.PAGESIZE:
                raise GuestMemoryError("region base and size must be page aligned")
            fd = (
                _memfd_secret() if unpinnable else os.memfd_create(f"guest-ram-{n}", os.MFD_CLOEXEC)
            )
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self.regions.append(MemoryRegion(gpa, size, fd, mm, gpa + UADDR_OFFSET))
            self._free.append(_FreeList([(gpa, gpa + size)]))

    @classmethod
    def with_gap(
        cls,
        count: int = 2,
        size: int = 16 * 1024 * 1024,
        gap: int = 0x10_0000,
        base: int = DEFAULT_GPA,
    ) -> GuestMemory:
        """Build ``count`` regions of ``size`` bytes separated by ``gap`` unmapped bytes."""
        return cls([(base + i * (size + gap), size) for i in range(count)])

    # -- address translation -------------------------------------------------

    def region_of(self, gpa: int) -> MemoryRegion:
        """Return the region holding ``gpa``."""
        for r in self.regions:
            if r.contains(gpa):
                return r
        raise GuestMemoryError(f"GPA {gpa:#x} is not guest RAM")

    def gpa_to_uaddr(self, gpa: int) -> int:
        """Translate a guest-physical address into the frontend user address."""
        r = self.region_of(gpa)
        return r.userspace_addr + (gpa - r.guest_phys_addr)

    def _spans(self, gpa: int, n: int) -> Iterator[tuple[MemoryRegion, int, int]]:
        """Yield (region, offset, length) pieces covering [gpa, gpa+n)."""
        while n > 0:
            r = self.region_of(gpa)
            off = gpa - r.guest_phys_addr
            take = min(n, r.size - off)
            yield r, off, take
            gpa += take
            n -= take

    # -- access --------------------------------------------------------------

    def read(self, gpa: int, n: int) -> bytes:
        """Read ``n`` bytes at ``gpa`` (may cross into an adjacent region)."""
        return b"".join(bytes(r.mm[o : o + k]) for r, o, k in self._spans(gpa, n))

    def write(self, gpa: int, data: bytes) -> None:
        """Write ``data`` at ``gpa`` (may cross into an adjacent region)."""
        pos = 0
        for r, o, k in self._spans(gpa, len(data)):
            r.mm[o : o + k] = data[pos : pos + k]
            pos += k

    def fill(self, gpa: int, n: int, byte: int) -> None:
        """Set ``n`` bytes at ``gpa`` to ``byte``."""
        self.write(gpa, bytes([byte]) * n)

    def read_u16(self, gpa: int) -> int:
        """Read a little-endian u16."""
        return int.from_bytes(self.read(gpa, 2), "little")

    def write_u16(self, gpa: int, value: int) -> None:
        """Write a little-endian u16."""
        self.write(gpa, (value & 0xFFFF).to_bytes(2, "little"))

    # -- allocation ----------------------------------------------------------

    def alloc(self, size: int, align: int = 16, region: int | None = None) -> int:
        """Allocate ``size`` bytes aligned to ``align``; return the GPA.

        ``region`` restricts the allocation to one region (by index).
        """
        if size <= 0 or align <= 0 or align & (align - 1):
            raise GuestMemoryError(f"bad alloc size={size} align={align}")
        indices = [region] if region is not None else range(len(self.regions))
        for i in indices:
            gpa = self._free[i].take(size, align)
            if gpa is not None:
                self._allocs[gpa] = (i, gpa, gpa + size)
                return gpa
        raise GuestMemoryError(f"out of guest memory for {size} bytes")

    def free(self, gpa: int) -> None:
        """Release an allocation returned by :meth:`alloc`."""
        try:
            i, start, end = self._allocs.pop(gpa)
        except KeyError:
            raise GuestMemoryError(f"free of unallocated GPA {gpa:#x}") from None
        self._free[i].give(start, end)

    def reset(self) -> None:
        """Forget every allocation (contents are left as they are)."""
        self._allocs.clear()
        self._free = [_FreeList([(r.guest_phys_addr, r.end)]) for r in self.regions]

    def close(self) -> None:
        """Unmap and close every region."""
        for r in self.regions:
            r.mm.close()
            os.close(r.fd)
        self.regions = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
