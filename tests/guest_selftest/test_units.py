"""Backend-free tests of guest memory, the virtqueue layout, the shadow disk, and the
virtio-mmio driver's needs-reset check against a stand-in register file."""

from __future__ import annotations

import time

import pytest

from toolchain.bridge.mmio import MmioTransport
from toolchain.bridge.world import Device
from toolchain.guest import (
    BlkConfig,
    GuestMemory,
    GuestMemoryError,
    ShadowDisk,
    ShadowMismatch,
    SplitVirtqueue,
)
from toolchain.guest.blk import GUARD, GUARD_LEN, BlkRequest, split_sizes
from toolchain.guest.memory import UADDR_OFFSET
from toolchain.guest.virtq import (
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    need_event,
)


def test_memory_alloc_free_reuse() -> None:
    with GuestMemory() as m:
        a = m.alloc(100, 64)
        b = m.alloc(10)
        assert a % 64 == 0 and b >= a + 100
        m.free(a)
        assert m.alloc(64, 64) == a
        with pytest.raises(GuestMemoryError):
            m.free(a + 1)
        assert m.gpa_to_uaddr(b) == b + UADDR_OFFSET


def test_memory_regions_gap_and_straddle() -> None:
    with GuestMemory.with_gap(2, 1 << 20, gap=1 << 20) as m:
        r0, r1 = m.regions
        assert r1.guest_phys_addr == r0.end + (1 << 20)
        with pytest.raises(GuestMemoryError):
            m.read(r0.end, 1)
        assert m.alloc(16, region=1) >= r1.guest_phys_addr
    with GuestMemory([(0x1000_0000, 1 << 20), (0x1010_0000, 1 << 20)]) as m:
        m.write(0x1010_0000 - 3, b"abcdef")
        assert m.read(0x1010_0000 - 3, 6) == b"abcdef"
        assert m.regions[1].mm[:3] == b"def"


def test_virtqueue_chain_layout() -> None:
    with GuestMemory() as m:
        q = SplitVirtqueue(m, 0, 8)
        head = q.add_chain([(0x1000_1000, 16, False), (0x1000_2000, 1, True)])
        a0, l0, f0, n0 = q.read_desc(head)
        assert (a0, l0, f0) == (0x1000_1000, 16, VRING_DESC_F_NEXT)
        assert q.read_desc(n0)[:3] == (0x1000_2000, 1, VRING_DESC_F_WRITE)
        q.publish(head)
        assert q.avail_idx == 1 and m.read_u16(q.avail_gpa + 4) == head
        ind = q.add_indirect_chain([(0x1000_3000, 4, False)])
        assert q.read_desc(ind)[1:3] == (16, VRING_DESC_F_INDIRECT)
        q.free_chain(head)
        q.free_chain(ind)
        assert q.num_free == 8
        q.close()


def test_need_event() -> None:
    assert need_event(0, 1, 0)
    assert not need_event(5, 3, 2)
    assert need_event(0xFFFF, 0, 0xFFFE)


def test_request_guards_detect_overwrite() -> None:
    with GuestMemory() as m:
        req = BlkRequest.read(m, 0, 1024, segments=2)
        assert req.check_guards() == []
        s = req.segments[1]
        m.write(s.gpa + s.length, b"\x00")
        m.write(req.segments[0].gpa, b"\xff")
        assert len(req.check_guards()) == 2
        assert m.read(s.alloc_gpa, GUARD_LEN) == GUARD
        req.free()


def test_split_sizes_and_config_parse() -> None:
    assert split_sizes(1024, 3) == [341, 341, 342]
    assert split_sizes(10, [3, 7]) == [3, 7]
    cfg = BlkConfig.parse(bytes(range(60)))
    assert cfg.capacity == int.from_bytes(bytes(range(8)), "little")
    assert BlkConfig.SIZE == 60


def test_shadow_disk() -> None:
    s = ShadowDisk(4096)
    s.write(512, b"\x01" * 512)
    s.check_read(512, b"\x01" * 512)
    with pytest.raises(ShadowMismatch):
        s.check_read(0, b"\x01")
    s.forget(0, 512)
    s.check_read(0, b"\x99" * 512)


class _RegisterFile:
    """A stand-in for the bridge world: register reads and writes of one device."""

    def __init__(self, status: int, isr: int) -> None:
        self.regs = {0x070: status, 0x060: isr}
        self.pending_irqs = 0
        self.acked: list[int] = []

    def access(
        self,
        zone: int,
        cpu: int,
        address: int,
        size: int,
        value: int = 0,
        write: bool = False,
        timeout: float = 10.0,
    ) -> int:
        off = address - DEVICE.addr
        if write:
            if off == 0x064:  # InterruptACK
                self.acked.append(value)
                self.regs[0x060] &= ~value
            else:
                self.regs[off] = value
            return 0
        return self.regs.get(off, 0)

    def take_irqs(self, zone: int, irq: int) -> int:
        n, self.pending_irqs = self.pending_irqs, 0
        return n


DEVICE = Device(0xA003C00, 78)


def _mmio(status: int, isr: int) -> tuple[MmioTransport, _RegisterFile]:
    world = _RegisterFile(status, isr)
    return MmioTransport(world, 1, DEVICE), world  # type: ignore[arg-type]


def test_mmio_needs_reset_reads_status_and_the_config_interrupt_bit() -> None:
    """virtio 1.2 §2.1, §4.2.2: DEVICE_NEEDS_RESET (0x40) in Status; InterruptStatus bit 1."""
    t, _ = _mmio(0x0F, 0)
    assert t.needs_reset() is None
    t, world = _mmio(0x4F, 0x2)
    told = t.needs_reset()
    assert told is not None and told.transport == "hvisor"
    assert told.config_interrupt is True and "0x4f" in told.how
    assert world.acked == []  # reading does not acknowledge: the handler's job
    t, _ = _mmio(0x4F, 0)
    told = t.needs_reset()
    assert told is not None and told.config_interrupt is False


def test_mmio_needs_reset_remembers_a_config_interrupt_the_handler_took() -> None:
    """The interrupt handler acknowledged the config-change bit before the driver looked."""
    t, world = _mmio(0x4F, 0x3)
    world.pending_irqs = 1
    assert t.service_interrupt() == 1
    assert world.acked == [0x3] and world.regs[0x060] == 0
    told = t.needs_reset()
    assert told is not None and told.config_interrupt is True


def test_mmio_wait_needs_reset_polls_until_the_bit_appears_or_times_out() -> None:
    t, world = _mmio(0x0F, 0)
    t0 = time.monotonic()
    assert t.wait_needs_reset(0.05) is None
    assert time.monotonic() - t0 >= 0.05
    world.regs[0x070] = 0x4F
    assert t.wait_needs_reset(1.0) is not None
