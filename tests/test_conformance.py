"""virtio 1.2 conformance of the device's request handling: every spec x target x transport.

Written from the virtio 1.2 text (sections cited per test and per case) and
the device request rules of the conformance rewrite (docs/conformance.md).
The cases are data (toolchain/guest/conformance.py); each builds one chain
verbatim in guest RAM (two regions with a gap between them) and names the
outcome the rules give:

- a legal layout (header split 8+8, header merged with the OUT data, the
  status at the tail of the IN buffer, data in many small descriptors,
  zero-length descriptors anywhere, indirect placements) is served;
- a request fault completes with IOERR / UNSUPP written into the chain's
  last device-writable byte, used length 1 (0 and nothing written when the
  chain has no device-writable byte);
- a structural fault completes nothing, not even a good chain published
  after it, and the device tells the driver it needs a reset
  (vhost-user: the backend closes the connection; virtio-mmio: Status has
  DEVICE_NEEDS_RESET and InterruptStatus the configuration-change bit); a
  reset recovers.

Every case then checks that nothing else in guest memory changed (guard
bytes, a snapshot around everything the chain references and the ends of
RAM), that the image holds exactly what the successful writes put there,
and that a write/read round trip works afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from toolchain.bridge.backend import ZONE_ID, HvisorBackend
from toolchain.bridge.mmio import (
    QUEUE_DESC_HIGH,
    QUEUE_DESC_LOW,
    QUEUE_DEVICE_HIGH,
    QUEUE_DEVICE_LOW,
    QUEUE_DRIVER_HIGH,
    QUEUE_DRIVER_LOW,
    QUEUE_NOTIFY,
    QUEUE_NUM,
    QUEUE_READY,
    QUEUE_SEL,
    MmioTransport,
)
from toolchain.guest import Backend, BlkDevice, GuestMemory, ShadowDisk, VhostUserError
from toolchain.guest.conformance import (
    INDIRECT_FAULTS,
    INDIRECT_LAYOUTS,
    LAYOUTS,
    LIMITS,
    REQUEST_FAULTS,
    STRUCTURAL_FAULTS,
    Case,
    Kind,
    Limits,
    Result,
    Skip,
    check_device_works,
    run_case,
)
from toolchain.guest.hostile import VRING_DESC_F_WRITE, AlignedRequest, MemoryWatch, link, outside
from toolchain.guest.memory import UADDR_OFFSET
from toolchain.guest.transport import EventfdSignals, NeedsReset, VhostUserTransport

from .conftest import DeviceUnderTest, assert_image_holds

REGION = 16 * 1024 * 1024
GAP = 0x10_0000


# ---- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture
def connect(dut: DeviceUnderTest, backend: Backend) -> Iterator[Callable[..., BlkDevice]]:
    """Factory: a driver on guest RAM with a gap, refusing ``refuse`` feature bits.

    One per test: on hvisor the zone's RAM is the first driver's.
    """
    made: list[BlkDevice] = []

    def make(refuse: int = 0) -> BlkDevice:
        d = dut.driver(
            memory=GuestMemory.with_gap(2, REGION, GAP),
            queue_size=dut.spec.device.queue_size,
            feature_mask=~refuse,
        )
        made.append(d)
        backend.attach(d)
        return d

    yield make
    for d in made:
        d.close()


def settle(dut: DeviceUnderTest) -> float:
    """How long to watch for something that must not happen."""
    return 0.5 if dut.target.emulated else 0.2


def limits_of(dev: BlkDevice, dut: DeviceUnderTest) -> Limits:
    """What the cases may assume: the device's config and what was negotiated."""
    return Limits.of(dev, serial=dut.spec.device.serial)


def conform(
    case: Case,
    dut: DeviceUnderTest,
    backend: Backend,
    connect: Callable[..., BlkDevice],
    shadow: ShadowDisk,
    image: Path,
) -> Result:
    """Run ``case``; assert the rules' outcome, recovery, a working device, the image."""
    dev = connect(case.refuse)
    limits = limits_of(dev, dut)
    try:
        result = run_case(dev, case, limits, shadow, settle=settle(dut))
    except Skip as e:
        pytest.skip(str(e))
    assert result.mismatches() == [], result.report()
    assert backend.alive(), "the backend died"
    if result.told is not None:
        dev.reconnect()  # vhost-user: a new connection; virtio-mmio: Status = 0, then init
        assert dev.needs_reset() is None, "still needs a reset after one"
    assert check_device_works(dev, limits, shadow) == []
    assert_image_holds(image, shadow)
    return result


def ids(table: dict[str, Case]) -> list[str]:
    return list(table)


# ---- the case tables ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ids(LAYOUTS))
def test_a_legal_layout_is_served(
    dut: DeviceUnderTest,
    backend: Backend,
    connect: Callable[..., BlkDevice],
    shadow: ShadowDisk,
    image: Path,
    name: str,
) -> None:
    """virtio 1.2 §2.7.4.1: "The device MUST NOT make assumptions about the particular
    arrangement of descriptors"; §5.2.6: header, data, status; §2.7.8.2: used len.

    Header split 8+8 or merged with the OUT data, the status at the tail of the
    IN buffer, data in many small or sub-sector descriptors, zero-length
    descriptors anywhere, FLUSH and GET_ID shapes: served, with the used
    length the rules give (IN: 1 + data; GET_ID: 1 + min(20, data)).
    """
    conform(LAYOUTS[name], dut, backend, connect, shadow, image)


@pytest.mark.parametrize("name", ids(INDIRECT_LAYOUTS))
def test_an_indirect_layout_is_served(
    dut: DeviceUnderTest,
    backend: Backend,
    connect: Callable[..., BlkDevice],
    shadow: ShadowDisk,
    image: Path,
    name: str,
) -> None:
    """virtio 1.2 §2.7.5.3.2: "The device MUST handle the case of zero or more normal
    chained descriptors followed by a single descriptor with flags&VIRTQ_DESC_F_INDIRECT",
    and "MUST ignore the write-only flag" of that descriptor.

    Only on specs that offer VIRTIO_RING_F_INDIRECT_DESC (skipped with that reason).
    """
    conform(INDIRECT_LAYOUTS[name], dut, backend, connect, shadow, image)


@pytest.mark.parametrize("name", ids(REQUEST_FAULTS))
def test_a_request_fault_completes_with_the_status_the_rules_give(
    dut: DeviceUnderTest,
    backend: Backend,
    connect: Callable[..., BlkDevice],
    shadow: ShadowDisk,
    image: Path,
    name: str,
) -> None:
    """virtio 1.2 §5.2.6 (IOERR "for device or driver error", UNSUPP "for a request
    unsupported by device"), §5.2.6.1, §5.2.6.2, §2.7.4.2, §2.7.8.2.

    The status goes into the chain's last device-writable byte, used length 1,
    nothing else written (no writable byte at all: used length 0); the queue
    keeps working and the driver is not told to reset.
    """
    conform(REQUEST_FAULTS[name], dut, backend, connect, shadow, image)


@pytest.mark.parametrize("name", ids(STRUCTURAL_FAULTS) + ids(INDIRECT_FAULTS))
def test_a_structural_fault_breaks_the_queue_tells_the_driver_and_a_reset_recovers(
    dut: DeviceUnderTest,
    backend: Backend,
    connect: Callable[..., BlkDevice],
    shadow: ShadowDisk,
    image: Path,
    name: str,
) -> None:
    """virtio 1.2 §2.7.5.2, §2.7.5.3.1 (indices, loops, chain length, INDIRECT rules),
    §2.7.6 (avail idx), §2.1.2: "The device SHOULD set DEVICE_NEEDS_RESET when it enters
    an error state that a reset is needed"; §2.4 (reset).

    Nothing completes (nor a good chain after it), nothing is written, the
    driver is told; after a reset the device works. Indirect-table faults run
    on specs that offer INDIRECT_DESC; INDIRECT while not negotiated runs on
    every spec, the driver refusing the feature.
    """
    case = STRUCTURAL_FAULTS.get(name) or INDIRECT_FAULTS[name]
    result = conform(case, dut, backend, connect, shadow, image)
    assert result.expect.kind is Kind.BROKEN


@pytest.mark.parametrize("name", ids(LIMITS))
def test_seg_max_and_size_max_bind_only_when_negotiated(
    dut: DeviceUnderTest,
    backend: Backend,
    connect: Callable[..., BlkDevice],
    shadow: ShadowDisk,
    image: Path,
    name: str,
) -> None:
    """virtio 1.2 §5.2.3 ("VIRTIO_BLK_F_SEG_MAX: Maximum number of segments in a request
    is in seg_max", "VIRTIO_BLK_F_SIZE_MAX: Maximum size of any single segment is in
    size_max"), §5.2.4; §2.7.4.1 when they are not negotiated.

    Negotiated: seg_max segments and a size_max segment are served, one more
    segment or 512 more bytes get IOERR. Refused by the driver: the device
    serves more segments (as many as the ring holds) and larger ones.
    """
    conform(LIMITS[name], dut, backend, connect, shadow, image)


# ---- the broken state lasts until a reset ----------------------------------------------


def test_a_broken_queue_stays_broken_until_reset_even_once_repaired(
    dut: DeviceUnderTest, connect: Callable[..., BlkDevice], shadow: ShadowDisk
) -> None:
    """virtio 1.2 §2.1.2, §2.1.1 ("The driver SHOULD NOT rely on completion of operations
    of a device if DEVICE_NEEDS_RESET is set"), §2.4: only a reset clears it.

    After the device told the driver, the driver repairs the ring (a good
    chain at a sane avail index) and kicks again: nothing completes, the
    device still says it needs a reset; after a reset it works.
    """
    dev = connect()
    limits = limits_of(dev, dut)
    result = run_case(dev, STRUCTURAL_FAULTS["head-index-at-num"], limits, shadow)
    assert result.mismatches() == [], result.report()
    q = dev.queues[0]
    used_before = q.used_idx
    req = AlignedRequest.read(dev.memory, 8, 4096, 2)
    head = q.add_chain(req.chain)
    q.publish(head)
    q.kick()
    assert q.wait_used(settle(dut), 1) == []
    assert q.used_idx == used_before
    assert dev.needs_reset() is not None
    dev.reconnect()
    assert dev.needs_reset() is None
    assert check_device_works(dev, limits, shadow) == []


# ---- ring areas (hvisor: the device sees them; vhost-user: the runtime refuses them) ----

RING_REGS = {
    "desc": (QUEUE_DESC_LOW, QUEUE_DESC_HIGH),
    "avail": (QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH),
    "used": (QUEUE_DEVICE_LOW, QUEUE_DEVICE_HIGH),
}


def _ring_sizes(num: int) -> dict[str, int]:
    return {"desc": 16 * num, "avail": 6 + 2 * num, "used": 6 + 8 * num}


def _place_rings(
    dev: BlkDevice, num: int, ring: str, where: str
) -> tuple[dict[str, int], list[tuple[int, int]]]:
    """Ring addresses with ``ring`` misplaced ``where``; a good chain published in them.

    Returns the addresses and what the device may write (used flags, avail_event).
    """
    mem = dev.memory
    sizes = _ring_sizes(num)
    addr = {r: mem.alloc(sizes[r] + 64, 64) for r in sizes}
    r0, r1 = mem.regions
    shift = {"desc": 8, "avail": 1, "used": 2}[ring]
    addr[ring] = {
        "misaligned": addr[ring] + shift,
        "in-the-gap": r0.end + 0x1000,
        "running-past-the-end-of-ram": r1.end - sizes[ring] // 2 // 16 * 16,
    }[where]
    for r, a in addr.items():
        if r != ring or where == "misaligned":
            mem.fill(a, min(sizes[r], (r1.end if a >= r1.guest_phys_addr else r0.end) - a), 0)
    req = AlignedRequest.read(mem, 8, 4096, 2)
    if ring != "desc" or where == "misaligned":
        entries = [(s.gpa, s.length, VRING_DESC_F_WRITE if s.writable else 0) for s in req.segments]
        for i, d in link(entries).items():
            mem.write(addr["desc"] + 16 * i, d.pack())
    if ring != "avail" or where == "misaligned":
        mem.write_u16(addr["avail"] + 4, 0)
        mem.write_u16(addr["avail"] + 2, 1)
    used = addr["used"]
    may = [(used, used + 2), (used + 4 + 8 * num, used + 6 + 8 * num)]
    return addr, may


def _set_up_ring_and_kick(
    dev: BlkDevice, backend: Backend, num: int, addr: dict[str, int]
) -> NeedsReset | None:
    """A fresh initialisation with queue 0 at ``addr``; kick; whether the driver was told."""
    dev.disconnect()  # the old rings are gone; the device is reset
    if isinstance(backend, HvisorBackend):
        assert backend.world is not None
        t = MmioTransport(backend.world, ZONE_ID, backend.device, timeout=2 * dev.timeout)
        t.begin()
        t.set_features(dev.features, dev.memory)
        t.write(QUEUE_SEL, 0)
        t.write(QUEUE_NUM, num)
        for ring, (low, high) in RING_REGS.items():
            t.write(low, addr[ring] & 0xFFFF_FFFF)
            t.write(high, addr[ring] >> 32)
        t.write(QUEUE_READY, 1)
        t.start()
        t.write(QUEUE_NOTIFY, 0)
        told = t.wait_needs_reset(dev.timeout)
        t.close()
        return told
    v = VhostUserTransport(backend.socket_path, dev.timeout)
    signals = EventfdSignals()
    try:
        v.begin()
        v.set_features(dev.features, dev.memory)
        fe = v.frontend
        uaddr = {r: a + UADDR_OFFSET for r, a in addr.items()}  # also where no region is
        try:
            fe.set_vring_num(0, num)
            fe.set_vring_base(0, 0)
            fe.set_vring_addr(0, uaddr["desc"], uaddr["used"], uaddr["avail"])
            fe.set_vring_call(0, signals.call_fd)
            fe.set_vring_kick(0, signals.kick_fd)
            fe.set_vring_enable(0, True)
            signals.kick()
        except VhostUserError:
            pass  # refused: the connection is being dropped
        return v.wait_needs_reset(dev.timeout)
    finally:
        v.close()
        signals.close()


@pytest.mark.parametrize("ring", sorted(RING_REGS))
@pytest.mark.parametrize("where", ["misaligned", "in-the-gap", "running-past-the-end-of-ram"])
def test_a_ring_area_misaligned_or_outside_ram_breaks_the_queue_and_tells_the_driver(
    dut: DeviceUnderTest,
    backend: Backend,
    connect: Callable[..., BlkDevice],
    shadow: ShadowDisk,
    ring: str,
    where: str,
) -> None:
    """virtio 1.2 §2.7 ("Descriptor Table 16, Available Ring 2, Used Ring 4" alignment;
    each part "physically-contiguous in guest memory"), §2.7.1, §2.1.2.

    hvisor: the device finds it on its first pass and tells the driver
    (DEVICE_NEEDS_RESET); vhost-user: the runtime refuses SET_VRING_ADDR and
    drops the frontend. Either way nothing is used or written; a fresh
    initialisation works.
    """
    dev = connect()
    limits = limits_of(dev, dut)
    num = min(64, dut.spec.device.queue_size)
    # The rings connect() set up stay the device's to write (used entries,
    # flags, avail_event) until it learns of the new ones: a worker polling
    # one of them (per-queue polls) writes there, near the new rings.
    owned = [(q.used_gpa, q.used_gpa + 6 + 8 * q.size) for q in dev.queues]
    addr, may = _place_rings(dev, num, ring, where)
    may = [*may, *owned]
    watch = MemoryWatch(dev.memory, [(a - 4096, a + 16 * num + 4096) for a in addr.values()])
    told = _set_up_ring_and_kick(dev, backend, num, addr)
    time.sleep(settle(dut))
    assert told is not None, "the driver was not told the queue is broken"
    if isinstance(backend, HvisorBackend):
        assert told.config_interrupt, "InterruptStatus lacks VIRTIO_MMIO_INT_CONFIG"
    assert outside(watch.changes(), may) == []
    assert backend.alive()
    backend.attach(dev)
    assert check_device_works(dev, limits, shadow) == []


# ---- hvisor only: the guest rewrites a running queue (HEAD's core lets it) -----------------


def _mmio(dev: BlkDevice) -> MmioTransport:
    assert isinstance(dev.transport, MmioTransport)
    return dev.transport


def _expect_broken_after(dev: BlkDevice, dut: DeviceUnderTest, rewrite: Callable[[], None]) -> None:
    """Run ``rewrite`` on a queue that has served a request, kick a good one: told, none used."""
    q = dev.queues[0]
    used_before = q.used_idx
    rewrite()
    req = AlignedRequest.read(dev.memory, 8, 4096, 2)
    head = q.add_chain(req.chain)
    q.publish(head)
    q.kick()
    assert q.wait_used(settle(dut), 1) == []
    assert q.used_idx == used_before, "the device used the rewritten ring"
    told = dev.wait_needs_reset()
    assert told is not None, "the driver was not told the queue is broken"
    assert told.config_interrupt, "InterruptStatus lacks VIRTIO_MMIO_INT_CONFIG"


@pytest.mark.only_transport("hvisor")
@pytest.mark.parametrize("new_num", ["half", "double", "not-a-power-of-two"])
def test_queue_num_changed_while_the_queue_runs_breaks_it_and_tells_the_driver(
    dut: DeviceUnderTest,
    backend: Backend,
    connect: Callable[..., BlkDevice],
    shadow: ShadowDisk,
    new_num: str,
) -> None:
    """virtio 1.2 §4.2.3.2 (QueueNum is written while setting the queue up, before
    QueueReady), §4.2.2.2, §2.1.2.

    HEAD's core stores a QueueNum written at any time; the device keeps the
    size it validated after reset, so a change while the queue runs is a
    structural fault: nothing used, the driver told; a reset recovers.
    """
    dev = connect()
    limits = limits_of(dev, dut)
    assert check_device_works(dev, limits, shadow) == []  # the device has taken the ring
    num = dev.queues[0].size
    value = {"half": num // 2, "double": num * 2, "not-a-power-of-two": num - 1}[new_num]

    def rewrite() -> None:
        _mmio(dev).write(QUEUE_SEL, 0)
        _mmio(dev).write(QUEUE_NUM, value)

    _expect_broken_after(dev, dut, rewrite)
    assert backend.alive()
    dev.reconnect()
    assert check_device_works(dev, limits, shadow) == []


@pytest.mark.only_transport("hvisor")
@pytest.mark.parametrize("ring", sorted(RING_REGS))
@pytest.mark.parametrize("how", ["low-half-only", "low-and-high"])
def test_a_ring_address_changed_while_the_queue_runs_breaks_it_and_tells_the_driver(
    dut: DeviceUnderTest,
    backend: Backend,
    connect: Callable[..., BlkDevice],
    shadow: ShadowDisk,
    ring: str,
    how: str,
) -> None:
    """virtio 1.2 §4.2.3.2 (queue addresses are set up before QueueReady), §2.1.2.

    HEAD's core ORs a Low write into the address (the pointer unchanged) and
    re-translates on a High write; either way the ring is no longer the one
    the device validated: a structural fault, told; a reset recovers.
    """
    dev = connect()
    limits = limits_of(dev, dut)
    assert check_device_works(dev, limits, shadow) == []
    q = dev.queues[0]
    gpa = {"desc": q.desc_gpa, "avail": q.avail_gpa, "used": q.used_gpa}[ring]
    r0 = dev.memory.regions[0]
    bit = next(
        b
        for b in (1 << k for k in range(12, 24))
        if not gpa & b and r0.contains(gpa | b) and r0.contains((gpa | b) + 4096)
    )
    low, high = RING_REGS[ring]

    def rewrite() -> None:
        t = _mmio(dev)
        t.write(QUEUE_SEL, 0)
        t.write(low, (gpa | bit) & 0xFFFF_FFFF)
        if how == "low-and-high":
            t.write(high, gpa >> 32)

    _expect_broken_after(dev, dut, rewrite)
    assert backend.alive()
    dev.reconnect()
    assert check_device_works(dev, limits, shadow) == []


def test_the_request_rules_are_not_told_as_needing_a_reset(
    dut: DeviceUnderTest, connect: Callable[..., BlkDevice], shadow: ShadowDisk
) -> None:
    """virtio 1.2 §2.1.2: DEVICE_NEEDS_RESET is for "an error state that a reset is needed",
    not for a request the device answered with IOERR or UNSUPP.

    A run of request faults on one queue (no reset in between): each answered
    in turn, the device never says it needs a reset, and keeps working.
    """
    dev = connect()
    limits = limits_of(dev, dut)
    for name in ("header-of-8-bytes", "in-of-1000-bytes", "unknown-type-0x100", "header-only"):
        result = run_case(dev, REQUEST_FAULTS[name], limits, shadow, settle=settle(dut))
        assert result.mismatches() == [], result.report()
    assert dev.needs_reset() is None
    assert check_device_works(dev, limits, shadow) == []
