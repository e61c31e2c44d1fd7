"""The bridge world: hvisor (EL2) and its kernel module, played off the board.

A daemon serving virtio-mmio devices to hvisor zones (the standalone
runtime's ``--hvisor`` transport, or hvisor-tool's own ``hvisor virtio
start`` linked against the /dev/hvisor stand-in) attaches to a
:class:`BridgeWorld`.  The world owns the bridge page and every zone's
memory, posts MMIO accesses as hvisor's trap handler does, and receives the
interrupts the daemon injects.  :class:`MmioTransport` is a virtio-mmio
driver on top of it that the guest layer (toolchain.guest) drives exactly
as it drives vhost-user.
"""

from .mmio import MmioTransport
from .world import BridgeError, BridgeWorld, Device, Zone

__all__ = ["BridgeError", "BridgeWorld", "Device", "MmioTransport", "Zone"]
