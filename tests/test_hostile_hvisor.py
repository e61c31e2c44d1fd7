"""What only hvisor's transport lets a guest do: rewrite a live queue under the device.

hvisor-tool's core applies every register write at once, while the device's
worker drains (hvisor-api.md section 14): QueueNum unchecked, ring addresses
OR-ed and re-translated, DriverFeatures OR-ed unmasked, kicks for queues
that are not set up. Each test does one such thing with requests in flight
and then checks that

- the daemon lives (no SIGSEGV/SIGBUS, no abort),
- nothing changed in the zone's RAM outside the rings and the requests'
  device-writable buffers, nor in another zone's RAM (conftest checks that
  for every hvisor backend), and the zone's RAM sits between inaccessible
  guard areas in the daemon (the /dev/hvisor stand-in maps it so), so a
  read or write past its ends kills the daemon and fails the test,
- after a reset (STATUS = 0) and a fresh initialisation, the device works.

The pair keeps its own copy of the ring it validated and compares the live
fields with it before each pass and each call into the core that reads them
(docs/conformance.md): a rewrite it meets there breaks the queue (the driver
reads DEVICE_NEEDS_RESET), one that lands during a pass is never followed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from toolchain.bench import stall
from toolchain.bridge.mmio import (
    DRIVER_FEATURES,
    DRIVER_FEATURES_SEL,
    INTERRUPT_STATUS,
    QUEUE_DESC_HIGH,
    QUEUE_DESC_LOW,
    QUEUE_DEVICE_HIGH,
    QUEUE_DEVICE_LOW,
    QUEUE_DRIVER_HIGH,
    QUEUE_DRIVER_LOW,
    QUEUE_NOTIFY,
    QUEUE_NUM,
    QUEUE_SEL,
    MmioTransport,
)
from toolchain.guest import Backend, BlkDevice, BlkRequest, GuestMemory, ShadowDisk
from toolchain.guest.blk import VIRTIO_BLK_S_OK, VIRTIO_RING_F_EVENT_IDX
from toolchain.guest.hostile import MemoryWatch, Range, outside

from .conftest import DAEMON_TRANSPORTS, DeviceUnderTest

pytestmark = pytest.mark.only_transport("hvisor")

RAM_GPA = 0x1000_0000
RAM_SIZE = 8 * 1024 * 1024


def in_flight(dev: BlkDevice) -> int:
    """Requests a load puts in flight: 32 (four descriptors each, see
    prepare), or as many as a smaller ring holds."""
    return min(32, dev.queues[0].size // 4)


@pytest.fixture
def zdev(dut: DeviceUnderTest, backend: Backend) -> Iterator[BlkDevice]:
    """A driver over hvisor with a small zone RAM (snapshotted whole by the tests)."""
    d = dut.driver(memory=GuestMemory([(RAM_GPA, RAM_SIZE)]), queue_size=queue_size(dut))
    backend.attach(d)
    yield d
    d.close()


def queue_size(dut: DeviceUnderTest) -> int:
    return min(256, dut.spec.device.queue_size)


def mmio(dev: BlkDevice) -> MmioTransport:
    assert isinstance(dev.transport, MmioTransport)
    return dev.transport


def select_write(dev: BlkDevice, reg: int, value: int, queue: int = 0) -> None:
    t = mmio(dev)
    t.write(QUEUE_SEL, queue)
    t.write(reg, value)


def prepare(dev: BlkDevice, n: int | None = None) -> list[BlkRequest]:
    """``n`` reads of 8 KiB in two segments, laid out in guest RAM (not posted)."""
    return [BlkRequest.read(dev.memory, k * 16, 8192, 2) for k in range(n or in_flight(dev))]


def load(dev: BlkDevice, kick: bool = True) -> tuple[list[Range], MemoryWatch]:
    """Lay out requests, snapshot the whole zone RAM, then publish them (and kick).

    Returns what the device may write (rings, the requests' writable
    buffers), taken before completions free the requests, and the snapshot.
    """
    reqs = prepare(dev)
    ok = allowed(dev, reqs)
    watch = snapshot(dev)
    for req in reqs:
        dev.submit(req, kick=False)
    if kick:
        dev.queues[0].kick()
    return ok, watch


#: When the guest rewrites the queue: after publishing and before the kick
#: (the device's next pass meets the new value for certain), or while the
#: requests it kicked are being served (a race, as on the board).
WHEN = ["before-kick", "in-flight"]


def hostile(
    dev: BlkDevice, when: str, rewrite: Callable[[], None]
) -> tuple[list[Range], MemoryWatch]:
    """Publish a load and run ``rewrite`` before kicking it, or while it runs.

    Before the kick, the device's next pass meets the rewrite for certain: the
    queue must break and the driver be told (DEVICE_NEEDS_RESET), not carry on
    with the ring it validated as if nothing had changed.
    """
    ok, watch = load(dev, kick=when == "in-flight")
    rewrite()
    if when == "before-kick":
        dev.queues[0].kick()
        assert dev.wait_needs_reset() is not None, "a rewritten ring went unreported"
    return ok, watch


def allowed(dev: BlkDevice, reqs: list[BlkRequest]) -> list[Range]:
    """Rings (at the size the driver set up) and the writable buffers of ``reqs``."""
    out: list[Range] = []
    for q in dev.queues:
        out += [
            (q.desc_gpa, q.desc_gpa + 16 * q.size),
            (q.avail_gpa, q.avail_gpa + 6 + 2 * q.size),
            (q.used_gpa, q.used_gpa + 6 + 8 * q.size),
        ]
    for r in reqs:
        out += [(s.gpa, s.gpa + s.length) for s in r.segments if s.writable]
    return out


def settle(dut: DeviceUnderTest) -> float:
    return 1.0 if dut.target.emulated else 0.3


def recover_and_check(
    dev: BlkDevice,
    backend: Backend,
    dut: DeviceUnderTest,
    shadow: ShadowDisk,
    watch: MemoryWatch,
    ok: list[Range],
) -> None:
    """Alive, nothing written outside ``ok``; reset, re-initialise, and a read works."""
    time.sleep(settle(dut))
    assert_alive(backend, "after the hostile write")
    stray = outside(watch.changes(), ok)
    assert stray == [], f"wrote guest RAM outside the rings and buffers: {stray[:5]}"
    try:
        dev.reconnect()  # STATUS = 0, then the whole initialisation
    finally:
        assert_alive(backend, "in the reset")
    c = dev.run(BlkRequest.read(dev.memory, 64, 4096, 2))
    assert (c.status, c.guard_errors) == (VIRTIO_BLK_S_OK, [])
    assert c.data == shadow.expected(64 * 512, 4096)


def assert_alive(backend: Backend, when: str) -> None:
    """Fail the test if the daemon died (once: teardown does not report the death again)."""
    if backend.alive():
        return
    code = backend.stop()
    backend.returncode = 0  # its death fails the test here; teardown need not report it
    pytest.fail(f"the daemon died {when} (exit status {code}):\n{backend.log_text()[-1500:]}")


def advance(dev: BlkDevice, count: int) -> None:
    """Complete ``count`` small reads, moving the ring indices on by ``count``."""
    while count > 0:
        n = min(32, count, dev.queues[0].size // 3)  # three descriptors each
        for k in range(n):
            dev.submit(BlkRequest.read(dev.memory, k, 512), kick=False)
        dev.queues[0].kick()
        assert len(dev.complete()) == n
        count -= n


def snapshot(dev: BlkDevice) -> MemoryWatch:
    return MemoryWatch.whole(dev.memory)


# ---- QueueNum ------------------------------------------------------------------------------


@pytest.mark.parametrize("when", WHEN)
@pytest.mark.parametrize("factor", [2, 64])
def test_queue_num_enlarged_with_requests_in_flight_stays_inside_the_rings(
    zdev: BlkDevice,
    backend: Backend,
    dut: DeviceUnderTest,
    shadow: ShadowDisk,
    factor: int,
    when: str,
) -> None:
    """Across the ring's wrap: a slot index the old size masks and the new one does not."""
    advance(zdev, queue_size(dut) - in_flight(zdev) // 2)
    ok, watch = hostile(zdev, when, lambda: select_write(zdev, QUEUE_NUM, queue_size(dut) * factor))
    recover_and_check(zdev, backend, dut, shadow, watch, ok)


@pytest.mark.parametrize("when", WHEN)
@pytest.mark.parametrize("num", [0, 1, 3])
def test_queue_num_shrunk_or_not_a_power_of_two_with_requests_in_flight_stays_inside_the_rings(
    zdev: BlkDevice,
    backend: Backend,
    dut: DeviceUnderTest,
    shadow: ShadowDisk,
    num: int,
    when: str,
) -> None:
    advance(zdev, queue_size(dut) - in_flight(zdev) // 2)
    ok, watch = hostile(zdev, when, lambda: select_write(zdev, QUEUE_NUM, num))
    recover_and_check(zdev, backend, dut, shadow, watch, ok)


# ---- ring addresses --------------------------------------------------------------------------

RINGS = {
    "desc": (QUEUE_DESC_LOW, QUEUE_DESC_HIGH),
    "avail": (QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH),
    "used": (QUEUE_DEVICE_LOW, QUEUE_DEVICE_HIGH),
}


def ring_gpa(dev: BlkDevice, ring: str) -> int:
    q = dev.queues[0]
    return {"desc": q.desc_gpa, "avail": q.avail_gpa, "used": q.used_gpa}[ring]


@pytest.mark.parametrize("when", WHEN)
@pytest.mark.parametrize("ring", sorted(RINGS))
@pytest.mark.parametrize("where", ["elsewhere-in-ram", "unmapped", "end-of-ram"])
def test_a_ring_moved_by_a_high_write_with_requests_in_flight_is_never_followed_outside_ram(
    zdev: BlkDevice,
    backend: Backend,
    dut: DeviceUnderTest,
    shadow: ShadowDisk,
    ring: str,
    where: str,
    when: str,
) -> None:
    """Low is OR-ed in, High re-translates: the guest can point a live ring anywhere."""
    low, high = RINGS[ring]
    gpa = ring_gpa(zdev, ring)
    advance(zdev, 1)  # the device has validated the ring: what follows is a rewrite

    def move() -> None:
        if where == "unmapped":
            select_write(zdev, high, 1)  # 4 GiB up: no memory region there
            return
        # OR-ing bits in moves the ring up; end-of-ram puts its start in the last 64 bytes.
        target = RAM_GPA + RAM_SIZE - 64 if where == "end-of-ram" else RAM_GPA + RAM_SIZE // 2
        select_write(zdev, low, (gpa | (target - RAM_GPA)) & 0xFFFF_FFFF)
        select_write(zdev, high, 0)

    ok, watch = hostile(zdev, when, move)
    # A moved ring may legitimately be read and written where it now lies.
    moved = [(RAM_GPA + RAM_SIZE // 2 - 4096, RAM_GPA + RAM_SIZE)] if where != "unmapped" else []
    recover_and_check(zdev, backend, dut, shadow, watch, ok + moved)


@pytest.mark.parametrize("ring", sorted(RINGS))
def test_a_low_half_rewritten_without_a_high_is_refused_not_guessed(
    zdev: BlkDevice, backend: Backend, dut: DeviceUnderTest, shadow: ShadowDisk, ring: str
) -> None:
    """HEAD only translates on a High write: after a Low write alone the core's pointer
    and the ring address disagree. The device does not guess which ring the driver
    meant: nothing completes, Status says DEVICE_NEEDS_RESET, a reset recovers."""
    low, _ = RINGS[ring]
    select_write(zdev, low, 0x0040_0000)
    ok, watch = load(zdev)
    assert zdev.queues[0].wait_used(settle(dut), 1) == []
    assert zdev.wait_needs_reset() is not None
    recover_and_check(zdev, backend, dut, shadow, watch, ok)


@pytest.mark.parametrize("ring", sorted(RINGS))
def test_a_misaligned_ring_is_refused_without_a_fault(
    dut: DeviceUnderTest,
    backend: Backend,
    shadow: ShadowDisk,
    ring: str,
) -> None:
    """virtio 1.2 2.7: desc 16, avail 2, used 4 bytes; an odd avail faults ldarh on the board."""
    d = dut.driver(memory=GuestMemory([(RAM_GPA, RAM_SIZE)]), queue_size=queue_size(dut))
    with d:
        backend.attach(d)
        q = d.queues[0]
        req = BlkRequest.read(d.memory, 8, 4096)
        watch = snapshot(d)
        head = q.add_chain(req.chain)
        q.publish(head)
        low, high = RINGS[ring]
        gpa = ring_gpa(d, ring)
        select_write(d, low, (gpa | 1) & 0xFFFF_FFFF)
        select_write(d, high, gpa >> 32)
        q.kick()
        shifted = [(gpa, gpa + 16 * q.size + 32)]  # the ring, one byte up
        recover_and_check(d, backend, dut, shadow, watch, allowed(d, [req]) + shifted)


# ---- features, notifications, interrupts -------------------------------------------------------


def test_event_idx_accepted_though_not_offered_keeps_requests_completing(
    zdev: BlkDevice, backend: Backend, dut: DeviceUnderTest, shadow: ShadowDisk
) -> None:
    """DriverFeatures is OR-ed unmasked: EVENT_IDX switches event_idx_enabled on regardless."""
    t = mmio(zdev)
    t.write(DRIVER_FEATURES_SEL, 0)
    t.write(DRIVER_FEATURES, 1 << VIRTIO_RING_F_EVENT_IDX)
    ok, watch = load(zdev)
    done = zdev.complete()
    assert [c.status for c in done] == [VIRTIO_BLK_S_OK] * in_flight(zdev)
    for c in done:
        assert c.data == shadow.expected(c.request.sector * 512, 8192)
    recover_and_check(zdev, backend, dut, shadow, watch, ok)


@pytest.mark.parametrize("queue", ["never-set-up", "out-of-range"])
def test_queue_notify_for_a_queue_that_is_not_there_is_harmless(
    dut: DeviceUnderTest, backend: Backend, shadow: ShadowDisk, queue: str
) -> None:
    """HEAD calls the handler whatever `ready` says; an index past vqs_len is ignored."""
    d = dut.driver(memory=GuestMemory([(RAM_GPA, RAM_SIZE)]), queue_size=queue_size(dut))
    with d:
        backend.attach(d)
        watch = snapshot(d)
        t = mmio(d)
        n = dut.spec.device.num_queues
        if queue == "out-of-range":
            for index in (n, 4, 0xFFFF, 0xFFFF_FFFF):
                t.write(QUEUE_NOTIFY, index)
        else:
            t.set_status(0)  # reset: no queue is set up now
            for index in range(n):
                t.write(QUEUE_NOTIFY, index)
            time.sleep(settle(dut))
            assert backend.alive()
            d.queues = []  # those rings are gone with the reset
            d._inflight = []
        recover_and_check(d, backend, dut, shadow, watch, allowed(d, []))


def test_status_0_during_heavy_io_stops_every_completion_before_it_returns(
    zdev: BlkDevice, backend: Backend, dut: DeviceUnderTest, shadow: ShadowDisk
) -> None:
    """The reset write blocks the vCPU until the daemon answers: nothing completes after."""
    rounds = 10 if dut.target.emulated else 30
    for i in range(rounds):
        load(zdev)
        time.sleep((i % 5) * 0.0005)
        used_gpa = zdev.queues[0].used_gpa
        mmio(zdev).set_status(0)
        frozen = zdev.memory.read(used_gpa, 6 + 8 * zdev.queues[0].size)
        time.sleep(0.005)
        after = zdev.memory.read(used_gpa, len(frozen))
        assert after == frozen, f"round {i}: completion after reset"
        assert backend.alive()
        zdev.reconnect()  # forget the old rings, initialise again
    watch = snapshot(zdev)
    recover_and_check(zdev, backend, dut, shadow, watch, allowed(zdev, []))


def test_a_reset_that_cuts_a_drain_short_leaves_no_interrupt_behind(
    zdev: BlkDevice, backend: Backend, dut: DeviceUnderTest, shadow: ShadowDisk
) -> None:
    """STATUS = 0 under load: hvisor-tool's core clears InterruptStatus first and only
    then has the device quiesce, so an interrupt a worker raises in between (the pass
    it was ending, a race) would outlive the reset; the driver must read InterruptStatus
    0 once the reset returns (virtio 1.2 4.2.2.1: the device resets its registers)."""
    rounds = 10 if dut.target.emulated else 40
    for i in range(rounds):
        # 16 reads of 256 KiB (6 descriptors each, fewer in a small ring): a
        # drain long enough for the reset to land in it
        for k in range(min(16, zdev.queues[0].size // 6)):
            zdev.submit(BlkRequest.read(zdev.memory, k * 512, 256 * 1024, 4), kick=False)
        zdev.queues[0].kick()
        time.sleep((i % 4) * 0.0002)
        mmio(zdev).set_status(0)
        assert mmio(zdev).read(INTERRUPT_STATUS) == 0, f"round {i}: an interrupt after reset"
        zdev.reconnect()
    recover_and_check(zdev, backend, dut, shadow, snapshot(zdev), allowed(zdev, []))


def test_a_driver_that_never_acks_still_gets_every_completion(
    zdev: BlkDevice, backend: Backend, dut: DeviceUnderTest, shadow: ShadowDisk
) -> None:
    """Interrupts merge until InterruptACK; without one the device must still complete."""
    t = mmio(zdev)
    t.service_interrupt = lambda: 0  # type: ignore[method-assign] - the driver ignores the line
    for _ in range(3):
        ok, watch = load(zdev)
        done = zdev.complete()
        assert [c.status for c in done] == [VIRTIO_BLK_S_OK] * in_flight(zdev)
    assert t.read(INTERRUPT_STATUS) & 1, "the used-buffer interrupt is still pending"
    assert backend.alive()
    recover_and_check(zdev, backend, dut, shadow, watch, ok)


# ---- Bounded work on the main thread ------------------------------------------------


def main_thread_figures(backend: Backend) -> dict[str, int]:
    """Stop the runtime and read what its core measured of the main thread."""
    assert backend.stop() == 0, backend.log_text()
    figures = stall.main_thread_figures(backend.log_text())
    assert figures is not None, f"no main-thread line in the log:\n{backend.log_text()}"
    return figures


def test_a_ring_kicked_once_is_served_a_budget_per_notify_and_finished_without_another_kick(
    zdev: BlkDevice, backend: Backend, dut: DeviceUnderTest
) -> None:
    """Models that work on the main thread (inline, procq) take a budget per notify.

    One kick for many budgets' worth: every request completes (the rest is
    finished off the main thread: inline's helper, procq's worker), and inline's
    main thread published at most two budgets during one notify (its own, and a
    helper pass it may have waited for).
    """
    budget = dut.spec.threading.model.main_budget
    if budget == 0:
        pytest.skip(f"{dut.spec.threading.model}: the notify handler only wakes a worker")
    n = min(zdev.queues[0].size // 3, 4 * budget)  # three descriptors each
    assert n > budget
    reqs = [BlkRequest.read(zdev.memory, k * 8, 4096) for k in range(n)]
    for req in reqs:
        zdev.submit(req, kick=False)
    zdev.queues[0].kick()
    done = zdev.complete(timeout=4 * dut.timeout)
    assert [c.status for c in done] == [VIRTIO_BLK_S_OK] * n
    if dut.transport in DAEMON_TRANSPORTS:
        return  # hvisor-tool's own core measures nothing; the completions are the check
    figures = main_thread_figures(backend)
    if not dut.spec.threading.model.has_worker:  # inline: the main thread completes
        assert 1 <= figures["completions"] <= 2 * budget, figures


def test_a_guest_cannot_flood_the_daemons_log(
    zdev: BlkDevice, backend: Backend, dut: DeviceUnderTest, shadow: ShadowDisk
) -> None:
    """Kicks for a queue that is not there, 2000 of them: each is worth a warning, but
    a site logs at most a burst per second and then says how many it suppressed."""
    if dut.transport in DAEMON_TRANSPORTS:
        pytest.skip("hvisor-tool's own core logs through its own log, unlimited")
    t = mmio(zdev)
    start = time.monotonic()
    for _ in range(2000):
        t.write(QUEUE_NOTIFY, 7)
    took = time.monotonic() - start
    recover_and_check(zdev, backend, dut, shadow, snapshot(zdev), allowed(zdev, []))
    lines = [ln for ln in backend.log_text().splitlines() if "QueueNotify 7 ignored" in ln]
    assert 1 <= len(lines) <= 10 * (int(took) + 2), f"{len(lines)} lines in {took:.1f}s"
    time.sleep(1.1)
    t.write(QUEUE_NOTIFY, 7)  # a new window: first, how many were dropped
    deadline = time.monotonic() + dut.timeout
    while "similar message(s) suppressed" not in backend.log_text():
        assert time.monotonic() < deadline, "no line says how many were suppressed"
        time.sleep(0.05)
