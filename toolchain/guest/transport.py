"""How the guest driver reaches a device: vhost-user, or hvisor's virtio-mmio.

A :class:`Transport` is the driver-side half of virtio's device initialisation
(virtio 1.2 section 3.1): discover the device and its features, accept
features, set up queues, go live, read config space, and reset.  Each queue
gets :class:`Signals` from its transport: how to kick the device and how an
interrupt from it is seen.  Everything above (split virtqueues, blk
requests, shadow disk) is the same over every transport, so a test written
once runs over all of them.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from .vhost_user import F_PROTOCOL_FEATURES, ProtocolFeature, VhostUserFrontend, eventfd

if TYPE_CHECKING:
    from .memory import GuestMemory
    from .virtq import SplitVirtqueue


class TransportError(Exception):
    """The transport cannot do what was asked (e.g. a vhost-user-only operation)."""


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

    def close(self) -> None:
        self.frontend.close()

    def reopen(self) -> Transport:
        return VhostUserTransport(self.socket_path, self.timeout, self.connect_timeout)
