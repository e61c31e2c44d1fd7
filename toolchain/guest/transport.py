"""How the guest driver reaches a device: vhost-user, or hvisor's virtio-mmio.

A :class:`Transport` is the driver-side half of virtio's device initialisation
(virtio 1.2 section 3.1): discover the device and its features, accept
features, set up queues, go live, read config space, and reset.  Each queue
gets :class:`Signals` from its transport: how to kick the device and how an
interrupt from it is seen.  Everything above (split virtqueues, blk
requests, shadow disk) is the same over every transport, so a test written
once runs over all of them.

A device that finds a ring breaking a rule stops using it and tells the
driver it needs a reset (virtio 1.2 section 2.1.2, DEVICE_NEEDS_RESET); how
the driver learns that is the transport's: :meth:`Transport.needs_reset`
and :meth:`Transport.wait_needs_reset` answer it the same way everywhere.
"""

from __future__ import annotations

import os
import select
import socket
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .vhost_user import F_PROTOCOL_FEATURES, ProtocolFeature, VhostUserFrontend, eventfd

if TYPE_CHECKING:
    from .memory import GuestMemory
    from .virtq import SplitVirtqueue


class TransportError(Exception):
    """The transport cannot do what was asked (e.g. a vhost-user-only operation)."""


@dataclass(frozen=True)
class NeedsReset:
    """The device told the driver it needs a reset (virtio 1.2 section 2.1.2).

    ``how`` says what the driver saw: the vhost-user backend closed the
    connection (libvhost-user's way on a broken ring), or virtio-mmio's
    Status register with DEVICE_NEEDS_RESET (0x40) set.
    ``config_interrupt`` is whether virtio-mmio's InterruptStatus had the
    configuration-change bit (0x2) pending, or the driver has taken one
    since initialisation (virtio 1.2 sections 2.1.2, 4.2.2); None on a
    transport without such a bit.
    """

    transport: str
    how: str
    config_interrupt: bool | None = None


class Signals(ABC):
    """One queue's doorbell and interrupt line."""

    @abstractmethod
    def kick(self) -> None:
        """Tell the device that the avail ring moved."""

    @abstractmethod
    def fileno(self) -> int:
        """An fd that becomes readable when the device may have interrupted."""

    @abstractmethod
    def drain(self) -> int:
        """Consume pending interrupts for this queue; return how many were seen (0 or more)."""

    def close(self) -> None:  # noqa: B027 - most signals own nothing
        """Release what the signals own."""


class EventfdSignals(Signals):
    """vhost-user's kick and call eventfds."""

    def __init__(self) -> None:
        self.kick_fd = eventfd()
        self.call_fd = eventfd()

    def kick(self) -> None:
        os.eventfd_write(self.kick_fd, 1)

    def fileno(self) -> int:
        return self.call_fd

    def drain(self) -> int:
        try:
            os.eventfd_read(self.call_fd)
        except BlockingIOError:
            return 0
        return 1

    def close(self) -> None:
        for fd in (self.kick_fd, self.call_fd):
            if fd >= 0:
                os.close(fd)
        self.kick_fd = self.call_fd = -1


class Transport(ABC):
    """The driver's side of one device's initialisation and control."""

    #: Short name used in test ids and reports.
    name = "transport"

    @abstractmethod
    def begin(self) -> tuple[int, int]:
        """Reset and discover the device; return (offered features, max queues)."""

    @abstractmethod
    def set_features(self, features: int, memory: GuestMemory) -> None:
        """Accept ``features`` and make guest RAM known to the device if needed."""

    @abstractmethod
    def signals(self, index: int) -> Signals:
        """New signals for queue ``index``."""

    @abstractmethod
    def setup_queue(self, q: SplitVirtqueue, base: int = 0) -> None:
        """Hand the ring's addresses and size to the device and enable it."""

    def start(self) -> None:  # noqa: B027 - vhost-user has no DRIVER_OK step
        """All queues are set up: the driver is live (DRIVER_OK)."""

    @abstractmethod
    def read_config(self, size: int) -> bytes:
        """The first ``size`` bytes of the device's config space."""

    @abstractmethod
    def close(self) -> None:
        """Stop using the device (vhost-user: disconnect; mmio: reset)."""

    @abstractmethod
    def reopen(self) -> Transport:
        """A transport to the same device for a fresh initialisation."""

    @abstractmethod
    def needs_reset(self) -> NeedsReset | None:
        """Whether the device has told the driver it needs a reset (no waiting)."""

    def wait_needs_reset(self, timeout: float, interval: float = 0.005) -> NeedsReset | None:
        """Wait up to ``timeout`` seconds for the device to say it needs a reset."""
        deadline = time.monotonic() + timeout
        while True:
            told = self.needs_reset()
            if told is not None or time.monotonic() >= deadline:
                return told
            time.sleep(interval)

    # vhost-user-only operations; other transports refuse them with a reason.
    def stop_queue(self, index: int) -> int:
        """Stop a queue and return the device's next avail index."""
        raise TransportError(f"{self.name}: no per-queue stop (vhost-user GET_VRING_BASE only)")


#: vhost-user protocol features the driver asks for when offered.
WANTED_PROTOCOL_FEATURES = sum(
    1 << b for b in (ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIG)
)


class VhostUserTransport(Transport):
    """A vhost-user frontend on a unix socket (QEMU's role)."""

    name = "vhost-user"

    def __init__(self, socket_path: str, timeout: float, connect_timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.frontend = VhostUserFrontend(socket_path, timeout, connect_timeout)
        self.protocol_features = 0

    def begin(self) -> tuple[int, int]:
        fe = self.frontend
        offered = fe.get_features()
        max_queues = 1
        if offered & (1 << F_PROTOCOL_FEATURES):
            self.protocol_features = fe.get_protocol_features() & WANTED_PROTOCOL_FEATURES
            fe.set_protocol_features(self.protocol_features)
            if self.protocol_features & (1 << ProtocolFeature.MQ):
                max_queues = fe.get_queue_num()
        fe.set_owner()
        return offered, max_queues

    def set_features(self, features: int, memory: GuestMemory) -> None:
        self.frontend.set_features(features)
        self.frontend.set_mem_table(memory)

    def signals(self, index: int) -> Signals:
        return EventfdSignals()

    def setup_queue(self, q: SplitVirtqueue, base: int = 0) -> None:
        q.setup(self.frontend, base)

    def read_config(self, size: int) -> bytes:
        if not self.protocol_features & (1 << ProtocolFeature.CONFIG):
            raise TransportError("backend did not offer VHOST_USER_PROTOCOL_F_CONFIG")
        return self.frontend.get_config(0, size)

    def stop_queue(self, index: int) -> int:
        return self.frontend.get_vring_base(index)

    def needs_reset(self) -> NeedsReset | None:
        return self.wait_needs_reset(0)

    def wait_needs_reset(self, timeout: float, interval: float = 0.005) -> NeedsReset | None:
        """The backend closed the connection (EOF or reset) within ``timeout``.

        Without a backend-initiated channel (none is negotiated) the backend
        never sends anything unasked, so a readable socket means it is gone.
        A backend that died looks the same: check that it is alive.
        """
        sock = self.frontend.sock
        if sock.fileno() < 0:
            raise TransportError(f"{self.name}: the frontend closed the connection itself")
        readable, _, _ = select.select([sock], [], [], max(0.0, timeout))
        if not readable:
            return None
        try:
            data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        except OSError as e:  # ECONNRESET: closed with unread data
            return NeedsReset(self.name, f"the backend closed the connection ({e.strerror})")
        if data:
            raise TransportError(f"{self.name}: the backend sent a message nobody asked for")
        return NeedsReset(self.name, "the backend closed the connection")

    def close(self) -> None:
        self.frontend.close()

    def reopen(self) -> Transport:
        return VhostUserTransport(self.socket_path, self.timeout, self.connect_timeout)
