"""virtio-blk conformance cases: descriptor chains and what the device must do with them.

Each :class:`Case` builds one request (any layout, good or malformed) in
guest memory with a :class:`Builder` and returns the :class:`Expect` the
device request rules give for it (virtio 1.2; docs/conformance.md lists the
rules and the sections behind them). :func:`run_case` posts the chain
through :class:`~toolchain.guest.hostile.RawQueue` on any transport and
compares what happened with the expectation, byte for byte:

- a request fault completes with the status the rules name, written into the
  chain's last device-writable byte, with the used length the rules give,
  and nothing else in guest memory changes;
- a chain without any device-writable byte completes with used length 0 and
  changes nothing;
- a structural fault completes nothing (not the chain, nor any after it),
  changes nothing, and the device tells the driver it needs a reset
  (:meth:`BlkDevice.wait_needs_reset`); a reset recovers.

The case tables are plain data, shared by the device suite
(tests/test_conformance.py, every spec x target x transport) and by the
guest self-test against qemu-storage-daemon (tests/guest_selftest/), which
shows where QEMU's reference backend and the rules part ways.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from itertools import pairwise

from .blk import (
    ID_BYTES,
    POISON,
    SECTOR_SIZE,
    VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_RING_F_INDIRECT_DESC,
    BlkDevice,
    BlkRequest,
)
from .hostile import (
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    AlignedRequest,
    Desc,
    Range,
    RawQueue,
    link,
)
from .shadow import ShadowDisk
from .transport import NeedsReset
from .virtq import DESC

__all__ = [
    "CASES",
    "INDIRECT_FAULTS",
    "INDIRECT_LAYOUTS",
    "LAYOUTS",
    "LIMITS",
    "REQUEST_FAULTS",
    "STRUCTURAL_FAULTS",
    "Builder",
    "Case",
    "Expect",
    "Kind",
    "Limits",
    "Piece",
    "Result",
    "Skip",
    "check_device_works",
    "run_case",
]

R = 0
W = VRING_DESC_F_WRITE
IND = VRING_DESC_F_INDIRECT
U64 = 1 << 64
#: Where the cases read and write (a few KiB each), away from sector 0.
SECTOR = 8
#: Sector of the "the device still works" round trip.
WORK_SECTOR = 4096


class Skip(Exception):
    """The case does not apply to this device; the message says why."""


# ---- what the device offers and what was negotiated ---------------------------------


@dataclass(frozen=True)
class Limits:
    """What a case may assume about the device, read from it (transport-neutral).

    ``seg_max`` / ``size_max`` are None unless the feature was negotiated;
    ``config_seg_max`` / ``config_size_max`` are the config values whatever
    was negotiated (0 when the device does not offer the feature).
    """

    num: int
    capacity: int
    seg_max: int | None
    size_max: int | None
    config_seg_max: int
    config_size_max: int
    indirect: bool
    read_only: bool
    flush: bool
    #: The 20 bytes GET_ID must return, or None to check only where it writes.
    serial: bytes | None = None

    @classmethod
    def of(cls, dev: BlkDevice, queue: int = 0, serial: str | bytes | None = None) -> Limits:
        """Read the config space and the negotiated features of a connected ``dev``."""
        cfg = dev.config()
        offered = dev.offered_features
        if isinstance(serial, str):
            serial = serial.encode()
        return cls(
            num=dev.queues[queue].size,
            capacity=cfg.capacity,
            seg_max=cfg.seg_max if dev.has_feature(VIRTIO_BLK_F_SEG_MAX) else None,
            size_max=cfg.size_max if dev.has_feature(VIRTIO_BLK_F_SIZE_MAX) else None,
            config_seg_max=cfg.seg_max if offered >> VIRTIO_BLK_F_SEG_MAX & 1 else 0,
            config_size_max=cfg.size_max if offered >> VIRTIO_BLK_F_SIZE_MAX & 1 else 0,
            indirect=dev.has_feature(VIRTIO_RING_F_INDIRECT_DESC),
            read_only=bool(offered >> VIRTIO_BLK_F_RO & 1),  # section 5.2.6.2: "if offered"
            flush=dev.has_feature(VIRTIO_BLK_F_FLUSH),
            serial=None if serial is None else serial[:ID_BYTES].ljust(ID_BYTES, b"\0"),
        )

    @property
    def segments(self) -> int:
        """Most data segments a direct request may carry: seg_max, and the ring's room."""
        room = self.num - 2  # header and status take a descriptor each
        return room if self.seg_max is None else min(self.seg_max, room)


# ---- expectations -----------------------------------------------------------------------


class Kind(StrEnum):
    """What the rules say happens to a chain."""

    COMPLETED = "completed"  # a used entry (with or without a status)
    BROKEN = "broken"  # no used entry, the driver is told, a reset recovers


@dataclass(frozen=True)
class Expect:
    """The outcome the rules give for one case."""

    kind: Kind
    #: The status byte's value and address; None: no status (used length 0).
    status: int | None = None
    status_at: int | None = None
    #: As the tables give it: 1 + the data bytes written. run_case() resolves it
    #: against the chain (virtio 1.2 2.7.8): the status byte counts only when no
    #: unwritten device-writable byte precedes it.
    used_len: int = 0
    #: Data bytes the device writes (besides the status byte): (gpa, bytes),
    #: or (gpa, length) where only the place is known (a GET_ID of an unknown serial).
    data: tuple[tuple[int, bytes | int], ...] = ()
    #: What the disk holds afterwards: (byte offset, bytes) of a successful write.
    disk: tuple[tuple[int, bytes], ...] = ()
    #: The rule, for messages.
    rule: str = ""

    def summary(self) -> str:
        """One line: what must happen."""
        if self.kind is Kind.BROKEN:
            return "no completion; the driver is told it needs a reset"
        if self.status is None:
            return "completed, used len 0, nothing written"
        return f"completed, status {_status_name(self.status)}, used len {self.used_len}"

    def writes(self) -> list[Range]:
        """Every byte the device may change (data and status)."""
        out = [(gpa, gpa + (v if isinstance(v, int) else len(v))) for gpa, v in self.data]
        if self.status_at is not None:
            out.append((self.status_at, self.status_at + 1))
        return out


def _status_name(status: int) -> str:
    names = {VIRTIO_BLK_S_OK: "OK", VIRTIO_BLK_S_IOERR: "IOERR", VIRTIO_BLK_S_UNSUPP: "UNSUPP"}
    return names.get(status, str(status))


def _byte_name(value: int | None) -> str:
    """A status byte as read back: a status name, or untouched (still the poison)."""
    if value is None:
        return "none"
    return "untouched" if value == POISON else _status_name(value)


def served(
    status_at: int,
    used_len: int,
    data: Sequence[tuple[int, bytes | int]] = (),
    disk: Sequence[tuple[int, bytes]] = (),
    rule: str = "",
) -> Expect:
    """Completed with VIRTIO_BLK_S_OK."""
    return Expect(
        Kind.COMPLETED, VIRTIO_BLK_S_OK, status_at, used_len, tuple(data), tuple(disk), rule
    )


def failed(status_at: int, status: int = VIRTIO_BLK_S_IOERR, rule: str = "") -> Expect:
    """Completed with ``status`` in the last writable byte, nothing else written (used
    length 1, or 0 behind unwritten writable bytes: see Expect.used_len)."""
    return Expect(Kind.COMPLETED, status, status_at, 1, rule=rule)


def silent(rule: str = "") -> Expect:
    """Completed with used length 0 and nothing written (no device-writable byte)."""
    return Expect(Kind.COMPLETED, rule=rule)


def broken(rule: str = "") -> Expect:
    """The queue is broken: nothing completed, the driver told."""
    return Expect(Kind.BROKEN, rule=rule)


# ---- building chains ----------------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """A buffer in guest memory (or an address range that is not RAM)."""

    gpa: int
    len: int

    def at(self, offset: int) -> int:
        """Address of byte ``offset`` (negative: from the end)."""
        return self.gpa + (offset if offset >= 0 else self.len + offset)

    @property
    def last(self) -> int:
        """Address of the last byte."""
        return self.gpa + self.len - 1


#: One descriptor of a chain: a piece (or raw (addr, len)) and its flags.
Entry = tuple[Piece | tuple[int, int], int]


def _addr_len(p: Piece | tuple[int, int]) -> tuple[int, int]:
    return (p.gpa, p.len) if isinstance(p, Piece) else p


class Builder:
    """Lays out one case: guarded buffers, descriptors at table indices, avail heads."""

    def __init__(self, dev: BlkDevice, limits: Limits, shadow: ShadowDisk) -> None:
        self.dev = dev
        self.memory = dev.memory
        self.limits = limits
        self.shadow = shadow
        self.descs: dict[int, Desc] = {}
        self.heads: list[int] = []
        #: avail->idx to publish (absolute), or None for one per head.
        self.avail_idx: int | None = None
        self._next = 0
        self.requests: list[BlkRequest] = []
        #: Everything the case references, for the memory snapshot.
        self.windows: list[Range] = []
        r = self.memory.regions
        self.windows += [(x.guest_phys_addr, x.guest_phys_addr + 65536) for x in r]
        self.windows += [(x.end - 65536, x.end) for x in r]

    # -- buffers ----------------------------------------------------------------------------

    def _piece(self, content: bytes | int, writable: bool, region: int | None) -> Piece:
        req = AlignedRequest(self.memory, [(content, writable)], region=region)
        self.requests.append(req)
        (seg,) = req.segments
        self.windows.append((seg.alloc_gpa, seg.gpa + seg.length + 64))
        return Piece(seg.gpa, seg.length)

    def readable(self, data: bytes, region: int | None = None) -> Piece:
        """A buffer holding ``data`` that the device must not change."""
        return self._piece(data, False, region)

    def writable(self, n: int, region: int | None = None) -> Piece:
        """``n`` poisoned bytes the device may write (where the rules allow)."""
        return self._piece(n, True, region)

    @staticmethod
    def header(type_: int, sector: int = 0, ioprio: int = 0) -> bytes:
        """The 16-byte request header."""
        return BlkRequest.header(type_, sector % U64, ioprio)

    def hdr(self, type_: int, sector: int = 0, ioprio: int = 0) -> Piece:
        """A readable buffer holding the header."""
        return self.readable(self.header(type_, sector, ioprio))

    @staticmethod
    def payload(n: int) -> bytes:
        """Random bytes to write."""
        return os.urandom(n)

    def table(self, entries: Sequence[Entry]) -> Piece:
        """An indirect table of ``entries`` linked 0, 1, ... through F_NEXT."""
        descs = link([(*_addr_len(p), f) for p, f in entries])
        return self.raw_table(descs, len(entries))

    def raw_table(self, descs: dict[int, Desc], size: int) -> Piece:
        """An indirect table of ``size`` entries, ``descs`` verbatim (the rest zero)."""
        body = bytearray(16 * size)
        for i, d in descs.items():
            body[16 * i : 16 * i + 16] = d.pack()
        return self.readable(bytes(body))

    def outside(self, kind: str, length: int) -> Piece:
        """An address range of ``length`` bytes that is not (entirely) guest RAM.

        ``below-ram``, ``past-the-end``, ``in-the-gap`` (needs two regions),
        ``straddling-the-end``, ``spanning-the-gap``, ``wrapping-2-64``.
        """
        regions = self.memory.regions
        first, last = regions[0], regions[-1]
        if kind == "below-ram":
            return Piece(0x1000, length)
        if kind == "past-the-end":
            return Piece(last.end + 0x10_0000, length)
        if kind == "straddling-the-end":
            return Piece(last.end - max(1, length // 2), max(2, length))
        if kind == "wrapping-2-64":
            return Piece(U64 - max(1, length // 2), max(2, length))
        if len(regions) < 2 or regions[1].guest_phys_addr == first.end:
            raise Skip(f"'{kind}' needs guest RAM with a gap between two regions")
        if kind == "in-the-gap":
            return Piece(first.end + 0x1000, length)
        assert kind == "spanning-the-gap", kind
        return Piece(
            first.end - max(1, length // 2),
            regions[1].guest_phys_addr - first.end + max(2, length),
        )

    # -- descriptors --------------------------------------------------------------------------

    def reserve(self, n: int) -> list[int]:
        """``n`` unused descriptor indices."""
        if self._next + n > self.limits.num:
            raise Skip(f"a {self.limits.num}-entry ring cannot hold {self._next + n} descriptors")
        out = list(range(self._next, self._next + n))
        self._next += n
        return out

    def chain(self, *entries: Entry, publish: bool = True) -> int:
        """Link ``entries`` into a direct chain at fresh indices; return (and publish) its head."""
        idx = self.reserve(len(entries))
        self.descs.update(link([(*_addr_len(p), f) for p, f in entries], idx))
        if publish:
            self.heads.append(idx[0])
        return idx[0]

    def then_a_good_chain(self) -> None:
        """Publish a well-formed GET_ID after the case's chain: it must not complete either."""
        if self._next + 3 > self.limits.num:
            return
        self.chain(
            (self.hdr(VIRTIO_BLK_T_GET_ID), R), (self.writable(ID_BYTES), W), (self.writable(1), W)
        )

    def writable_bytes(self) -> int:
        """Device-writable bytes of the first published chain, indirect table included."""
        table, idx, total = self.descs, self.heads[0], 0
        for _ in range(2 * self.limits.num + 2):  # cases never loop when they complete
            d = table.get(idx)
            if d is None:
                break
            if d.flags & IND:
                raw = self.memory.read(d.addr, d.len)
                table = {i: Desc(*DESC.unpack_from(raw, 16 * i)) for i in range(d.len // 16)}
                idx = 0
                continue
            if d.flags & W:
                total += d.len
            if not d.flags & VRING_DESC_F_NEXT:
                break
            idx = d.next
        return total

    # -- expectations -------------------------------------------------------------------------

    def expect_read(self, sector: int, spans: Sequence[Range], status_at: int) -> Expect:
        """IN served: the disk's bytes spread over ``spans`` (in chain order)."""
        total = sum(b - a for a, b in spans)
        want = self.shadow.expected(sector * SECTOR_SIZE, total)
        data, pos = [], 0
        for a, b in spans:
            data.append((a, want[pos : pos + b - a]))
            pos += b - a
        return served(status_at, total + 1, data, rule="IN: used len = 1 + data length")

    def expect_write(self, sector: int, data: bytes, status_at: int) -> Expect:
        """OUT served (IOERR on a read-only device, section 5.2.6.2)."""
        if self.limits.read_only:
            return failed(status_at, rule="write on a read-only device: IOERR")
        return served(status_at, 1, disk=[(sector * SECTOR_SIZE, data)], rule="OUT: used len 1")

    def expect_get_id(self, spans: Sequence[Range], status_at: int) -> Expect:
        """GET_ID served: min(20, data length) bytes of the serial, in chain order."""
        total = sum(b - a for a, b in spans)
        n = min(ID_BYTES, total)
        data: list[tuple[int, bytes | int]] = []
        pos = 0
        for a, b in spans:
            k = min(b - a, n - pos)
            if k <= 0:
                break
            serial = self.limits.serial
            data.append((a, k if serial is None else serial[pos : pos + k]))
            pos += k
        return served(status_at, n + 1, data, rule="GET_ID: used len = 1 + min(20, data length)")

    # -- clean-up ---------------------------------------------------------------------------

    def guard_errors(self) -> list[str]:
        """Guard bytes (and readable buffers) the device changed."""
        return [e for r in self.requests for e in r.check_guards()]

    def free(self) -> None:
        """Release the case's guest memory."""
        for r in self.requests:
            r.free()
        self.requests = []


def span(p: Piece, start: int = 0, end: int | None = None) -> Range:
    """Bytes ``start..end`` of a piece (default all; negative ``end`` from its end)."""
    stop = p.len if end is None else (end if end >= 0 else p.len + end)
    return (p.gpa + start, p.gpa + stop)


# ---- cases ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One chain and its expected outcome.

    ``needs`` names what the device must have negotiated (``indirect``,
    ``flush``, ``seg_max``, ``size_max``, ``read_only``, ``writable``), else
    the case is skipped; ``refuse`` holds feature bits the driver must not
    accept for it (the test connects with that feature mask).
    """

    name: str
    section: str
    build: Callable[[Builder], Expect] = field(repr=False)
    needs: frozenset[str] = frozenset()
    refuse: int = 0

    def applies(self, limits: Limits) -> str | None:
        """Why the case cannot run on a device with ``limits`` (None if it can)."""
        have = {
            "indirect": limits.indirect,
            "flush": limits.flush,
            "seg_max": limits.seg_max is not None,
            "size_max": limits.size_max is not None,
            "read_only": limits.read_only,
            "writable": not limits.read_only,
        }
        for need in sorted(self.needs):
            if not have[need]:
                return f"needs {need.replace('_', ' ')} (not negotiated)"
        return None


def _case(
    table: dict[str, Case],
    name: str,
    section: str,
    needs: Sequence[str] = (),
    refuse: int = 0,
) -> Callable[[Callable[[Builder], Expect]], Callable[[Builder], Expect]]:
    def add(fn: Callable[[Builder], Expect]) -> Callable[[Builder], Expect]:
        if name in table:
            raise ValueError(f"case {name} twice")
        table[name] = Case(name, section, fn, frozenset(needs), refuse)
        return fn

    return add


def _read(b: Builder, entries_after_header: Sequence[Entry], sector: int = SECTOR) -> int:
    return b.chain((b.hdr(VIRTIO_BLK_T_IN, sector), R), *entries_after_header)


# ---- legal layouts (section 2.7.4.1: the device MUST NOT assume a layout) ---------------

LAYOUTS: dict[str, Case] = {}
FRAMING = "virtio 1.2 §2.7.4.1, §5.2.6"


@_case(LAYOUTS, "read-header-split-8+8", FRAMING)
def _(b: Builder) -> Expect:
    h = b.header(VIRTIO_BLK_T_IN, SECTOR)
    d, s = b.writable(4096), b.writable(1)
    b.chain((b.readable(h[:8]), R), (b.readable(h[8:]), R), (d, W), (s, W))
    return b.expect_read(SECTOR, [span(d)], s.gpa)


@_case(LAYOUTS, "read-header-split-1+15", FRAMING)
def _(b: Builder) -> Expect:
    h = b.header(VIRTIO_BLK_T_IN, SECTOR)
    d, s = b.writable(4096), b.writable(1)
    b.chain((b.readable(h[:1]), R), (b.readable(h[1:]), R), (d, W), (s, W))
    return b.expect_read(SECTOR, [span(d)], s.gpa)


@_case(LAYOUTS, "write-header-split-8+8", FRAMING)
def _(b: Builder) -> Expect:
    h, data = b.header(VIRTIO_BLK_T_OUT, SECTOR), b.payload(4096)
    s = b.writable(1)
    b.chain((b.readable(h[:8]), R), (b.readable(h[8:]), R), (b.readable(data), R), (s, W))
    return b.expect_write(SECTOR, data, s.gpa)


@_case(LAYOUTS, "write-header-merged-with-data", FRAMING)
def _(b: Builder) -> Expect:
    data = b.payload(4096)
    s = b.writable(1)
    b.chain((b.readable(b.header(VIRTIO_BLK_T_OUT, SECTOR) + data), R), (s, W))
    return b.expect_write(SECTOR, data, s.gpa)


@_case(LAYOUTS, "write-header-split-4+12-merged-with-data", FRAMING)
def _(b: Builder) -> Expect:
    h, data = b.header(VIRTIO_BLK_T_OUT, SECTOR), b.payload(2048)
    s = b.writable(1)
    b.chain(
        (b.readable(h[:4]), R),
        (b.readable(h[4:] + data[:1000]), R),
        (b.readable(data[1000:]), R),
        (s, W),
    )
    return b.expect_write(SECTOR, data, s.gpa)


@_case(LAYOUTS, "read-status-at-the-tail-of-the-data-buffer", FRAMING)
def _(b: Builder) -> Expect:
    ds = b.writable(4096 + 1)
    _read(b, [(ds, W)])
    return b.expect_read(SECTOR, [span(ds, 0, -1)], ds.last)


@_case(LAYOUTS, "read-status-at-the-tail-of-the-second-data-buffer", FRAMING)
def _(b: Builder) -> Expect:
    d1, d2s = b.writable(2048), b.writable(2048 + 1)
    _read(b, [(d1, W), (d2s, W)])
    return b.expect_read(SECTOR, [span(d1), span(d2s, 0, -1)], d2s.last)


@_case(LAYOUTS, "read-split-header-then-one-writable-buffer", FRAMING)
def _(b: Builder) -> Expect:
    h = b.header(VIRTIO_BLK_T_IN, SECTOR)
    ds = b.writable(8192 + 1)
    b.chain((b.readable(h[:8]), R), (b.readable(h[8:]), R), (ds, W))
    return b.expect_read(SECTOR, [span(ds, 0, -1)], ds.last)


@_case(LAYOUTS, "read-32-descriptors-of-512-bytes", FRAMING)
def _(b: Builder) -> Expect:
    n = min(32, b.limits.segments)
    ds = [b.writable(512) for _ in range(n)]
    s = b.writable(1)
    _read(b, [*((d, W) for d in ds), (s, W)])
    return b.expect_read(SECTOR, [span(d) for d in ds], s.gpa)


@_case(LAYOUTS, "write-32-descriptors-of-512-bytes", FRAMING)
def _(b: Builder) -> Expect:
    n = min(32, b.limits.segments)
    data = b.payload(512 * n)
    s = b.writable(1)
    parts = [(b.readable(data[512 * k : 512 * (k + 1)]), R) for k in range(n)]
    b.chain((b.hdr(VIRTIO_BLK_T_OUT, SECTOR), R), *parts, (s, W))
    return b.expect_write(SECTOR, data, s.gpa)


@_case(LAYOUTS, "read-pieces-smaller-than-a-sector", FRAMING)
def _(b: Builder) -> Expect:
    ds = [b.writable(n) for n in (300, 212, 1, 511)]
    s = b.writable(1)
    _read(b, [*((d, W) for d in ds), (s, W)])
    return b.expect_read(SECTOR, [span(d) for d in ds], s.gpa)


@_case(LAYOUTS, "write-pieces-smaller-than-a-sector", FRAMING)
def _(b: Builder) -> Expect:
    data = b.payload(1024)
    s = b.writable(1)
    cuts = [0, 7, 500, 1000, 1024]
    parts = [(b.readable(data[x:y]), R) for x, y in pairwise(cuts)]
    b.chain((b.hdr(VIRTIO_BLK_T_OUT, SECTOR), R), *parts, (s, W))
    return b.expect_write(SECTOR, data, s.gpa)


def _zeros(b: Builder) -> list[tuple[int, int]]:
    """Zero-length descriptors with addresses that are not RAM (never to be translated)."""
    return [(U64 - 1, 0), (0, 0), (b.outside("past-the-end", 0).gpa, 0)]


@_case(LAYOUTS, "read-zero-length-descriptors-everywhere", "virtio 1.2 §2.7.4.1, §2.7.5")
def _(b: Builder) -> Expect:
    z = _zeros(b)
    h = b.header(VIRTIO_BLK_T_IN, SECTOR)
    d, s = b.writable(2048), b.writable(1)
    b.chain(
        (z[0], R),
        (b.readable(h[:8]), R),
        (z[1], R),
        (b.readable(h[8:]), R),
        (z[2], R),
        (z[0], W),
        (d, W),
        (z[1], W),
        (s, W),
        (z[2], W),
    )
    return b.expect_read(SECTOR, [span(d)], s.gpa)


@_case(LAYOUTS, "write-zero-length-descriptors-everywhere", "virtio 1.2 §2.7.4.1, §2.7.5")
def _(b: Builder) -> Expect:
    z = _zeros(b)
    data = b.payload(1024)
    s = b.writable(1)
    b.chain(
        (z[2], W),
        (b.hdr(VIRTIO_BLK_T_OUT, SECTOR), R),
        (z[0], R),
        (b.readable(data[:512]), R),
        (z[1], W),
        (b.readable(data[512:]), R),
        (z[2], R),
        (s, W),
        (z[0], R),
    )
    return b.expect_write(SECTOR, data, s.gpa)


@_case(LAYOUTS, "read-zero-length-readable-after-writable-is-ignored", "virtio 1.2 §2.7.4.2")
def _(b: Builder) -> Expect:
    d, s = b.writable(512), b.writable(1)
    _read(b, [(d, W), ((0, 0), R), (s, W)])
    return b.expect_read(SECTOR, [span(d)], s.gpa)


@_case(LAYOUTS, "read-zero-length-writable-after-the-status", FRAMING)
def _(b: Builder) -> Expect:
    d, s = b.writable(512), b.writable(1)
    _read(b, [(d, W), (s, W), ((U64 - 1, 0), W)])
    return b.expect_read(SECTOR, [span(d)], s.gpa)


@_case(LAYOUTS, "read-the-last-sectors-of-the-disk", "virtio 1.2 §5.2.6.1")
def _(b: Builder) -> Expect:
    sector = b.limits.capacity - 8
    d, s = b.writable(4096), b.writable(1)
    _read(b, [(d, W), (s, W)], sector)
    return b.expect_read(sector, [span(d)], s.gpa)


@_case(LAYOUTS, "read-of-no-data", "virtio 1.2 §5.2.6.1 (0 is a multiple of 512)")
def _(b: Builder) -> Expect:
    s = b.writable(1)
    _read(b, [(s, W)])
    return served(s.gpa, 1, rule="IN of 0 bytes: nothing to read, OK")


@_case(LAYOUTS, "write-of-no-data", "virtio 1.2 §5.2.6.1 (0 is a multiple of 512)")
def _(b: Builder) -> Expect:
    s = b.writable(1)
    b.chain((b.hdr(VIRTIO_BLK_T_OUT, SECTOR), R), (s, W))
    return b.expect_write(SECTOR, b"", s.gpa)


@_case(LAYOUTS, "read-with-the-reserved-field-set", "virtio 1.2 §5.2.6 (reserved, was ioprio)")
def _(b: Builder) -> Expect:
    d, s = b.writable(1024), b.writable(1)
    b.chain((b.hdr(VIRTIO_BLK_T_IN, SECTOR, ioprio=0xFFFF_FFFF), R), (d, W), (s, W))
    return b.expect_read(SECTOR, [span(d)], s.gpa)


@_case(LAYOUTS, "flush", "virtio 1.2 §5.2.6", needs=["flush"])
def _(b: Builder) -> Expect:
    s = b.writable(1)
    b.chain((b.hdr(VIRTIO_BLK_T_FLUSH), R), (s, W))
    return served(s.gpa, 1, rule="FLUSH: used len 1")


@_case(LAYOUTS, "flush-header-split-and-zero-length-data", FRAMING, needs=["flush"])
def _(b: Builder) -> Expect:
    h = b.header(VIRTIO_BLK_T_FLUSH)
    s = b.writable(1)
    b.chain((b.readable(h[:8]), R), (b.readable(h[8:]), R), ((0, 0), W), (s, W))
    return served(s.gpa, 1, rule="FLUSH: used len 1")


@_case(LAYOUTS, "get-id", "virtio 1.2 §5.2.6")
def _(b: Builder) -> Expect:
    d, s = b.writable(ID_BYTES), b.writable(1)
    b.chain((b.hdr(VIRTIO_BLK_T_GET_ID), R), (d, W), (s, W))
    return b.expect_get_id([span(d)], s.gpa)


@_case(LAYOUTS, "get-id-status-at-the-tail-of-the-data", FRAMING)
def _(b: Builder) -> Expect:
    ds = b.writable(ID_BYTES + 1)
    b.chain((b.hdr(VIRTIO_BLK_T_GET_ID), R), (ds, W))
    return b.expect_get_id([span(ds, 0, -1)], ds.last)


@_case(LAYOUTS, "get-id-data-split-7+13", FRAMING)
def _(b: Builder) -> Expect:
    d1, d2, s = b.writable(7), b.writable(13), b.writable(1)
    b.chain((b.hdr(VIRTIO_BLK_T_GET_ID), R), (d1, W), (d2, W), (s, W))
    return b.expect_get_id([span(d1), span(d2)], s.gpa)


@_case(LAYOUTS, "get-id-into-8-bytes", "virtio 1.2 §5.2.6 (rules: min(20, data length))")
def _(b: Builder) -> Expect:
    d, s = b.writable(8), b.writable(1)
    b.chain((b.hdr(VIRTIO_BLK_T_GET_ID), R), (d, W), (s, W))
    return b.expect_get_id([span(d)], s.gpa)


@_case(LAYOUTS, "get-id-into-32-bytes", "virtio 1.2 §5.2.6 (rules: min(20, data length))")
def _(b: Builder) -> Expect:
    d, s = b.writable(32), b.writable(1)
    b.chain((b.hdr(VIRTIO_BLK_T_GET_ID), R), (d, W), (s, W))
    return b.expect_get_id([span(d)], s.gpa)


@_case(
    LAYOUTS,
    "a-chain-using-every-descriptor-of-the-ring",
    "virtio 1.2 §2.7.5 (num is the longest chain)",
)
def _(b: Builder) -> Expect:
    num = b.limits.num
    k = min(b.limits.segments, 64)
    ds = [b.writable(512) for _ in range(k)]
    s = b.writable(1)
    pad = [((0, 0), W)] * (num - 2 - k)
    _read(b, [*((d, W) for d in ds), *pad, (s, W)])
    return b.expect_read(SECTOR, [span(d) for d in ds], s.gpa)


# ---- indirect layouts (section 2.7.5.3.2) ----------------------------------------------------

INDIRECT_LAYOUTS: dict[str, Case] = {}
INDIRECT = "virtio 1.2 §2.7.5.3, §2.7.5.3.2"


@_case(INDIRECT_LAYOUTS, "indirect-whole-chain", INDIRECT, needs=["indirect"])
def _(b: Builder) -> Expect:
    d, s = b.writable(4096), b.writable(1)
    t = b.table([(b.hdr(VIRTIO_BLK_T_IN, SECTOR), R), (d, W), (s, W)])
    b.chain((t, IND))
    return b.expect_read(SECTOR, [span(d)], s.gpa)


@_case(INDIRECT_LAYOUTS, "header-then-indirect-data-and-status", INDIRECT, needs=["indirect"])
def _(b: Builder) -> Expect:
    d, s = b.writable(4096), b.writable(1)
    _read(b, [(b.table([(d, W), (s, W)]), IND)])
    return b.expect_read(SECTOR, [span(d)], s.gpa)


@_case(INDIRECT_LAYOUTS, "header-and-data-then-indirect-status", INDIRECT, needs=["indirect"])
def _(b: Builder) -> Expect:
    d, s = b.writable(4096), b.writable(1)
    _read(b, [(d, W), (b.table([(s, W)]), IND)])
    return b.expect_read(SECTOR, [span(d)], s.gpa)


@_case(INDIRECT_LAYOUTS, "write-header-then-indirect-data-and-status", INDIRECT, needs=["indirect"])
def _(b: Builder) -> Expect:
    data = b.payload(2048)
    s = b.writable(1)
    t = b.table([(b.readable(data[:1024]), R), (b.readable(data[1024:]), R), (s, W)])
    b.chain((b.hdr(VIRTIO_BLK_T_OUT, SECTOR), R), (t, IND))
    return b.expect_write(SECTOR, data, s.gpa)


@_case(INDIRECT_LAYOUTS, "indirect-descriptor-with-the-write-flag", INDIRECT, needs=["indirect"])
def _(b: Builder) -> Expect:
    d, s = b.writable(4096), b.writable(1)
    t = b.table([(b.hdr(VIRTIO_BLK_T_IN, SECTOR), R), (d, W), (s, W)])
    b.chain((t, IND | W))  # the device MUST ignore WRITE here
    return b.expect_read(SECTOR, [span(d)], s.gpa)


@_case(INDIRECT_LAYOUTS, "indirect-with-zero-length-entries", INDIRECT, needs=["indirect"])
def _(b: Builder) -> Expect:
    d, s = b.writable(1024), b.writable(1)
    z = (U64 - 1, 0)
    t = b.table(
        [(z, R), (b.hdr(VIRTIO_BLK_T_IN, SECTOR), R), (z, R), (d, W), (z, W), (s, W), (z, W)]
    )
    b.chain((t, IND))
    return b.expect_read(SECTOR, [span(d)], s.gpa)


@_case(
    INDIRECT_LAYOUTS, "indirect-split-header-and-status-at-the-tail", INDIRECT, needs=["indirect"]
)
def _(b: Builder) -> Expect:
    h = b.header(VIRTIO_BLK_T_IN, SECTOR)
    ds = b.writable(4096 + 1)
    t = b.table([(b.readable(h[:8]), R), (b.readable(h[8:]), R), (ds, W)])
    b.chain((t, IND))
    return b.expect_read(SECTOR, [span(ds, 0, -1)], ds.last)


@_case(INDIRECT_LAYOUTS, "indirect-many-descriptors-of-512-bytes", INDIRECT, needs=["indirect"])
def _(b: Builder) -> Expect:
    k = b.limits.segments
    ds = [b.writable(512) for _ in range(k)]
    s = b.writable(1)
    t = b.table([(b.hdr(VIRTIO_BLK_T_IN, 0), R), *((d, W) for d in ds), (s, W)])
    b.chain((t, IND))
    return b.expect_read(0, [span(d) for d in ds], s.gpa)


@_case(INDIRECT_LAYOUTS, "indirect-get-id", INDIRECT, needs=["indirect"])
def _(b: Builder) -> Expect:
    d, s = b.writable(ID_BYTES), b.writable(1)
    b.chain((b.hdr(VIRTIO_BLK_T_GET_ID), R), (b.table([(d, W), (s, W)]), IND))
    return b.expect_get_id([span(d)], s.gpa)


@_case(INDIRECT_LAYOUTS, "indirect-flush", INDIRECT, needs=["indirect", "flush"])
def _(b: Builder) -> Expect:
    s = b.writable(1)
    b.chain((b.table([(b.hdr(VIRTIO_BLK_T_FLUSH), R), (s, W)]), IND))
    return served(s.gpa, 1)


# ---- request faults: completed with the status the device writes ---------------------------

REQUEST_FAULTS: dict[str, Case] = {}
NO_STATUS = "virtio 1.2 §2.7.8.2, §5.2.6 (rules: no device-writable byte: used len 0)"
HEADER = "virtio 1.2 §5.2.6 (rules: fewer than 16 readable bytes: IOERR)"
ORDER = "virtio 1.2 §2.7.4.2 (rules: readable after writable: IOERR)"
OUTSIDE = "virtio 1.2 §2.7.5 (rules: a data buffer outside guest RAM: IOERR, untouched)"
DIRECTION = "virtio 1.2 §5.2.6, §5.2.6.1 (rules: data on the wrong side: IOERR)"
LENGTH = "virtio 1.2 §5.2.6.1 (rules: data length or sector range: IOERR)"
UNKNOWN = "virtio 1.2 §5.2.6 (rules: unknown type: UNSUPP)"


@_case(REQUEST_FAULTS, "header-only", NO_STATUS)
def _(b: Builder) -> Expect:
    b.chain((b.hdr(VIRTIO_BLK_T_IN, SECTOR), R))
    return silent()


@_case(REQUEST_FAULTS, "header-and-readable-data-only", NO_STATUS)
def _(b: Builder) -> Expect:
    b.chain((b.hdr(VIRTIO_BLK_T_OUT, SECTOR), R), (b.readable(b.payload(512)), R))
    return silent()


@_case(REQUEST_FAULTS, "only-a-zero-length-writable-descriptor", NO_STATUS)
def _(b: Builder) -> Expect:
    _read(b, [((0, 0), W)])
    return silent()


@_case(REQUEST_FAULTS, "get-id-with-a-readable-status", NO_STATUS)
def _(b: Builder) -> Expect:
    b.chain((b.hdr(VIRTIO_BLK_T_GET_ID), R), (b.readable(b"\xff"), R))
    return silent()


@_case(REQUEST_FAULTS, "only-zero-length-descriptors", NO_STATUS)
def _(b: Builder) -> Expect:
    b.chain(((0, 0), R), ((U64 - 1, 0), W), ((0x1234, 0), W))
    return silent()


@_case(REQUEST_FAULTS, "header-of-8-bytes", HEADER)
def _(b: Builder) -> Expect:
    s = b.writable(1)
    b.chain((b.readable(b.header(VIRTIO_BLK_T_IN, SECTOR)[:8]), R), (b.writable(512), W), (s, W))
    return failed(s.gpa)


@_case(REQUEST_FAULTS, "header-of-15-bytes", HEADER)
def _(b: Builder) -> Expect:
    s = b.writable(1)
    b.chain((b.readable(b.header(VIRTIO_BLK_T_IN, SECTOR)[:15]), R), (b.writable(512), W), (s, W))
    return failed(s.gpa)


@_case(REQUEST_FAULTS, "header-of-8-bytes-and-a-zero-length-one", HEADER)
def _(b: Builder) -> Expect:
    s = b.writable(1)
    b.chain((b.readable(bytes(8)), R), ((0, 0), R), (s, W))
    return failed(s.gpa)


@_case(REQUEST_FAULTS, "no-readable-bytes-at-all", HEADER)
def _(b: Builder) -> Expect:
    s = b.writable(1)
    b.chain((b.writable(512), W), (s, W))
    return failed(s.gpa)


@_case(REQUEST_FAULTS, "readable-data-after-writable-data", ORDER)
def _(b: Builder) -> Expect:
    s = b.writable(1)
    _read(b, [(b.writable(512), W), (b.readable(b.payload(512)), R), (s, W)])
    return failed(s.gpa)


@_case(
    REQUEST_FAULTS, "readable-status-after-writable-data", ORDER + "; status = last writable byte"
)
def _(b: Builder) -> Expect:
    d = b.writable(512)
    _read(b, [(d, W), (b.readable(b"\xff"), R)])
    return failed(d.last)


@_case(REQUEST_FAULTS, "header-after-the-status", ORDER)
def _(b: Builder) -> Expect:
    s = b.writable(1)
    b.chain((s, W), (b.hdr(VIRTIO_BLK_T_IN, SECTOR), R))
    return failed(s.gpa)


def _outside_data(kind: str, out: bool) -> Callable[[Builder], Expect]:
    def build(b: Builder) -> Expect:
        d = b.outside(kind, 512)
        s = b.writable(1)
        b.chain(
            (b.hdr(VIRTIO_BLK_T_OUT if out else VIRTIO_BLK_T_IN, SECTOR), R),
            (d, R if out else W),
            (s, W),
        )
        return failed(s.gpa)

    return build


for _kind in (
    "below-ram",
    "past-the-end",
    "in-the-gap",
    "straddling-the-end",
    "spanning-the-gap",
    "wrapping-2-64",
):
    _case(REQUEST_FAULTS, f"in-data-{_kind}", OUTSIDE)(_outside_data(_kind, False))
for _kind in ("below-ram", "in-the-gap", "straddling-the-end", "wrapping-2-64"):
    _case(REQUEST_FAULTS, f"out-data-{_kind}", OUTSIDE)(_outside_data(_kind, True))


@_case(REQUEST_FAULTS, "second-data-buffer-outside-ram", OUTSIDE + "; nothing read into the first")
def _(b: Builder) -> Expect:
    s = b.writable(1)
    _read(b, [(b.writable(512), W), (b.outside("past-the-end", 512), W), (s, W)])
    return failed(s.gpa)


@_case(
    REQUEST_FAULTS,
    "header-outside-ram",
    "virtio 1.2 §5.2.6 (rules: structure sound, a status to answer)",
)
def _(b: Builder) -> Expect:
    s = b.writable(1)
    b.chain((b.outside("past-the-end", 16), R), (b.writable(512), W), (s, W))
    return failed(s.gpa)


@_case(REQUEST_FAULTS, "in-with-readable-data", DIRECTION)
def _(b: Builder) -> Expect:
    s = b.writable(1)
    _read(b, [(b.readable(b.payload(512)), R), (s, W)])
    return failed(s.gpa)


@_case(REQUEST_FAULTS, "in-with-readable-and-writable-data", DIRECTION)
def _(b: Builder) -> Expect:
    s = b.writable(1)
    _read(b, [(b.readable(b.payload(512)), R), (b.writable(512), W), (s, W)])
    return failed(s.gpa)


@_case(REQUEST_FAULTS, "in-header-of-24-bytes", DIRECTION + "; 8 readable data bytes")
def _(b: Builder) -> Expect:
    s = b.writable(1)
    b.chain(
        (b.readable(b.header(VIRTIO_BLK_T_IN, SECTOR) + bytes(8)), R), (b.writable(512), W), (s, W)
    )
    return failed(s.gpa)


@_case(REQUEST_FAULTS, "out-with-writable-data", DIRECTION)
def _(b: Builder) -> Expect:
    s = b.writable(1)
    b.chain((b.hdr(VIRTIO_BLK_T_OUT, SECTOR), R), (b.writable(512), W), (s, W))
    return failed(s.gpa)


@_case(REQUEST_FAULTS, "get-id-with-readable-data", DIRECTION)
def _(b: Builder) -> Expect:
    s = b.writable(1)
    b.chain((b.hdr(VIRTIO_BLK_T_GET_ID), R), (b.readable(b.payload(ID_BYTES)), R), (s, W))
    return failed(s.gpa)


@_case(REQUEST_FAULTS, "flush-with-readable-data", DIRECTION, needs=["flush"])
def _(b: Builder) -> Expect:
    s = b.writable(1)
    b.chain((b.hdr(VIRTIO_BLK_T_FLUSH), R), (b.readable(b.payload(512)), R), (s, W))
    return failed(s.gpa)


@_case(REQUEST_FAULTS, "flush-with-writable-data", DIRECTION, needs=["flush"])
def _(b: Builder) -> Expect:
    s = b.writable(1)
    b.chain((b.hdr(VIRTIO_BLK_T_FLUSH), R), (b.writable(512), W), (s, W))
    return failed(s.gpa)


def _length(type_: int, nbytes: int, sector: int = SECTOR) -> Callable[[Builder], Expect]:
    def build(b: Builder) -> Expect:
        out = type_ == VIRTIO_BLK_T_OUT
        d = b.readable(b.payload(nbytes)) if out else b.writable(nbytes)
        s = b.writable(1)
        b.chain((b.hdr(type_, sector), R), (d, R if out else W), (s, W))
        return failed(s.gpa)

    return build


for _t, _name in ((VIRTIO_BLK_T_IN, "in"), (VIRTIO_BLK_T_OUT, "out")):
    for _n in (1000, 511, 4097):
        _case(REQUEST_FAULTS, f"{_name}-of-{_n}-bytes", LENGTH)(_length(_t, _n))


def _range(type_: int, where: str) -> Callable[[Builder], Expect]:
    def build(b: Builder) -> Expect:
        cap = b.limits.capacity
        sector, nbytes = {
            "at-capacity": (cap, 512),
            "straddling-the-end": (cap - 1, 1024),
            "far-past-the-end": (cap + (1 << 20), 512),
            "times-512-wraps-to-0": (1 << 55, 512),
            "times-512-wraps-to-512": ((1 << 55) + 1, 512),
            "u64-max": (U64 - 1, 512),
        }[where]
        return _length(type_, nbytes, sector)(b)

    return build


for _t, _name in ((VIRTIO_BLK_T_IN, "in"), (VIRTIO_BLK_T_OUT, "out")):
    for _where in (
        "at-capacity",
        "straddling-the-end",
        "far-past-the-end",
        "times-512-wraps-to-0",
        "times-512-wraps-to-512",
        "u64-max",
    ):
        _case(REQUEST_FAULTS, f"{_name}-sector-{_where}", LENGTH)(_range(_t, _where))


@_case(REQUEST_FAULTS, "write-on-a-read-only-device", "virtio 1.2 §5.2.6.2", needs=["read_only"])
def _(b: Builder) -> Expect:
    s = b.writable(1)
    b.chain((b.hdr(VIRTIO_BLK_T_OUT, SECTOR), R), (b.readable(b.payload(512)), R), (s, W))
    return failed(s.gpa)


def _unknown(type_: int, with_data: bool = False) -> Callable[[Builder], Expect]:
    def build(b: Builder) -> Expect:
        s = b.writable(1)
        extra: list[Entry] = [(b.writable(512), W)] if with_data else []
        b.chain((b.hdr(type_), R), *extra, (s, W))
        return failed(s.gpa, VIRTIO_BLK_S_UNSUPP)

    return build


#: Types no spec offers: 2/3 legacy SCSI, 10 GET_LIFETIME and 14 SECURE_ERASE (features
#: never offered), 0x80000000 the legacy BARRIER bit, and plain unknown numbers.
for _type in (2, 3, 6, 7, 9, 10, 12, 14, 15, 16, 0x100, 0x8000_0000, 0xFFFF_FFFF):
    _case(REQUEST_FAULTS, f"unknown-type-{_type:#x}", UNKNOWN)(_unknown(_type))
_case(REQUEST_FAULTS, "unknown-type-with-writable-data", UNKNOWN)(_unknown(0x100, True))


# ---- structural faults: the queue is broken, the driver told --------------------------------

STRUCTURAL_FAULTS: dict[str, Case] = {}
INDEX = "virtio 1.2 §2.7.5, §2.7.5.2, §2.1.2 (rules: index >= num: broken, told)"
LOOP = "virtio 1.2 §2.7.5.2, §2.1.2 (rules: loop / chain longer than the ring: broken, told)"
AHEAD = "virtio 1.2 §2.7.6, §2.7.13.3, §2.1.2 (rules: avail idx more than num ahead: broken)"
STATUS_UNMAPPED = "virtio 1.2 §2.1.2 (rules: the status descriptor not in RAM: broken, told)"
NOT_NEGOTIATED = "virtio 1.2 §2.7.5.3.1, §2.1.2 (rules: INDIRECT not negotiated: broken)"


def _good_read(b: Builder) -> list[tuple[int, int, int]]:
    h, d, s = b.hdr(VIRTIO_BLK_T_IN, SECTOR), b.writable(512), b.writable(1)
    return [(h.gpa, 16, R), (d.gpa, 512, W), (s.gpa, 1, W)]


@_case(STRUCTURAL_FAULTS, "head-index-at-num", INDEX)
def _(b: Builder) -> Expect:
    b.heads.append(b.limits.num)
    b.then_a_good_chain()
    return broken()


@_case(STRUCTURAL_FAULTS, "head-index-0xffff", INDEX)
def _(b: Builder) -> Expect:
    b.heads.append(0xFFFF)
    b.then_a_good_chain()
    return broken()


@_case(STRUCTURAL_FAULTS, "next-index-at-num", INDEX)
def _(b: Builder) -> Expect:
    (i,) = b.reserve(1)
    h = b.hdr(VIRTIO_BLK_T_IN, SECTOR)
    b.descs[i] = Desc(h.gpa, 16, VRING_DESC_F_NEXT, b.limits.num)
    b.heads.append(i)
    b.then_a_good_chain()
    return broken()


@_case(STRUCTURAL_FAULTS, "next-index-0xffff-after-data", INDEX)
def _(b: Builder) -> Expect:
    e = _good_read(b)
    i, j = b.reserve(2)
    b.descs[i] = Desc(e[0][0], 16, VRING_DESC_F_NEXT, j)
    b.descs[j] = Desc(e[1][0], 512, W | VRING_DESC_F_NEXT, 0xFFFF)
    b.heads.append(i)
    b.then_a_good_chain()
    return broken()


@_case(STRUCTURAL_FAULTS, "self-loop", LOOP)
def _(b: Builder) -> Expect:
    e = _good_read(b)
    i, j = b.reserve(2)
    b.descs[i] = Desc(e[0][0], 16, VRING_DESC_F_NEXT, j)
    b.descs[j] = Desc(e[1][0], 512, W | VRING_DESC_F_NEXT, j)
    b.heads.append(i)
    b.then_a_good_chain()
    return broken()


@_case(STRUCTURAL_FAULTS, "loop-back-to-the-head", LOOP)
def _(b: Builder) -> Expect:
    e = _good_read(b)
    idx = b.reserve(3)
    descs = link(e, idx)
    descs[idx[2]] = Desc(e[2][0], 1, W | VRING_DESC_F_NEXT, idx[0])
    b.descs.update(descs)
    b.heads.append(idx[0])
    b.then_a_good_chain()
    return broken()


@_case(STRUCTURAL_FAULTS, "zero-length-cycle-through-every-descriptor", LOOP)
def _(b: Builder) -> Expect:
    num = b.limits.num
    idx = b.reserve(num)
    h = b.hdr(VIRTIO_BLK_T_IN, SECTOR)
    b.descs[idx[0]] = Desc(h.gpa, 16, VRING_DESC_F_NEXT, 1)
    for i in range(1, num):
        b.descs[i] = Desc(0, 0, VRING_DESC_F_NEXT, (i + 1) % num)
    b.heads.append(0)
    return broken()


@_case(STRUCTURAL_FAULTS, "zero-length-cycle-that-never-returns-to-the-head", LOOP)
def _(b: Builder) -> Expect:
    num = b.limits.num
    b.reserve(num)
    h = b.hdr(VIRTIO_BLK_T_IN, SECTOR)
    b.descs[0] = Desc(h.gpa, 16, VRING_DESC_F_NEXT, 1)
    for i in range(1, num):
        b.descs[i] = Desc(0, 0, VRING_DESC_F_NEXT, i + 1 if i + 1 < num else 1)
    b.heads.append(0)
    return broken()


@_case(STRUCTURAL_FAULTS, "readable-cycle-longer-than-the-ring", LOOP)
def _(b: Builder) -> Expect:
    num = b.limits.num
    b.reserve(num)
    h, d = b.hdr(VIRTIO_BLK_T_OUT, SECTOR), b.readable(b.payload(512))
    b.descs[0] = Desc(h.gpa, 16, VRING_DESC_F_NEXT, 1)
    for i in range(1, num):
        b.descs[i] = Desc(d.gpa, 512, VRING_DESC_F_NEXT, (i + 1) % num)
    b.heads.append(0)
    return broken()


@_case(STRUCTURAL_FAULTS, "avail-index-a-ring-and-one-ahead", AHEAD)
def _(b: Builder) -> Expect:
    b.chain(*(((a, n), f) for a, n, f in _good_read(b)))
    b.avail_idx = b.dev.queues[0]._avail_idx + b.limits.num + 1
    return broken()


@_case(STRUCTURAL_FAULTS, "avail-index-0x8000-ahead", AHEAD)
def _(b: Builder) -> Expect:
    b.chain(*(((a, n), f) for a, n, f in _good_read(b)))
    b.avail_idx = b.dev.queues[0]._avail_idx + 0x8000
    return broken()


def _status_outside(kind: str) -> Callable[[Builder], Expect]:
    def build(b: Builder) -> Expect:
        _read(b, [(b.writable(512), W), (b.outside(kind, 1), W)])
        b.then_a_good_chain()
        return broken()

    return build


for _kind in ("past-the-end", "in-the-gap", "below-ram", "wrapping-2-64"):
    _case(STRUCTURAL_FAULTS, f"status-buffer-{_kind}", STATUS_UNMAPPED)(_status_outside(_kind))


@_case(
    STRUCTURAL_FAULTS, "status-at-the-tail-of-a-buffer-straddling-the-end-of-ram", STATUS_UNMAPPED
)
def _(b: Builder) -> Expect:
    _read(b, [(b.outside("straddling-the-end", 1024 + 1), W)])
    b.then_a_good_chain()
    return broken()


def _indirect_refused(where: str) -> Callable[[Builder], Expect]:
    def build(b: Builder) -> Expect:
        e = _good_read(b)
        t = b.table([((a, n), f) for a, n, f in e])
        if where == "as-the-head":
            b.chain((t, IND))
        elif where == "after-the-header":
            b.chain(((e[0][0], 16), R), (b.table([((a, n), f) for a, n, f in e[1:]]), IND))
        else:  # after header and data: just the status inside
            b.chain(((e[0][0], 16), R), ((e[1][0], 512), W), (b.table([((e[2][0], 1), W)]), IND))
        b.then_a_good_chain()
        return broken()

    return build


for _where in ("as-the-head", "after-the-header", "for-the-status"):
    _case(
        STRUCTURAL_FAULTS,
        f"indirect-not-negotiated-{_where}",
        NOT_NEGOTIATED,
        refuse=1 << VIRTIO_RING_F_INDIRECT_DESC,
    )(_indirect_refused(_where))


INDIRECT_FAULTS: dict[str, Case] = {}
IND_RULE = "virtio 1.2 §2.7.5.3.1, §2.1.2 (rules: a bad indirect table: broken, told)"


def _ind(b: Builder, table: Piece) -> Expect:
    """The whole chain is one INDIRECT descriptor for ``table``."""
    b.chain(((table.gpa, table.len), IND))
    b.then_a_good_chain()
    return broken()


@_case(INDIRECT_FAULTS, "indirect-with-next", IND_RULE, needs=["indirect"])
def _(b: Builder) -> Expect:
    e = _good_read(b)
    t = b.table([((a, n), f) for a, n, f in e[:2]])
    i, j = b.reserve(2)
    b.descs[i] = Desc(t.gpa, t.len, IND | VRING_DESC_F_NEXT, j)
    b.descs[j] = Desc(e[2][0], 1, W)
    b.heads.append(i)
    b.then_a_good_chain()
    return broken()


@_case(INDIRECT_FAULTS, "nested-indirect", IND_RULE, needs=["indirect"])
def _(b: Builder) -> Expect:
    e = _good_read(b)
    inner = b.table([((a, n), f) for a, n, f in e[1:]])
    outer = b.table([((e[0][0], 16), R), (inner, IND)])
    return _ind(b, outer)


@_case(INDIRECT_FAULTS, "indirect-table-of-length-0", IND_RULE, needs=["indirect"])
def _(b: Builder) -> Expect:
    t = b.table([((a, n), f) for a, n, f in _good_read(b)])
    return _ind(b, Piece(t.gpa, 0))


@_case(INDIRECT_FAULTS, "indirect-table-length-not-a-multiple-of-16", IND_RULE, needs=["indirect"])
def _(b: Builder) -> Expect:
    t = b.table([((a, n), f) for a, n, f in _good_read(b)])
    return _ind(b, Piece(t.gpa, t.len - 8))


@_case(INDIRECT_FAULTS, "indirect-table-outside-ram", IND_RULE, needs=["indirect"])
def _(b: Builder) -> Expect:
    return _ind(b, b.outside("past-the-end", 48))


@_case(INDIRECT_FAULTS, "indirect-table-straddling-the-end-of-ram", IND_RULE, needs=["indirect"])
def _(b: Builder) -> Expect:
    return _ind(b, b.outside("straddling-the-end", 48))


@_case(INDIRECT_FAULTS, "indirect-table-longer-than-any-chain", IND_RULE, needs=["indirect"])
def _(b: Builder) -> Expect:
    descs = link(_good_read(b))
    return _ind(b, b.raw_table(descs, 65536))  # split rings: chains of at most 32768


@_case(INDIRECT_FAULTS, "indirect-next-past-the-table", IND_RULE, needs=["indirect"])
def _(b: Builder) -> Expect:
    e = _good_read(b)
    descs = link(e)
    descs[1] = Desc(e[1][0], 512, W | VRING_DESC_F_NEXT, 3)  # a 3-entry table
    return _ind(b, b.raw_table(descs, 3))


@_case(INDIRECT_FAULTS, "indirect-loop-inside-the-table", IND_RULE, needs=["indirect"])
def _(b: Builder) -> Expect:
    e = _good_read(b)
    descs = link(e)
    descs[2] = Desc(e[2][0], 1, W | VRING_DESC_F_NEXT, 0)
    return _ind(b, b.raw_table(descs, 3))


# ---- SEG_MAX and SIZE_MAX bind only when negotiated (section 5.2.3, 5.2.6.2) ---------------

LIMITS: dict[str, Case] = {}
SEG = "virtio 1.2 §5.2.3, §5.2.4 (rules: SEG_MAX negotiated: more segments IOERR; else served)"
SIZE = "virtio 1.2 §5.2.3, §5.2.4 (rules: SIZE_MAX negotiated: a larger segment IOERR; else served)"


def _segments(b: Builder, k: int, indirect: bool = False) -> tuple[list[Piece], Piece]:
    """A read of ``k`` 512-byte data segments (in an indirect table if asked)."""
    if k > b.limits.num - 2:
        raise Skip(f"a {b.limits.num}-entry ring cannot carry {k} data segments")
    if k > b.limits.capacity:
        raise Skip("the disk is too small")
    ds = [b.writable(512) for _ in range(k)]
    s = b.writable(1)
    entries: list[Entry] = [(b.hdr(VIRTIO_BLK_T_IN, 0), R), *((d, W) for d in ds), (s, W)]
    if indirect:
        b.chain((b.table(entries), IND))
    else:
        b.chain(*entries)
    return ds, s


@_case(LIMITS, "seg-max-data-segments-are-served", SEG, needs=["seg_max"])
def _(b: Builder) -> Expect:
    assert b.limits.seg_max is not None
    ds, s = _segments(b, min(b.limits.seg_max, b.limits.num - 2))
    return b.expect_read(0, [span(d) for d in ds], s.gpa)


@_case(LIMITS, "seg-max-plus-one-data-segments-are-refused", SEG, needs=["seg_max"])
def _(b: Builder) -> Expect:
    assert b.limits.seg_max is not None
    _ds, s = _segments(b, b.limits.seg_max + 1)
    return failed(s.gpa)


@_case(
    LIMITS, "seg-max-plus-one-in-an-indirect-table-are-refused", SEG, needs=["seg_max", "indirect"]
)
def _(b: Builder) -> Expect:
    assert b.limits.seg_max is not None
    _ds, s = _segments(b, b.limits.seg_max + 1, indirect=True)
    return failed(s.gpa)


@_case(
    LIMITS,
    "seg-max-not-negotiated-plus-one-segments-are-served",
    SEG,
    refuse=1 << VIRTIO_BLK_F_SEG_MAX,
)
def _(b: Builder) -> Expect:
    if not b.limits.config_seg_max:
        raise Skip("the device does not offer SEG_MAX")
    ds, s = _segments(b, b.limits.config_seg_max + 1)
    return b.expect_read(0, [span(d) for d in ds], s.gpa)


@_case(
    LIMITS,
    "seg-max-not-negotiated-as-many-segments-as-the-ring-holds-are-served",
    SEG + "; §2.7.4.1",
    refuse=1 << VIRTIO_BLK_F_SEG_MAX,
)
def _(b: Builder) -> Expect:
    ds, s = _segments(b, b.limits.num - 2)
    return b.expect_read(0, [span(d) for d in ds], s.gpa)


def _one_segment(b: Builder, n: int) -> tuple[Piece, Piece]:
    if n == 0:
        raise Skip("size_max is below one sector: no whole-sector segment fits")
    if n + 4096 > b.limits.capacity * 512:
        raise Skip("the disk is too small for the segment")
    d, s = b.writable(n), b.writable(1)
    b.chain((b.hdr(VIRTIO_BLK_T_IN, 0), R), (d, W), (s, W))
    return d, s


@_case(LIMITS, "size-max-segment-is-served", SIZE, needs=["size_max"])
def _(b: Builder) -> Expect:
    assert b.limits.size_max is not None
    d, s = _one_segment(b, b.limits.size_max // 512 * 512)
    return b.expect_read(0, [span(d)], s.gpa)


@_case(LIMITS, "size-max-plus-512-segment-is-refused", SIZE, needs=["size_max"])
def _(b: Builder) -> Expect:
    assert b.limits.size_max is not None
    _d, s = _one_segment(b, b.limits.size_max // 512 * 512 + 512)
    return failed(s.gpa)


@_case(
    LIMITS,
    "size-max-not-negotiated-larger-segment-is-served",
    SIZE,
    refuse=1 << VIRTIO_BLK_F_SIZE_MAX,
)
def _(b: Builder) -> Expect:
    if not b.limits.config_size_max:
        raise Skip("the device does not offer SIZE_MAX")
    d, s = _one_segment(b, b.limits.config_size_max // 512 * 512 + 512)
    return b.expect_read(0, [span(d)], s.gpa)


#: Every table, by the name tests use.
CASES: dict[str, dict[str, Case]] = {
    "layouts": LAYOUTS,
    "indirect-layouts": INDIRECT_LAYOUTS,
    "request-faults": REQUEST_FAULTS,
    "structural-faults": STRUCTURAL_FAULTS,
    "indirect-faults": INDIRECT_FAULTS,
    "limits": LIMITS,
}


# ---- running a case ------------------------------------------------------------------------


@dataclass
class Result:
    """What the device did with a case, next to what the rules say."""

    case: Case
    expect: Expect
    used: list[tuple[int, int]]
    heads: list[int]
    #: The byte at the expected status address (None when the rules name none).
    status: int | None
    stray: list[str]
    wrong_data: list[str]
    guard_errors: list[str]
    told: NeedsReset | None
    transport: str

    def observed(self) -> str:
        """One line: what happened."""
        if not self.used:
            told = f"told ({self.told.how})" if self.told else "not told"
            return f"no completion; {told}"
        parts = [f"completed, used len {', '.join(str(n) for _, n in self.used)}"]
        if self.status is not None:
            parts.append(f"status byte {_byte_name(self.status)}")
        if self.stray:
            parts.append(f"wrote {len(self.stray)} unexpected range(s)")
        if self.wrong_data:
            parts.append("wrong data")
        if self.told:
            parts.append(f"told ({self.told.how})")
        return ", ".join(parts)

    def mismatches(self) -> list[str]:
        """Every way the outcome differs from the rules (empty: conformant)."""
        e = self.expect
        out: list[str] = []
        if e.kind is Kind.BROKEN:
            if self.used:
                out.append(f"completed {self.used}, expected no completion")
            if self.told is None:
                out.append("the driver was not told the device needs a reset")
            elif self.transport == "hvisor" and not self.told.config_interrupt:
                out.append("InterruptStatus lacks VIRTIO_MMIO_INT_CONFIG (0x2)")
        else:
            want = [(self.heads[0], e.used_len)]
            if self.used != want:
                out.append(f"used {self.used}, expected {want}")
            if e.status is not None and self.used and self.status != e.status:
                got = _byte_name(self.status)
                out.append(f"status byte {got}, expected {_status_name(e.status)}")
            if self.told is not None:
                out.append(f"the device said it needs a reset ({self.told.how})")
            if self.used:
                out += self.wrong_data
        out += [f"wrote guest memory outside what the rules allow: {s}" for s in self.stray]
        out += self.guard_errors
        return out

    def report(self) -> str:
        """Case, section, expected and observed, and the mismatches."""
        lines = [
            f"{self.case.name} ({self.case.section})",
            f"  rules:    {self.expect.summary()}",
            f"  observed: {self.observed()}",
        ]
        lines += [f"  - {m}" for m in self.mismatches()]
        return "\n".join(lines)


def run_case(
    dev: BlkDevice,
    case: Case,
    limits: Limits,
    shadow: ShadowDisk,
    *,
    settle: float = 0.2,
    timeout: float | None = None,
) -> Result:
    """Lay out ``case`` on queue 0 of ``dev``, post it, and record what happened.

    Raises :class:`Skip` when the case does not apply. On a successful write
    the shadow is updated; the caller compares the image with it.
    """
    why = case.applies(limits)
    if why:
        raise Skip(why)
    limit = dev.timeout if timeout is None else timeout
    b = Builder(dev, limits, shadow)
    try:
        expect = case.build(b)
        if expect.kind is Kind.COMPLETED and expect.status is not None:
            written = expect.used_len - 1
            if written != b.writable_bytes() - 1:
                expect = replace(expect, used_len=written)
        raw = RawQueue(dev)
        broken = expect.kind is Kind.BROKEN
        out = raw.post(
            b.descs,
            b.heads,
            avail_idx=b.avail_idx,
            expect=0 if broken else len(b.heads),
            timeout=limit,
            # Broken: watch for completions until the device says it needs a
            # reset (or the timeout), not a fixed time.
            settle=limit if broken else settle,
            until=dev.needs_reset if broken else None,
            extra=b.windows,
        )
        if broken:
            told = dev.needs_reset()
        else:
            told = dev.needs_reset() if out.used else dev.wait_needs_reset(settle)
        used = [(u.id, u.len) for u in out.used]
        status = dev.memory.read(expect.status_at, 1)[0] if expect.status_at is not None else None
        wrong = []
        for gpa, v in expect.data:
            if isinstance(v, int):
                continue
            got = dev.memory.read(gpa, len(v))
            if got != v:
                wrong.append(f"data at {gpa:#x} ({len(v)} bytes) is not what the rules say")
        conformant_write = used == [(b.heads[0], expect.used_len)] and status == expect.status
        if expect.kind is Kind.COMPLETED and conformant_write:
            for offset, data in expect.disk:
                shadow.write(offset, data)
        transport = dev.transport.name if dev.transport is not None else "?"
        return Result(
            case,
            expect,
            used,
            list(b.heads),
            status,
            out.unexpected(expect.writes()),
            wrong,
            b.guard_errors(),
            told,
            transport,
        )
    finally:
        b.free()


def check_device_works(dev: BlkDevice, limits: Limits, shadow: ShadowDisk) -> list[str]:
    """A write (unless read-only) and a read round trip; the problems found (empty: fine)."""
    problems = []
    if not limits.read_only:
        data = os.urandom(4096)
        c = dev.run(AlignedRequest.write(dev.memory, WORK_SECTOR, data, 2))
        if (c.status, c.used_len, c.guard_errors) != (VIRTIO_BLK_S_OK, 1, []):
            problems.append(f"write: status {c.status}, used len {c.used_len}, {c.guard_errors}")
        else:
            shadow.write(WORK_SECTOR * SECTOR_SIZE, data)
    c = dev.run(AlignedRequest.read(dev.memory, WORK_SECTOR, 4096, 4))
    if (c.status, c.used_len, c.guard_errors) != (VIRTIO_BLK_S_OK, 4097, []):
        problems.append(f"read: status {c.status}, used len {c.used_len}, {c.guard_errors}")
    elif c.data != shadow.expected(WORK_SECTOR * SECTOR_SIZE, 4096):
        problems.append("read: data differs from the disk")
    return problems
