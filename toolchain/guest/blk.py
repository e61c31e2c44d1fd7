"""virtio-blk driver on top of the vhost-user frontend and split virtqueues.

Request format (virtio 1.2 section 5.2.6): a driver-readable header
{le32 type, le32 reserved/ioprio, le64 sector}, data segments, and a final
device-writable status byte.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Self

from .memory import GuestMemory
from .transport import NeedsReset, Transport, TransportError, VhostUserTransport
from .vhost_user import F_PROTOCOL_FEATURES, VhostUserFrontend
from .virtq import BufferSpec, SplitVirtqueue, VirtqueueError

SECTOR_SIZE = 512
ID_BYTES = 20

# Request types.
VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_T_DISCARD = 11
VIRTIO_BLK_T_WRITE_ZEROES = 13

# Status values.
VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2

# Feature bits.
VIRTIO_BLK_F_SIZE_MAX = 1
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_GEOMETRY = 4
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_F_BLK_SIZE = 6
VIRTIO_BLK_F_FLUSH = 9
VIRTIO_BLK_F_TOPOLOGY = 10
VIRTIO_BLK_F_CONFIG_WCE = 11
VIRTIO_BLK_F_MQ = 12
VIRTIO_BLK_F_DISCARD = 13
VIRTIO_BLK_F_WRITE_ZEROES = 14
VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32

#: Feature bits this driver understands and accepts when offered.
KNOWN_FEATURES = sum(
    1 << b
    for b in (
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_GEOMETRY,
        VIRTIO_BLK_F_RO,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_TOPOLOGY,
        VIRTIO_BLK_F_CONFIG_WCE,
        VIRTIO_BLK_F_MQ,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_F_VERSION_1,
        F_PROTOCOL_FEATURES,
    )
)

HEADER = struct.Struct("<IIQ")
DISCARD_SEG = struct.Struct("<QII")

GUARD_LEN = 32
GUARD = bytes((0xA5 + 7 * i) & 0xFF for i in range(GUARD_LEN))
POISON = 0xCC


class BlkError(Exception):
    """A virtio-blk level failure (timeout, bad status, guard violation)."""


class BlkStatusError(BlkError):
    """A request completed with a status other than VIRTIO_BLK_S_OK."""

    def __init__(self, status: int, what: str) -> None:
        super().__init__(f"{what}: status {status}")
        self.status = status


_CONFIG = struct.Struct("<QIIHBBIBBHIBBHIIIIIB3x")


@dataclass(frozen=True)
class BlkConfig:
    """struct virtio_blk_config, up to write_zeroes_may_unmap (60 bytes)."""

    capacity: int
    size_max: int
    seg_max: int
    cylinders: int
    heads: int
    sectors: int
    blk_size: int
    physical_block_exp: int
    alignment_offset: int
    min_io_size: int
    opt_io_size: int
    writeback: int
    unused0: int
    num_queues: int
    max_discard_sectors: int
    max_discard_seg: int
    discard_sector_alignment: int
    max_write_zeroes_sectors: int
    max_write_zeroes_seg: int
    write_zeroes_may_unmap: int

    SIZE = _CONFIG.size

    @classmethod
    def parse(cls, data: bytes) -> BlkConfig:
        """Decode the first 60 bytes of config space."""
        if len(data) < _CONFIG.size:
            raise BlkError(f"config space too short: {len(data)} bytes")
        return cls(*_CONFIG.unpack_from(data))

    def as_dict(self) -> dict[str, int]:
        """Field name -> value."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def split_sizes(total: int, segments: int | Sequence[int], unit: int = 1) -> list[int]:
    """Split ``total`` bytes into ``segments`` non-empty pieces, each a multiple
    of ``unit`` but the last (or check an explicit list)."""
    if not isinstance(segments, int):
        sizes = list(segments)
        if sum(sizes) != total:
            raise BlkError(f"segment sizes {sizes} do not add up to {total}")
        return sizes
    base = total // segments // unit * unit if segments > 0 else 0
    if segments <= 0 or (base == 0 and segments > 1):
        raise BlkError(f"cannot split {total} bytes into {segments} segments of {unit}")
    return [base] * (segments - 1) + [total - base * (segments - 1)]


@dataclass
class Segment:
    """One buffer of a request with its guard bytes around it."""

    gpa: int
    length: int
    writable: bool
    alloc_gpa: int
    content: bytes  # what we stored: readable buffers must keep it


class BlkRequest:
    """A request laid out in guest memory: buffers with guards on both sides.

    ``parts`` is a list of ``(content, writable)`` where content is bytes (stored
    verbatim) or an int length (filled with POISON).  The classmethods build
    well-formed requests; the constructor builds any chain.
    """

    def __init__(
        self,
        memory: GuestMemory,
        parts: Sequence[tuple[bytes | int, bool]],
        *,
        type_: int | None = None,
        sector: int = 0,
        payload: bytes = b"",
        region: int | None = None,
        align: int = 1,
    ) -> None:
        self.memory = memory
        self.type = type_
        self.sector = sector
        self.payload = payload  # OUT data, or discard/write-zeroes segments
        self.segments: list[Segment] = []
        align = max(16, memory.io_align, align)
        lead = -(-GUARD_LEN // align) * align  # the guard just before aligned data
        for content, writable in parts:
            data = bytes([POISON]) * content if isinstance(content, int) else bytes(content)
            base = memory.alloc(lead + len(data) + GUARD_LEN, align, region)
            memory.write(base + lead - GUARD_LEN, GUARD + data + GUARD)
            self.segments.append(Segment(base + lead, len(data), writable, base, data))

    # -- builders ---------------------------------------------------------------

    @staticmethod
    def header(type_: int, sector: int = 0, ioprio: int = 0) -> bytes:
        """Encode the 16-byte request header."""
        return HEADER.pack(type_, ioprio, sector)

    @classmethod
    def read(
        cls,
        memory: GuestMemory,
        sector: int,
        nbytes: int,
        segments: int | Sequence[int] = 1,
        region: int | None = None,
    ) -> BlkRequest:
        """VIRTIO_BLK_T_IN of ``nbytes`` split over ``segments`` buffers."""
        parts: list[tuple[bytes | int, bool]] = [(cls.header(VIRTIO_BLK_T_IN, sector), False)]
        parts += [(n, True) for n in split_sizes(nbytes, segments, memory.io_align)]
        parts.append((1, True))
        return cls(memory, parts, type_=VIRTIO_BLK_T_IN, sector=sector, region=region)

    @classmethod
    def write(
        cls,
        memory: GuestMemory,
        sector: int,
        data: bytes,
        segments: int | Sequence[int] = 1,
        region: int | None = None,
    ) -> BlkRequest:
        """VIRTIO_BLK_T_OUT of ``data`` split over ``segments`` buffers."""
        parts: list[tuple[bytes | int, bool]] = [(cls.header(VIRTIO_BLK_T_OUT, sector), False)]
        pos = 0
        for n in split_sizes(len(data), segments, memory.io_align):
            parts.append((data[pos : pos + n], False))
            pos += n
        parts.append((1, True))
        return cls(
            memory, parts, type_=VIRTIO_BLK_T_OUT, sector=sector, payload=data, region=region
        )

    @classmethod
    def simple(cls, memory: GuestMemory, type_: int, in_len: int = 0) -> BlkRequest:
        """Header + optional ``in_len`` writable bytes + status (FLUSH, GET_ID, ...)."""
        parts: list[tuple[bytes | int, bool]] = [(cls.header(type_), False)]
        if in_len:
            parts.append((in_len, True))
        parts.append((1, True))
        return cls(memory, parts, type_=type_)

    @classmethod
    def flush(cls, memory: GuestMemory) -> BlkRequest:
        """VIRTIO_BLK_T_FLUSH."""
        return cls.simple(memory, VIRTIO_BLK_T_FLUSH)

    @classmethod
    def get_id(cls, memory: GuestMemory) -> BlkRequest:
        """VIRTIO_BLK_T_GET_ID with a 20-byte buffer."""
        return cls.simple(memory, VIRTIO_BLK_T_GET_ID, ID_BYTES)

    @classmethod
    def ranges(
        cls, memory: GuestMemory, type_: int, ranges: Sequence[tuple[int, int, int]]
    ) -> BlkRequest:
        """DISCARD / WRITE_ZEROES with (sector, num_sectors, flags) segments."""
        payload = b"".join(DISCARD_SEG.pack(s, n, f) for s, n, f in ranges)
        parts: list[tuple[bytes | int, bool]] = [
            (cls.header(type_), False),
            (payload, False),
            (1, True),
        ]
        return cls(memory, parts, type_=type_, payload=payload)

    # -- inspection ---------------------------------------------------------------

    @property
    def chain(self) -> list[BufferSpec]:
        """The (gpa, len, writable) list for SplitVirtqueue.add_chain."""
        return [(s.gpa, s.length, s.writable) for s in self.segments]

    def status(self) -> int:
        """The last byte of the last buffer (the status byte)."""
        last = self.segments[-1]
        return self.memory.read(last.gpa + last.length - 1, 1)[0]

    def data_in(self) -> bytes:
        """All device-writable bytes in chain order, without the final status byte."""
        data = b"".join(self.memory.read(s.gpa, s.length) for s in self.segments if s.writable)
        return data[:-1]

    def check_guards(self) -> list[str]:
        """Describe every byte changed outside the writable buffers (empty if none)."""
        problems = []
        for k, s in enumerate(self.segments):
            before = self.memory.read(s.gpa - GUARD_LEN, GUARD_LEN)
            after = self.memory.read(s.gpa + s.length, GUARD_LEN)
            if before != GUARD:
                problems.append(f"segment {k}: guard before {s.gpa:#x} overwritten")
            if after != GUARD:
                problems.append(f"segment {k}: guard after {s.gpa + s.length:#x} overwritten")
            if not s.writable and self.memory.read(s.gpa, s.length) != s.content:
                problems.append(f"segment {k}: driver-readable buffer at {s.gpa:#x} modified")
        return problems

    def free(self) -> None:
        """Release the request's guest memory."""
        for s in self.segments:
            self.memory.free(s.alloc_gpa)
        self.segments = []


@dataclass
class Completion:
    """A finished request as seen by the driver."""

    request: BlkRequest
    queue: int
    head: int
    used_len: int
    status: int
    data: bytes
    guard_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Status OK and no guard violation."""
        return self.status == VIRTIO_BLK_S_OK and not self.guard_errors


class BlkDevice:
    """A virtio-blk driver over any :class:`~toolchain.guest.transport.Transport`."""

    def __init__(
        self,
        memory: GuestMemory | None = None,
        *,
        queue_size: int = 128,
        num_queues: int = 1,
        timeout: float = 5.0,
        feature_mask: int = ~0,
        indirect: bool = False,
    ) -> None:
        self.memory = memory if memory is not None else GuestMemory()
        self.queue_size = queue_size
        self.num_queues = num_queues
        self.timeout = timeout
        self.feature_mask = feature_mask
        self.indirect = indirect  # submit through indirect tables by default
        self.transport: Transport | None = None
        self.offered_features = 0
        self.features = 0
        self.max_queues = 1
        self.queues: list[SplitVirtqueue] = []
        self._inflight: list[dict[int, BlkRequest]] = []

    # -- connection -----------------------------------------------------------------

    @property
    def fe(self) -> VhostUserFrontend:
        """The live vhost-user frontend (raises if disconnected or on another transport)."""
        if not isinstance(self.transport, VhostUserTransport):
            raise BlkError(
                "not connected"
                if self.transport is None
                else f"{self.transport.name}: not a vhost-user connection"
            )
        return self.transport.frontend

    @property
    def frontend(self) -> VhostUserFrontend | None:
        """The vhost-user frontend, or None (disconnected, or another transport)."""
        return self.transport.frontend if isinstance(self.transport, VhostUserTransport) else None

    @frontend.setter
    def frontend(self, value: None) -> None:
        """``dev.frontend = None``: the connection is gone (closed, or the backend died)."""
        if value is not None:
            raise BlkError("attach a transport with attach() or connect()")
        self.transport = None

    @property
    def protocol_features(self) -> int:
        """vhost-user protocol features negotiated (0 on other transports)."""
        return (
            self.transport.protocol_features
            if isinstance(self.transport, VhostUserTransport)
            else 0
        )

    def connect(self, socket_path: str, connect_timeout: float = 10.0) -> None:
        """vhost-user: connect to ``socket_path`` and initialise the device."""
        self.attach(VhostUserTransport(socket_path, self.timeout, connect_timeout))

    def attach(self, transport: Transport) -> None:
        """Initialise the device through ``transport``: features, memory, queues, live."""
        self.transport = transport
        self.offered_features, self.max_queues = transport.begin()
        if self.num_queues > self.max_queues:
            raise BlkError(f"backend supports {self.max_queues} queues, asked {self.num_queues}")
        self.features = self.offered_features & KNOWN_FEATURES & self.feature_mask
        transport.set_features(self.features, self.memory)
        event_idx = bool(self.features & (1 << VIRTIO_RING_F_EVENT_IDX))
        self.queues = [
            SplitVirtqueue(self.memory, i, self.queue_size, event_idx, transport.signals(i))
            for i in range(self.num_queues)
        ]
        self._inflight = [{} for _ in self.queues]
        for q in self.queues:
            transport.setup_queue(q)
        transport.start()

    def has_feature(self, bit: int) -> bool:
        """Whether feature ``bit`` was negotiated."""
        return bool(self.features >> bit & 1)

    def config(self) -> BlkConfig:
        """Read and decode the device config space."""
        if self.transport is None:
            raise BlkError("not connected")
        try:
            return BlkConfig.parse(self.transport.read_config(BlkConfig.SIZE))
        except TransportError as e:
            raise BlkError(str(e)) from None

    def disconnect(self) -> None:
        """Stop using the device (vhost-user: drop the connection; mmio: reset it).

        Outstanding requests are abandoned.
        """
        if self.transport is not None:
            self.transport.close()
        for q, inflight in zip(self.queues, self._inflight, strict=True):
            for req in inflight.values():
                req.free()
            q.close()
        self.queues = []
        self._inflight = []

    def reconnect(self, connect_timeout: float = 10.0) -> None:
        """Disconnect and initialise the same device again."""
        if self.transport is None:
            raise BlkError("never connected")
        old = self.transport
        self.disconnect()
        self.attach(old.reopen())

    def close(self) -> None:
        """Disconnect and release guest memory."""
        self.disconnect()
        self.transport = None
        self.memory.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def needs_reset(self) -> NeedsReset | None:
        """Whether the device has told us it needs a reset (virtio 1.2 section 2.1.2).

        vhost-user: the backend closed the connection; virtio-mmio: Status has
        DEVICE_NEEDS_RESET. Recover with :meth:`reconnect`.
        """
        if self.transport is None:
            raise BlkError("not connected")
        return self.transport.needs_reset()

    def wait_needs_reset(self, timeout: float | None = None) -> NeedsReset | None:
        """Wait (default: the request timeout) for the device to say it needs a reset."""
        if self.transport is None:
            raise BlkError("not connected")
        return self.transport.wait_needs_reset(self.timeout if timeout is None else timeout)

    # -- queue control ----------------------------------------------------------------

    def stop_queue(self, i: int) -> int:
        """vhost-user GET_VRING_BASE: stop queue ``i``; return the backend's next avail index."""
        if self.transport is None:
            raise BlkError("not connected")
        try:
            return self.transport.stop_queue(i)
        except TransportError as e:
            raise BlkError(str(e)) from None

    def resume_queue(self, i: int, base: int) -> None:
        """Re-send the ring setup for queue ``i`` starting at ``base``."""
        if self.transport is None:
            raise BlkError("not connected")
        self.transport.setup_queue(self.queues[i], base)

    # -- I/O ----------------------------------------------------------------------------

    def submit(
        self, req: BlkRequest, queue: int = 0, *, indirect: bool | None = None, kick: bool = True
    ) -> int:
        """Post ``req`` on ``queue``; return the descriptor head."""
        q = self.queues[queue]
        use_indirect = self.indirect if indirect is None else indirect
        head = q.add_indirect_chain(req.chain) if use_indirect else q.add_chain(req.chain)
        self._inflight[queue][head] = req
        q.publish(head)
        if kick:
            q.kick()
        return head

    def outstanding(self, queue: int = 0) -> int:
        """Requests posted on ``queue`` and not yet completed."""
        return len(self._inflight[queue])

    def complete(
        self, timeout: float | None = None, queue: int = 0, count: int | None = None
    ) -> list[Completion]:
        """Wait for ``count`` completions (default: all outstanding) and collect them.

        Raises BlkError if fewer arrive within ``timeout``, VirtqueueError if the
        device returns a head that is not outstanding.
        """
        q = self.queues[queue]
        inflight = self._inflight[queue]
        want = len(inflight) if count is None else count
        limit = self.timeout if timeout is None else timeout
        done: list[Completion] = []
        while len(done) < want:
            used = q.wait_used(limit, want - len(done))
            if not used:
                raise BlkError(f"queue {queue}: {len(done)}/{want} completions after {limit}s")
            for elem in used:
                req = inflight.pop(elem.id, None)
                if req is None:
                    raise VirtqueueError(f"queue {queue}: used id {elem.id} was not outstanding")
                done.append(
                    Completion(
                        req,
                        queue,
                        elem.id,
                        elem.len,
                        req.status(),
                        req.data_in(),
                        req.check_guards(),
                    )
                )
                q.free_chain(elem.id)
                req.free()
        return done

    def run(self, req: BlkRequest, queue: int = 0, timeout: float | None = None) -> Completion:
        """Submit one request and wait for exactly it."""
        if self.outstanding(queue):
            raise BlkError("run() needs an idle queue")
        self.submit(req, queue)
        (c,) = self.complete(timeout, queue, 1)
        return c

    def _checked(self, req: BlkRequest, what: str, queue: int) -> Completion:
        c = self.run(req, queue)
        if c.guard_errors:
            raise BlkError(f"{what}: " + "; ".join(c.guard_errors))
        if c.status != VIRTIO_BLK_S_OK:
            raise BlkStatusError(c.status, what)
        return c

    def read(
        self, sector: int, nbytes: int, segments: int | Sequence[int] = 1, queue: int = 0
    ) -> bytes:
        """Read ``nbytes`` from ``sector``; raise BlkStatusError unless S_OK."""
        return self._checked(
            BlkRequest.read(self.memory, sector, nbytes, segments), f"read {sector}+{nbytes}", queue
        ).data

    def write(
        self, sector: int, data: bytes, segments: int | Sequence[int] = 1, queue: int = 0
    ) -> None:
        """Write ``data`` at ``sector``; raise BlkStatusError unless S_OK."""
        self._checked(
            BlkRequest.write(self.memory, sector, data, segments),
            f"write {sector}+{len(data)}",
            queue,
        )

    def flush(self, queue: int = 0) -> None:
        """VIRTIO_BLK_T_FLUSH; raise BlkStatusError unless S_OK.

        As a driver does, nothing is sent when FLUSH was not negotiated: the
        device then has no writeback cache (Linux's virtio_blk assumes so) and
        a completed write is already durable; the project's device opens the
        image O_DSYNC then. Send ``BlkRequest.flush`` to see the device refuse it.
        """
        if not self.features & (1 << VIRTIO_BLK_F_FLUSH):
            return
        self._checked(BlkRequest.flush(self.memory), "flush", queue)

    def get_id(self, queue: int = 0) -> bytes:
        """VIRTIO_BLK_T_GET_ID: the raw 20-byte serial."""
        return self._checked(BlkRequest.get_id(self.memory), "get_id", queue).data
