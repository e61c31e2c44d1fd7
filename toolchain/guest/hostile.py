"""Tools for playing a hostile guest: raw descriptor chains, memory snapshots, process probes.

The device runs in hvisor's privileged root zone and the guest is untrusted,
so the hostile-guest tests write descriptor tables and ring indices verbatim
(no validation) and then check that the device touched nothing it was not
allowed to: a :class:`MemoryWatch` snapshots guest memory around everything a
chain references, and :meth:`RawQueue.post` reports every byte that changed
outside the ring bookkeeping the device legitimately writes (used flags, used
index, the used entries it published).
"""

from __future__ import annotations

import os
import select
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .blk import (
    F_PROTOCOL_FEATURES,
    KNOWN_FEATURES,
    BlkDevice,
    BlkRequest,
)
from .memory import GuestMemory
from .transport import WANTED_PROTOCOL_FEATURES
from .vhost_user import VhostUserFrontend
from .virtq import (
    DESC,
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    SplitVirtqueue,
    UsedElem,
)

__all__ = [
    "VRING_DESC_F_INDIRECT",
    "VRING_DESC_F_NEXT",
    "VRING_DESC_F_WRITE",
    "AlignedRequest",
    "Desc",
    "MemoryWatch",
    "Outcome",
    "Range",
    "RawQueue",
    "cpu_seconds",
    "fd_count",
    "handshake",
    "link",
    "merge",
    "outside",
    "rss_kib",
]

#: A half-open guest-physical byte range [start, end).
Range = tuple[int, int]

U64 = 1 << 64


@dataclass(frozen=True)
class Desc:
    """One split-ring descriptor, written verbatim."""

    addr: int
    len: int
    flags: int = 0
    next: int = 0

    def pack(self) -> bytes:
        """The 16 bytes of the descriptor table entry."""
        return DESC.pack(self.addr % U64, self.len & 0xFFFF_FFFF, self.flags & 0xFFFF, self.next)


def link(
    buffers: Sequence[tuple[int, int, int]], indices: Sequence[int] | None = None
) -> dict[int, Desc]:
    """Chain ``(addr, len, flags)`` buffers through F_NEXT at ``indices`` (default 0, 1, ...).

    ``flags`` are the buffer's own flags (WRITE, INDIRECT, ...); NEXT and the
    ``next`` index are added for every buffer but the last.
    """
    idx = list(range(len(buffers))) if indices is None else list(indices)
    if len(idx) != len(buffers):
        raise ValueError("one index per buffer")
    out: dict[int, Desc] = {}
    for k, (addr, length, flags) in enumerate(buffers):
        last = k == len(buffers) - 1
        out[idx[k]] = Desc(
            addr, length, flags | (0 if last else VRING_DESC_F_NEXT), 0 if last else idx[k + 1]
        )
    return out


# ---- ranges -----------------------------------------------------------------


def merge(ranges: Iterable[Range]) -> list[Range]:
    """Sort and coalesce overlapping or touching ranges; drop empty ones."""
    out: list[Range] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def outside(changes: Iterable[Range], allowed: Iterable[Range]) -> list[Range]:
    """The parts of ``changes`` not covered by ``allowed``."""
    ok = merge(allowed)
    out: list[Range] = []
    for start, end in merge(changes):
        pos = start
        for a, b in ok:
            if b <= pos or a >= end:
                continue
            if a > pos:
                out.append((pos, a))
            pos = max(pos, b)
            if pos >= end:
                break
        if pos < end:
            out.append((pos, end))
    return out


def clip(memory: GuestMemory, ranges: Iterable[Range]) -> list[Range]:
    """Intersect ``ranges`` with guest RAM (one piece per region)."""
    out = []
    for start, end in merge(ranges):
        for r in memory.regions:
            a, b = max(start, r.guest_phys_addr), min(end, r.end)
            if a < b:
                out.append((a, b))
    return out


def _diff(base: int, before: bytes, after: bytes) -> list[Range]:
    """Byte ranges where ``after`` differs from ``before`` (same length)."""
    out: list[Range] = []
    step = 4096
    for off in range(0, len(before), step):
        a, b = before[off : off + step], after[off : off + step]
        if a == b:
            continue
        run = -1
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y and run < 0:
                run = k
            elif x == y and run >= 0:
                out.append((base + off + run, base + off + k))
                run = -1
        if run >= 0:
            out.append((base + off + run, base + off + len(a)))
    return out


class MemoryWatch:
    """A snapshot of parts of guest memory, to find out later what changed."""

    def __init__(self, memory: GuestMemory, windows: Iterable[Range]) -> None:
        self.memory = memory
        self.pieces = [(a, memory.read(a, b - a)) for a, b in clip(memory, windows)]

    @classmethod
    def whole(cls, memory: GuestMemory) -> MemoryWatch:
        """Snapshot every byte of guest RAM (use on small memories)."""
        return cls(memory, [(r.guest_phys_addr, r.end) for r in memory.regions])

    @property
    def covered(self) -> list[Range]:
        """What the snapshot holds."""
        return [(a, a + len(data)) for a, data in self.pieces]

    def changes(self) -> list[Range]:
        """Every byte range that differs from the snapshot now."""
        out: list[Range] = []
        for start, before in self.pieces:
            after = self.memory.read(start, len(before))
            if after != before:
                out.extend(_diff(start, before, after))
        return merge(out)


# ---- raw ring access ----------------------------------------------------------


@dataclass
class Outcome:
    """What the device did with posted chains."""

    used: list[UsedElem]
    #: Changed guest memory outside the ring bookkeeping the device may write.
    changed: list[Range]
    #: What the snapshot covered (for messages).
    watched: list[Range] = field(default_factory=list)

    def unexpected(self, allowed: Iterable[Range] = ()) -> list[str]:
        """Describe every change outside ``allowed`` (empty if none)."""
        return [f"{a:#x}..{b:#x} ({b - a} bytes)" for a, b in outside(self.changed, allowed)]


class RawQueue:
    """Hostile access to ring ``queue`` of a connected :class:`BlkDevice`.

    Descriptors, avail entries and the avail index are written verbatim; the
    driver's bookkeeping (free list, outstanding requests) is bypassed, so do
    not mix with :meth:`BlkDevice.submit` while raw chains are outstanding.
    """

    def __init__(self, dev: BlkDevice, queue: int = 0, margin: int = 64 * 1024) -> None:
        self.dev = dev
        self.queue = queue
        self.margin = margin

    @property
    def q(self) -> SplitVirtqueue:
        """The (current) split virtqueue; it changes on reconnect."""
        return self.dev.queues[self.queue]

    @property
    def num(self) -> int:
        """The ring size the driver chose."""
        return self.q.size

    def write(self, descs: Mapping[int, Desc]) -> None:
        """Write descriptors at their table indices (which must be < num)."""
        for i, d in descs.items():
            self.dev.memory.write(self.q.desc_gpa + 16 * i, d.pack())

    def zero_table(self) -> None:
        """Fill the descriptor table with zero descriptors (len 0, no flags)."""
        self.dev.memory.fill(self.q.desc_gpa, 16 * self.num, 0)

    def ring_areas(self) -> list[Range]:
        """The three ring areas."""
        q = self.q
        return [
            (q.desc_gpa, q.desc_gpa + 16 * q.size),
            (q.avail_gpa, q.avail_gpa + 6 + 2 * q.size),
            (q.used_gpa, q.used_gpa + 6 + 8 * q.size),
        ]

    def bookkeeping(self, old_used: int, new_used: int) -> list[Range]:
        """What the device may write in the rings while publishing old_used..new_used."""
        q = self.q
        out = [(q.used_gpa, q.used_gpa + 4)]  # flags (notification suppression), idx
        out.append((q.used_gpa + 4 + 8 * q.size, q.used_gpa + 6 + 8 * q.size))  # avail_event
        count = (new_used - old_used) & 0xFFFF
        for k in range(min(count, q.size)):
            slot = (old_used + k) % q.size
            out.append((q.used_gpa + 4 + 8 * slot, q.used_gpa + 12 + 8 * slot))
        return out

    def windows(self, descs: Mapping[int, Desc], extra: Iterable[Range] = ()) -> list[Range]:
        """Snapshot windows: every referenced buffer +- margin, the rings, ``extra``."""
        out = [*self.ring_areas(), *extra]
        for d in descs.values():
            start = max(0, d.addr % U64 - self.margin)
            out.append((start, min(U64, d.addr % U64 + d.len + self.margin)))
        return out

    def post(
        self,
        descs: Mapping[int, Desc],
        heads: Sequence[int],
        *,
        avail_idx: int | None = None,
        expect: int | None = None,
        timeout: float | None = None,
        settle: float = 0.2,
        extra: Iterable[Range] = (),
        watch_all: bool = False,
        kick: bool = True,
        until: Callable[[], object] | None = None,
    ) -> Outcome:
        """Write ``descs``, publish ``heads``, kick, and wait for the completions.

        ``avail_idx`` overrides the index published (default: advance by
        ``len(heads)``). ``expect`` completions are waited for (default: one per
        head); with ``expect=0`` the call waits ``settle`` seconds and returns
        whatever arrived, or, with ``until``, only until ``until()`` is true
        (and 50 ms more). The snapshot is taken after the descriptors and
        avail entries are written and before the avail index moves.
        """
        q = self.q
        self.write(descs)
        start = q._avail_idx  # the driver's shadow of avail->idx
        for k, head in enumerate(heads):
            q.set_avail_entry(start + k, head)
        watch = (
            MemoryWatch.whole(self.dev.memory)
            if watch_all
            else MemoryWatch(self.dev.memory, self.windows(descs, extra))
        )
        old_used = q.used_idx
        new_avail = start + len(heads) if avail_idx is None else avail_idx
        q.set_avail_idx(new_avail)
        avail_field = (q.avail_gpa + 2, q.avail_gpa + 4)
        # used_event is the driver's: wait_used() writes it when EVENT_IDX is on.
        used_event = (q.avail_gpa + 4 + 2 * q.size, q.avail_gpa + 6 + 2 * q.size)
        if kick:
            q.kick()
        want = len(heads) if expect is None else expect
        limit = self.dev.timeout if timeout is None else timeout
        if want:
            used = q.wait_used(limit, want)
        elif until is None:
            used = q.wait_used(settle, 1)
        else:
            # Nothing may complete: watch until ``until()`` holds (the device
            # said it needs a reset) or ``settle`` ends, then a little longer.
            deadline = time.monotonic() + settle
            used = q.wait_used(0.02, 1)
            while not until() and time.monotonic() < deadline:
                used += q.wait_used(0.02, 1)
            used += q.wait_used(0.05, 1)
        if want and len(used) < want:
            # Give a misbehaving device the chance to show extra completions.
            used += q.wait_used(0, 1)
        allowed = [*self.bookkeeping(old_used, q.used_idx), avail_field, used_event]
        return Outcome(used, outside(watch.changes(), allowed), watch.covered)


# ---- partial handshakes -------------------------------------------------------


def handshake(fe: VhostUserFrontend, memory: GuestMemory, feature_mask: int = ~0) -> int:
    """Features, protocol features, owner and memory table, but no ring; return the features."""
    offered = fe.get_features()
    if offered & (1 << F_PROTOCOL_FEATURES):
        proto = fe.get_protocol_features() & WANTED_PROTOCOL_FEATURES
        fe.set_protocol_features(proto)
    fe.set_owner()
    features = offered & KNOWN_FEATURES & feature_mask
    fe.set_features(features)
    fe.set_mem_table(memory)
    return features


def wait_call(fd: int, timeout: float) -> bool:
    """Wait up to ``timeout`` for an eventfd to be signalled (and consume it)."""
    readable, _, _ = select.select([fd], [], [], timeout)
    if readable:
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            return False
        return True
    return False


# ---- process probes -----------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def thread_cpu_seconds(pid: int, main: bool = True) -> float:
    """User + system CPU time of ``pid``'s threads; without the main thread if not ``main``."""
    total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        if not main and int(tid) == pid:
            continue
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


def fd_count(pid: int) -> int:
    """Open file descriptors of process ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    """VmRSS of process ``pid`` in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ValueError(f"no VmRSS for {pid}")


def poll_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.005) -> bool:
    """Call ``predicate()`` until it is true or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class AlignedRequest(BlkRequest):
    """A :class:`BlkRequest` whose every buffer starts on an ``ALIGN`` boundary.

    Devices that open the image with O_DIRECT (backend.direct) refuse
    unaligned guest buffers; aligned ones are fine for every device. The guard
    bytes sit right before and after each buffer, as in BlkRequest.
    """

    ALIGN = 4096

    def __init__(
        self, memory: GuestMemory, parts: Sequence[tuple[bytes | int, bool]], **kwargs: Any
    ) -> None:
        super().__init__(memory, parts, align=self.ALIGN, **kwargs)


def u64(value: int) -> bytes:
    """Little-endian u64."""
    return struct.pack("<Q", value % U64)
