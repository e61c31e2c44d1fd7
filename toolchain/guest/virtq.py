"""Split virtqueue (virtio 1.2 section 2.7) laid out in guest memory."""

from __future__ import annotations

import select
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .transport import EventfdSignals, Signals, TransportError

if TYPE_CHECKING:
    from .memory import GuestMemory
    from .vhost_user import VhostUserFrontend

VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1

DESC = struct.Struct("<QIHH")
USED_ELEM = struct.Struct("<II")

#: One buffer of a chain: (gpa, length, device-writable).
BufferSpec = tuple[int, int, bool]


class VirtqueueError(Exception):
    """The device broke a ring invariant, or the driver ran out of descriptors."""


@dataclass(frozen=True)
class UsedElem:
    """One used-ring entry."""

    id: int
    len: int


def need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """vring_need_event(): whether moving old->new crosses ``event_idx``."""
    return (new_idx - event_idx - 1) & 0xFFFF < (new_idx - old_idx) & 0xFFFF


class SplitVirtqueue:
    """A split virtqueue owned by the driver (us), with its own eventfds."""

    def __init__(
        self,
        memory: GuestMemory,
        index: int,
        size: int,
        event_idx: bool = False,
        signals: Signals | None = None,
    ) -> None:
        if size <= 0 or size > 32768 or size & (size - 1):
            raise VirtqueueError(f"queue size {size} must be a power of two <= 32768")
        self.memory = memory
        self.index = index
        self.size = size
        self.event_idx = event_idx
        self.desc_gpa = memory.alloc(16 * size, 16)
        self.avail_gpa = memory.alloc(6 + 2 * size, 2)
        self.used_gpa = memory.alloc(6 + 8 * size, 4)
        memory.fill(self.desc_gpa, 16 * size, 0)
        memory.fill(self.avail_gpa, 6 + 2 * size, 0)
        memory.fill(self.used_gpa, 6 + 8 * size, 0)
        self.signals = signals if signals is not None else EventfdSignals()
        self._avail_idx = 0  # driver's shadow of avail->idx (free-running)
        self.last_used = 0  # used idx up to which we have consumed
        self.notifications = 0  # call eventfd reads that returned a count
        self._free = list(range(size))
        self._chains: dict[int, tuple[list[int], int | None]] = {}

    # -- control plane --------------------------------------------------------

    @property
    def kick_fd(self) -> int:
        """vhost-user's kick eventfd."""
        return self._eventfds().kick_fd

    @property
    def call_fd(self) -> int:
        """vhost-user's call eventfd."""
        return self._eventfds().call_fd

    def _eventfds(self) -> EventfdSignals:
        if not isinstance(self.signals, EventfdSignals):
            raise TransportError(f"queue {self.index}: no eventfds on this transport")
        return self.signals

    def setup(self, frontend: VhostUserFrontend, base: int = 0) -> None:
        """Send NUM, BASE, ADDR, CALL, KICK and ENABLE for this ring."""
        m = self.memory
        frontend.set_vring_num(self.index, self.size)
        frontend.set_vring_base(self.index, base)
        frontend.set_vring_addr(
            self.index,
            m.gpa_to_uaddr(self.desc_gpa),
            m.gpa_to_uaddr(self.used_gpa),
            m.gpa_to_uaddr(self.avail_gpa),
        )
        frontend.set_vring_call(self.index, self.call_fd)
        frontend.set_vring_kick(self.index, self.kick_fd)
        frontend.set_vring_enable(self.index, True)

    # -- descriptors ------------------------------------------------------------

    def write_desc(self, i: int, addr: int, length: int, flags: int, next_: int = 0) -> None:
        """Write descriptor ``i`` of the table verbatim (no validation)."""
        self.memory.write(self.desc_gpa + 16 * i, DESC.pack(addr, length, flags, next_))

    def read_desc(self, i: int) -> tuple[int, int, int, int]:
        """Read descriptor ``i`` as (addr, len, flags, next)."""
        addr, length, flags, nxt = DESC.unpack(self.memory.read(self.desc_gpa + 16 * i, 16))
        return addr, length, flags, nxt

    @property
    def num_free(self) -> int:
        """Descriptors not currently owned by a chain."""
        return len(self._free)

    def _take(self, n: int) -> list[int]:
        if n == 0 or n > len(self._free):
            raise VirtqueueError(
                f"queue {self.index}: need {n} descriptors, {len(self._free)} free"
            )
        taken, self._free = self._free[:n], self._free[n:]
        return taken

    def add_chain(self, buffers: list[BufferSpec]) -> int:
        """Link ``buffers`` into a descriptor chain; return its head (not yet published)."""
        ids = self._take(len(buffers))
        for k, (gpa, length, writable) in enumerate(buffers):
            last = k == len(buffers) - 1
            flags = (0 if last else VRING_DESC_F_NEXT) | (VRING_DESC_F_WRITE if writable else 0)
            self.write_desc(ids[k], gpa, length, flags, 0 if last else ids[k + 1])
        self._chains[ids[0]] = (ids, None)
        return ids[0]

    def add_indirect_chain(self, buffers: list[BufferSpec]) -> int:
        """Put ``buffers`` in an indirect table referenced by one descriptor; return the head."""
        n = len(buffers)
        table = self.memory.alloc(16 * n, 16)
        for k, (gpa, length, writable) in enumerate(buffers):
            last = k == n - 1
            flags = (0 if last else VRING_DESC_F_NEXT) | (VRING_DESC_F_WRITE if writable else 0)
            self.memory.write(table + 16 * k, DESC.pack(gpa, length, flags, 0 if last else k + 1))
        (head,) = self._take(1)
        self.write_desc(head, table, 16 * n, VRING_DESC_F_INDIRECT)
        self._chains[head] = ([head], table)
        return head

    def free_chain(self, head: int) -> None:
        """Return the descriptors (and indirect table) of chain ``head``."""
        try:
            ids, table = self._chains.pop(head)
        except KeyError:
            raise VirtqueueError(f"queue {self.index}: no chain with head {head}") from None
        if table is not None:
            self.memory.free(table)
        self._free.extend(ids)

    def owns(self, head: int) -> bool:
        """Whether ``head`` is an outstanding chain of ours."""
        return head in self._chains

    # -- avail ring ---------------------------------------------------------------

    @property
    def avail_idx(self) -> int:
        """avail->idx as stored in guest memory."""
        return self.memory.read_u16(self.avail_gpa + 2)

    @property
    def used_idx(self) -> int:
        """used->idx as stored in guest memory."""
        return self.memory.read_u16(self.used_gpa + 2)

    @property
    def used_flags(self) -> int:
        """used->flags (VRING_USED_F_NO_NOTIFY)."""
        return self.memory.read_u16(self.used_gpa)

    def set_avail_entry(self, slot: int, head: int) -> None:
        """Write avail->ring[slot % size] = head verbatim."""
        self.memory.write_u16(self.avail_gpa + 4 + 2 * (slot % self.size), head)

    def set_avail_idx(self, value: int) -> None:
        """Store avail->idx verbatim (and adopt it as the driver's shadow)."""
        self._avail_idx = value & 0xFFFF
        self.memory.write_u16(self.avail_gpa + 2, self._avail_idx)

    def publish(self, head: int) -> None:
        """Append ``head`` to the avail ring, then bump avail->idx."""
        self.set_avail_entry(self._avail_idx, head)
        self.set_avail_idx(self._avail_idx + 1)

    def kick(self) -> None:
        """Notify the device (kick eventfd, or a QueueNotify write)."""
        self.signals.kick()

    def kick_needed(self, old_avail: int) -> bool:
        """Whether the device asked to be kicked for avail moving from ``old_avail``."""
        if self.event_idx:
            return need_event(self.avail_event, self._avail_idx, old_avail)
        return not self.used_flags & VRING_USED_F_NO_NOTIFY

    # -- notification suppression -------------------------------------------------

    def set_no_interrupt(self, on: bool) -> None:
        """Set or clear VRING_AVAIL_F_NO_INTERRUPT in avail->flags."""
        self.memory.write_u16(self.avail_gpa, VRING_AVAIL_F_NO_INTERRUPT if on else 0)

    @property
    def used_event(self) -> int:
        """avail->used_event (avail->ring[size])."""
        return self.memory.read_u16(self.avail_gpa + 4 + 2 * self.size)

    def set_used_event(self, value: int) -> None:
        """Write avail->used_event."""
        self.memory.write_u16(self.avail_gpa + 4 + 2 * self.size, value)

    @property
    def avail_event(self) -> int:
        """used->avail_event (the u16 after used->ring[size])."""
        return self.memory.read_u16(self.used_gpa + 4 + 8 * self.size)

    # -- used ring ----------------------------------------------------------------

    def read_used(self, pos: int) -> UsedElem:
        """Read used->ring[pos % size]."""
        gpa = self.used_gpa + 4 + 8 * (pos % self.size)
        ident, length = USED_ELEM.unpack(self.memory.read(gpa, 8))
        return UsedElem(ident, length)

    def _drain_call(self) -> None:
        self.notifications += self.signals.drain()

    def pending_used(self) -> int:
        """How many used entries the device has added since we last consumed."""
        return (self.used_idx - self.last_used) & 0xFFFF

    def wait_used(self, timeout: float = 5.0, count: int = 1) -> list[UsedElem]:
        """Wait until ``count`` new used entries exist (or ``timeout``); return all new ones.

        Waits on the call eventfd but re-reads used->idx every few ms, so it
        also works with interrupts suppressed.  Returns what arrived (maybe
        fewer than ``count``) when the timeout expires.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.event_idx:
                self.set_used_event(self.last_used)
            pending = self.pending_used()
            if pending > self.size:
                raise VirtqueueError(
                    f"queue {self.index}: used idx {self.used_idx} "
                    f"is {pending} ahead of {self.last_used}"
                )
            remaining = deadline - time.monotonic()
            if pending >= count or remaining <= 0:
                break
            readable, _, _ = select.select([self.signals], [], [], min(remaining, 0.02))
            if readable:
                self._drain_call()
        self._drain_call()
        out = [self.read_used(self.last_used + k) for k in range(pending)]
        self.last_used = (self.last_used + pending) & 0xFFFF
        if self.event_idx:
            self.set_used_event(self.last_used)  # ask for a call on the next entry
        return out

    def close(self) -> None:
        """Close the eventfds and free the ring memory (idempotent)."""
        if self.signals is None:
            return
        self.signals.close()
        self.signals = None  # type: ignore[assignment]
        for head in list(self._chains):
            self.free_chain(head)
        for gpa in (self.desc_gpa, self.avail_gpa, self.used_gpa):
            self.memory.free(gpa)
