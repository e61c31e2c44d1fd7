"""A virtio-mmio driver (virtio 1.2 section 4.2) over the bridge world.

Every register access is a trapped access posted to the daemon through the
bridge, as hvisor posts a guest's; reads block until the daemon answers.
The driver follows section 4.2.3's initialisation order and Linux's
virtio_mmio habits (Low half before High half, 32-bit accesses to
registers, config space read 32 bits at a time).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..guest.transport import NeedsReset, Signals, Transport, TransportError
from .world import BridgeError, BridgeWorld, Device

if TYPE_CHECKING:
    from ..guest.memory import GuestMemory
    from ..guest.virtq import SplitVirtqueue

# Register offsets (virtio 1.2 section 4.2.2).
MAGIC_VALUE = 0x000
VERSION = 0x004
DEVICE_ID = 0x008
VENDOR_ID = 0x00C
DEVICE_FEATURES = 0x010
DEVICE_FEATURES_SEL = 0x014
DRIVER_FEATURES = 0x020
DRIVER_FEATURES_SEL = 0x024
QUEUE_SEL = 0x030
QUEUE_NUM_MAX = 0x034
QUEUE_NUM = 0x038
QUEUE_READY = 0x044
QUEUE_NOTIFY = 0x050
INTERRUPT_STATUS = 0x060
INTERRUPT_ACK = 0x064
STATUS = 0x070
QUEUE_DESC_LOW = 0x080
QUEUE_DESC_HIGH = 0x084
QUEUE_DRIVER_LOW = 0x090
QUEUE_DRIVER_HIGH = 0x094
QUEUE_DEVICE_LOW = 0x0A0
QUEUE_DEVICE_HIGH = 0x0A4
CONFIG_GENERATION = 0x0FC
CONFIG = 0x100

MAGIC = 0x74726976  # "virt"
VIRTIO_ID_BLOCK = 2

# Device status bits (section 2.1).
ACKNOWLEDGE = 1
DRIVER = 2
DRIVER_OK = 4
FEATURES_OK = 8
DEVICE_NEEDS_RESET = 64
FAILED = 128

INT_VRING = 1
INT_CONFIG = 2

#: Queues a device may have in hvisor-tool (VIRTIO_MAX_VQUEUES).
MAX_QUEUES = 4


class MmioSignals(Signals):
    """A queue's QueueNotify doorbell and the device's (shared) interrupt line."""

    def __init__(self, transport: MmioTransport, index: int) -> None:
        self.transport = transport
        self.index = index

    def kick(self) -> None:
        self.transport.write(QUEUE_NOTIFY, self.index)

    def fileno(self) -> int:
        return self.transport.world.fileno()

    def drain(self) -> int:
        return self.transport.service_interrupt()


class MmioTransport(Transport):
    """One virtio-mmio device of one zone, driven by one vCPU of that zone."""

    name = "hvisor"

    def __init__(
        self, world: BridgeWorld, zone: int, device: Device, cpu: int = 1, timeout: float = 10.0
    ) -> None:
        self.world = world
        self.zone = zone
        self.device = device
        self.cpu = cpu
        self.timeout = timeout
        self.status = 0
        self.interrupts = 0  # interrupts taken (line raised, status read, acked)
        self.isr_seen = 0  # every InterruptStatus bit read since initialisation

    # -- register access ------------------------------------------------------------

    def read(self, offset: int, size: int = 4) -> int:
        """Read a register (the daemon's 64-bit answer, cut to ``size`` bytes)."""
        value = self.world.access(
            self.zone, self.cpu, self.device.addr + offset, size, timeout=self.timeout
        )
        return value & ((1 << (8 * size)) - 1)

    def write(self, offset: int, value: int, size: int = 4) -> None:
        """Write a register."""
        self.world.access(
            self.zone, self.cpu, self.device.addr + offset, size, value, True, self.timeout
        )

    def set_status(self, bits: int) -> None:
        """OR ``bits`` into the device status (0 resets, and waits for the reset).

        virtio 1.2 section 2.1.2: after writing 0 to device status the driver
        MUST wait for a read of device status to return 0 before
        reinitializing the device.
        """
        self.status = self.status | bits if bits else 0
        self.write(STATUS, self.status)
        if bits:
            return
        deadline = time.monotonic() + self.timeout
        while self.read(STATUS) != 0:
            if time.monotonic() > deadline:
                raise TransportError(f"device status did not read 0 {self.timeout}s after reset")

    # -- Transport --------------------------------------------------------------------

    def begin(self) -> tuple[int, int]:
        magic, version, device_id = self.read(MAGIC_VALUE), self.read(VERSION), self.read(DEVICE_ID)
        if magic != MAGIC or version != 2 or device_id != VIRTIO_ID_BLOCK:
            raise TransportError(
                f"no virtio-mmio v2 block device at {self.device.addr:#x} "
                f"(magic {magic:#x}, version {version}, device id {device_id})"
            )
        self.set_status(0)
        self.set_status(ACKNOWLEDGE)
        self.set_status(DRIVER)
        offered = 0
        for sel in (0, 1):
            self.write(DEVICE_FEATURES_SEL, sel)
            offered |= self.read(DEVICE_FEATURES) << (32 * sel)
        queues = 0
        for i in range(MAX_QUEUES):  # QueueNumMax is 0 for a queue that does not exist
            self.write(QUEUE_SEL, i)
            if self.read(QUEUE_NUM_MAX) == 0:
                break
            queues += 1
        self.write(QUEUE_SEL, 0)
        return offered, queues

    def set_features(self, features: int, memory: GuestMemory) -> None:
        for sel in (0, 1):
            self.write(DRIVER_FEATURES_SEL, sel)
            self.write(DRIVER_FEATURES, features >> (32 * sel) & 0xFFFF_FFFF)
        self.set_status(FEATURES_OK)
        if not self.read(STATUS) & FEATURES_OK:
            raise TransportError("the device did not accept the features (FEATURES_OK clear)")

    def signals(self, index: int) -> Signals:
        return MmioSignals(self, index)

    def setup_queue(self, q: SplitVirtqueue, base: int = 0) -> None:
        if base:
            raise TransportError(f"{self.name}: a ring always starts at index 0 on virtio-mmio")
        self.write(QUEUE_SEL, q.index)
        if self.read(QUEUE_READY):
            raise TransportError(f"queue {q.index} is already live")
        limit = self.read(QUEUE_NUM_MAX)
        if q.size > limit:
            raise TransportError(f"queue {q.index}: size {q.size} above QueueNumMax {limit}")
        self.write(QUEUE_NUM, q.size)
        for low, gpa in (
            (QUEUE_DESC_LOW, q.desc_gpa),
            (QUEUE_DRIVER_LOW, q.avail_gpa),
            (QUEUE_DEVICE_LOW, q.used_gpa),
        ):
            self.write(low, gpa & 0xFFFF_FFFF)
            self.write(low + 4, gpa >> 32)
        self.write(QUEUE_READY, 1)

    def start(self) -> None:
        self.set_status(DRIVER_OK)

    def read_config(self, size: int) -> bytes:
        for _ in range(10):
            generation = self.read(CONFIG_GENERATION)
            data = b"".join(
                self.read(CONFIG + off).to_bytes(4, "little") for off in range(0, size, 4)
            )
            if self.read(CONFIG_GENERATION) == generation:
                return data[:size]
        raise TransportError("config generation kept changing")

    def service_interrupt(self) -> int:
        """Take the device's pending interrupts: read InterruptStatus, ACK it."""
        if not self.world.take_irqs(self.zone, self.device.irq):
            return 0
        isr = self.read(INTERRUPT_STATUS)
        self.isr_seen |= isr
        if isr:
            self.write(INTERRUPT_ACK, isr)
        self.interrupts += 1
        return 1

    def needs_reset(self) -> NeedsReset | None:
        """DEVICE_NEEDS_RESET in Status (polled: HEAD's core cannot raise the interrupt).

        Also reports whether InterruptStatus has the configuration-change bit
        pending or the driver took one since initialisation; the pending bit
        is left for the interrupt handler to acknowledge.
        """
        status = self.read(STATUS)
        if not status & DEVICE_NEEDS_RESET:
            return None
        isr = self.read(INTERRUPT_STATUS)
        return NeedsReset(
            self.name, f"Status reads {status:#x}", bool((isr | self.isr_seen) & INT_CONFIG)
        )

    def close(self) -> None:
        """Reset the device (STATUS = 0); nothing to do if the daemon is gone."""
        try:
            if self.world.conn is not None:
                self.set_status(0)
        except (BridgeError, TransportError):
            pass

    def reopen(self) -> Transport:
        return MmioTransport(self.world, self.zone, self.device, self.cpu, self.timeout)
