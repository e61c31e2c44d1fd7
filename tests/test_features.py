"""Each optional feature, tested on every spec that enables it (skipped elsewhere).

Whether a feature is offered at all is pinned for every spec by
test_device.py::test_offers_exactly_the_spec_features.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from toolchain.guest import Backend, BlkDevice, BlkRequest, GuestMemory, ShadowDisk
from toolchain.guest.blk import (
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_WRITE_ZEROES,
)
from toolchain.guest.memory import GuestMemoryError
from toolchain.guest.virtq import SplitVirtqueue

from .conftest import IMAGE_SIZE, DeviceUnderTest

# Interrupts are counted on the call eventfd; on hvisor they merge until the
# driver's ACK, so these counts mean something else there: vhost-user only.
pytestmark = pytest.mark.only_transport("vhost-user")

SECTORS = IMAGE_SIZE // 512
UNMAP = 1


def _needs(dut: DeviceUnderTest, feature: str) -> None:
    if not getattr(dut.spec.features, feature):
        pytest.skip(f"spec '{dut.spec.name}' does not enable features.{feature}")


def _interrupts(q: SplitVirtqueue) -> int:
    """Interrupts signalled since the last look (the call eventfd's counter)."""
    try:
        return os.eventfd_read(q.call_fd)
    except BlockingIOError:
        return 0


def _wait_used_idx(q: SplitVirtqueue, target: int, timeout: float) -> None:
    """Poll the used index (not the interrupt) until it reaches target."""
    deadline = time.monotonic() + timeout
    while q.used_idx != target:
        assert time.monotonic() < deadline, f"used idx {q.used_idx}, want {target}"
        time.sleep(0.002)


# ---- read-only --------------------------------------------------------------


def test_read_only_spec_refuses_writes_and_leaves_the_image_alone(
    dev: BlkDevice, dut: DeviceUnderTest, image: Path, shadow: ShadowDisk
) -> None:
    _needs(dut, "ro")
    assert dev.offered_features >> 5 & 1  # VIRTIO_BLK_F_RO
    before = image.stat().st_mtime_ns
    for req in (
        BlkRequest.write(dev.memory, 0, os.urandom(4096)),
        BlkRequest.write(dev.memory, 100, os.urandom(512), 1),
    ):
        c = dev.run(req)
        assert (c.status, c.used_len, c.guard_errors) == (VIRTIO_BLK_S_IOERR, 1, [])
    assert dev.read(0, 4096) == shadow.expected(0, 4096)
    assert image.stat().st_mtime_ns == before


# ---- topology and block size --------------------------------------------------


def test_config_carries_block_size_topology_and_queue_count(
    dev: BlkDevice, dut: DeviceUnderTest
) -> None:
    config = dev.config()
    d, f = dut.spec.device, dut.spec.features
    if not (f.blk_size or f.topology or f.mq):
        pytest.skip("spec enables none of blk_size, topology, mq")
    if f.blk_size:
        assert config.blk_size == d.block_size
    if f.topology:
        assert (
            config.physical_block_exp,
            config.alignment_offset,
            config.min_io_size,
            config.opt_io_size,
        ) == (d.physical_block_exp, d.alignment_offset, d.min_io_size, d.opt_io_size)
    if f.mq:
        assert config.num_queues == d.num_queues


# ---- multiqueue ---------------------------------------------------------------


def test_all_queues_serve_requests_at_once_without_mixing_completions(
    dut: DeviceUnderTest, backend: Backend, shadow: ShadowDisk
) -> None:
    _needs(dut, "mq")
    n = dut.spec.device.num_queues
    with dut.driver(num_queues=n, queue_size=64) as d:
        d.connect(backend.socket_path)
        assert d.max_queues == n
        region = SECTORS // n
        for q in range(n):
            for i in range(16):
                data = bytes([q * 16 + i]) * 4096
                d.submit(BlkRequest.write(d.memory, q * region + i * 8, data), queue=q, kick=False)
        for q in range(n):
            d.queues[q].kick()
        for q in range(n):
            # complete() raises if a head completes on a queue it was not posted on
            done = d.complete(queue=q)
            assert len(done) == 16 and all(c.status == VIRTIO_BLK_S_OK for c in done)
            for c in done:
                shadow.observe(c)
        for q in range(n):  # read each region back through another queue
            other = (q + 1) % n
            got = d.read(q * region, 16 * 4096, queue=other)
            assert got == shadow.expected(q * region * 512, 16 * 4096)


# ---- EVENT_IDX ------------------------------------------------------------------


def test_event_idx_interrupts_exactly_when_used_event_is_crossed(
    dut: DeviceUnderTest, backend: Backend
) -> None:
    _needs(dut, "event_idx")
    with dut.driver(queue_size=64) as d:
        d.connect(backend.socket_path)
        q = d.queues[0]
        assert q.event_idx
        _interrupts(q)
        # 1. used_event two ahead: the next completion must not interrupt.
        q.set_used_event((q.used_idx + 1) & 0xFFFF)
        d.submit(BlkRequest.read(d.memory, 0, 4096))
        _wait_used_idx(q, 1, dut.timeout)
        time.sleep(0.05)
        assert _interrupts(q) == 0, "interrupted before used_event was crossed"
        # 2. the completion that crosses used_event must interrupt.
        d.submit(BlkRequest.read(d.memory, 8, 4096))
        _wait_used_idx(q, 2, dut.timeout)
        deadline = time.monotonic() + dut.timeout
        while (got := _interrupts(q)) == 0 and time.monotonic() < deadline:
            time.sleep(0.002)
        assert got == 1, "no interrupt when used_event was crossed"
        d.complete(count=2)
        # 3. idle with notifications on: the device asks to be kicked next time.
        deadline = time.monotonic() + dut.timeout
        while q.avail_event != q.avail_idx and time.monotonic() < deadline:
            time.sleep(0.002)
        assert q.avail_event == q.avail_idx


def test_without_event_idx_no_interrupt_flag_suppresses_interrupts(
    dev: BlkDevice, dut: DeviceUnderTest
) -> None:
    if dut.spec.features.event_idx:
        pytest.skip("spec negotiates EVENT_IDX, which replaces the flag")
    q = dev.queues[0]
    _interrupts(q)
    q.set_no_interrupt(True)
    dev.submit(BlkRequest.read(dev.memory, 0, 4096))
    _wait_used_idx(q, 1, dut.timeout)
    time.sleep(0.05)
    assert _interrupts(q) == 0
    q.set_no_interrupt(False)
    dev.submit(BlkRequest.read(dev.memory, 8, 4096))
    _wait_used_idx(q, 2, dut.timeout)
    deadline = time.monotonic() + dut.timeout
    while (got := _interrupts(q)) == 0 and time.monotonic() < deadline:
        time.sleep(0.002)
    assert got == 1
    dev.complete(count=2)


# ---- interrupt policy -------------------------------------------------------------


def test_irq_policy_one_interrupt_per_batch_or_per_request(
    dev: BlkDevice, dut: DeviceUnderTest
) -> None:
    if dut.spec.features.event_idx:
        pytest.skip("EVENT_IDX suppression decides interrupts there")
    q = dev.queues[0]
    n = min(32, q.size // 3)  # three descriptors each
    _interrupts(q)
    for i in range(n):
        dev.submit(BlkRequest.read(dev.memory, i * 8, 4096), kick=False)
    q.kick()
    _wait_used_idx(q, n, dut.timeout)
    time.sleep(0.05)
    got = _interrupts(q)
    model = dut.spec.threading.model
    if dut.spec.threading.irq.per_request:
        assert got == n
    elif dut.spec.threading.irq.adaptive:
        # At least the one that ends the batch; one per completion at most
        # when every completion is older than irq_delay_us (an emulated
        # target's reads are that slow).
        assert 1 <= got <= n
    elif model.worker_drains:
        # One kick, one drain pass; a pass already under way when the batch
        # was published (the backend pokes new rings) may take part of it.
        assert 1 <= got <= 2
    elif not model.has_worker:
        # inline: one interrupt per pass, and a pass takes at most a budget
        # (the main thread's, then the helper's), plus one as above.
        assert 1 <= got <= -(-n // model.main_budget) + 1
    else:  # procq: when the FIFO runs dry, which may happen mid-way
        assert 1 <= got <= n
    dev.complete()


# ---- INDIRECT_DESC ------------------------------------------------------------------


def test_indirect_tables_carry_requests_larger_than_the_ring(
    dut: DeviceUnderTest, backend: Backend, shadow: ShadowDisk
) -> None:
    _needs(dut, "indirect_desc")
    with dut.driver(queue_size=8, indirect=True) as d:
        d.connect(backend.socket_path)
        segments = min(64, dut.spec.data_segments_max)  # far more than 8 entries
        data = os.urandom(segments * 512)
        d.write(40, data, segments)
        shadow.write(40 * 512, data)
        assert d.read(40, len(data), segments) == data
        many = [BlkRequest.read(d.memory, i * 8, 4096) for i in range(8)]
        for req in many:  # 8 requests in flight on an 8-entry ring
            d.submit(req, kick=False)
        d.queues[0].kick()
        for c in d.complete():
            assert c.status == VIRTIO_BLK_S_OK
            shadow.observe(c)


# ---- DISCARD / WRITE_ZEROES ------------------------------------------------------------


def _ranges(d: BlkDevice, type_: int, ranges: list[tuple[int, int, int]]) -> BlkRequest:
    return BlkRequest.ranges(d.memory, type_, ranges)


def _is_hole(image: Path, offset: int, length: int) -> bool:
    with image.open("rb") as f:
        fd = f.fileno()
        try:
            return os.lseek(fd, offset, os.SEEK_HOLE) == offset and (
                os.lseek(fd, offset, os.SEEK_DATA) >= offset + length
            )
        except OSError:  # ENXIO: no data after offset
            return True


def test_discard_punches_a_hole_that_reads_back_as_zeroes(
    dev: BlkDevice, dut: DeviceUnderTest, image: Path
) -> None:
    _needs(dut, "discard")
    sector, count = 2048, 256  # 128 KiB, block aligned
    c = dev.run(_ranges(dev, VIRTIO_BLK_T_DISCARD, [(sector, count, 0)]))
    assert (c.status, c.used_len, c.guard_errors) == (VIRTIO_BLK_S_OK, 1, [])
    assert _is_hole(image, sector * 512, count * 512)
    assert dev.read(sector, count * 512) == bytes(count * 512)
    assert image.stat().st_size == IMAGE_SIZE


def test_write_zeroes_zeroes_and_unmaps_only_when_asked(
    dev: BlkDevice, dut: DeviceUnderTest, image: Path
) -> None:
    _needs(dut, "write_zeroes")
    c = dev.run(_ranges(dev, VIRTIO_BLK_T_WRITE_ZEROES, [(4096, 256, 0), (6144, 256, UNMAP)]))
    assert (c.status, c.guard_errors) == (VIRTIO_BLK_S_OK, [])
    assert dev.read(4096, 256 * 512) == bytes(256 * 512)
    assert dev.read(6144, 256 * 512) == bytes(256 * 512)
    assert not _is_hole(image, 4096 * 512, 256 * 512)  # no UNMAP: still allocated
    unmapped = _is_hole(image, 6144 * 512, 256 * 512)
    assert unmapped == dut.spec.device.write_zeroes_may_unmap
    assert image.stat().st_size == IMAGE_SIZE


@pytest.mark.parametrize(
    ("type_", "ranges", "status"),
    [
        (VIRTIO_BLK_T_DISCARD, [(0, 8, UNMAP)], VIRTIO_BLK_S_UNSUPP),
        (VIRTIO_BLK_T_WRITE_ZEROES, [(0, 8, 2)], VIRTIO_BLK_S_UNSUPP),
        (VIRTIO_BLK_T_WRITE_ZEROES, [(SECTORS - 4, 8, 0)], VIRTIO_BLK_S_IOERR),
        (VIRTIO_BLK_T_DISCARD, [(2**64 - 4, 8, 0)], VIRTIO_BLK_S_IOERR),
        (VIRTIO_BLK_T_WRITE_ZEROES, [(0, 8, 0)] * 17, VIRTIO_BLK_S_IOERR),
    ],
    ids=["discard-unmap", "reserved-flag", "past-end", "wrapping", "too-many-segments"],
)
def test_bad_discard_or_write_zeroes_fails_and_changes_nothing(
    dev: BlkDevice,
    dut: DeviceUnderTest,
    image: Path,
    shadow: ShadowDisk,
    type_: int,
    ranges: list[tuple[int, int, int]],
    status: int,
) -> None:
    feature = "discard" if type_ == VIRTIO_BLK_T_DISCARD else "write_zeroes"
    _needs(dut, feature)
    limit = getattr(dut.spec.device, f"max_{feature}_seg")
    if len(ranges) > 1 and len(ranges) <= limit:
        ranges = ranges * (limit // len(ranges) + 1)
    c = dev.run(_ranges(dev, type_, ranges))
    assert (c.status, c.used_len, c.guard_errors) == (status, 1, [])
    assert dev.read(0, 4096) == shadow.expected(0, 4096)
    assert dev.read(SECTORS - 8, 4096) == shadow.expected(IMAGE_SIZE - 4096, 4096)
    assert image.stat().st_size == IMAGE_SIZE


def test_a_type_whose_feature_is_off_completes_with_unsupp(
    dev: BlkDevice, dut: DeviceUnderTest, shadow: ShadowDisk
) -> None:
    off = [
        (t, name)
        for t, name in (
            (VIRTIO_BLK_T_DISCARD, "discard"),
            (VIRTIO_BLK_T_WRITE_ZEROES, "write_zeroes"),
        )
        if not getattr(dut.spec.features, name)
    ]
    if not off:
        pytest.skip("spec enables both DISCARD and WRITE_ZEROES")
    for type_, _ in off:
        c = dev.run(_ranges(dev, type_, [(0, 8, 0)]))
        assert (c.status, c.used_len) == (VIRTIO_BLK_S_UNSUPP, 1)
    assert dev.read(0, 4096) == shadow.expected(0, 4096)


# ---- io_uring ------------------------------------------------------------------------


def _io_uring_fds(pid: int) -> int:
    fd_dir = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fd_dir.iterdir() if os.readlink(fd) == "anon_inode:[io_uring]")


def test_io_uring_runs_natively_and_falls_back_to_sync_under_qemu_user(
    dut: DeviceUnderTest, backend: Backend, dev: BlkDevice, shadow: ShadowDisk
) -> None:
    if not dut.spec.backend.io.asynchronous:
        pytest.skip("spec uses synchronous I/O")
    data = os.urandom(64 * 1024)
    dev.write(256, data, 16)
    dev.flush()
    assert dev.read(256, len(data), 16) == data
    warnings = [line for line in backend.log_text().splitlines() if "io_uring unavailable" in line]
    if dut.target.emulated:  # qemu-user 7.2 has no io_uring: one warning, sync I/O
        assert len(warnings) == 1
        assert _io_uring_fds(backend.pid) == 0
    else:  # one ring per queue, really in use
        assert warnings == []
        assert _io_uring_fds(backend.pid) == dut.spec.device.num_queues


@pytest.fixture(scope="session")
def uring_enter_fails(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/preload/uring_enter_fails.c built for the host: an LD_PRELOAD."""
    src = Path(__file__).parent / "preload" / "uring_enter_fails.c"
    lib = tmp_path_factory.mktemp("preload") / "uring_enter_fails.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(lib), str(src), "-ldl"],
        check=True,
    )
    return lib


def test_io_uring_enter_failing_for_good_falls_back_to_sync_io_and_loses_nothing(
    dut: DeviceUnderTest,
    start_backend: Callable[..., Backend],
    uring_enter_fails: Path,
    shadow: ShadowDisk,
) -> None:
    """After a few good calls io_uring_enter fails with EIO for good: the requests
    queued on the ring run synchronously, and so does everything after, with one
    error logged per queue, not one per pass."""
    if not dut.spec.backend.io.asynchronous:
        pytest.skip("spec uses synchronous I/O")
    if dut.target.emulated:
        pytest.skip("qemu-user 7.2 has no io_uring: the device runs sync I/O from the start")
    if dut.target.sanitizer:
        pytest.skip("a sanitizer runtime must come first in the library list, before LD_PRELOAD")
    backend = start_backend(
        env={"LD_PRELOAD": str(uring_enter_fails), "BLKGEN_URING_ENTER_OK": "3"}
    )
    dev = dut.driver(queue_size=dut.spec.device.queue_size)
    backend.attach(dev)
    try:
        rng = random.Random(5)
        for round_ in range(4):
            for k in range(32):
                sector = (round_ * 32 + k) * 16
                if dut.spec.features.ro:
                    dev.submit(BlkRequest.read(dev.memory, sector, 8192, 2), kick=False)
                else:
                    data = rng.randbytes(8192)
                    dev.submit(BlkRequest.write(dev.memory, sector, data, 2), kick=False)
                    shadow.write(sector * 512, data)
            dev.queues[0].kick()
            done = dev.complete()
            assert [c.status for c in done] == [VIRTIO_BLK_S_OK] * 32
        assert dev.read(0, 4 * 32 * 8192) == shadow.expected(0, 4 * 32 * 8192)
    finally:
        dev.close()
    fallbacks = [ln for ln in backend.log_text().splitlines() if "falls back to synchronous" in ln]
    assert 1 <= len(fallbacks) <= dut.spec.device.num_queues, fallbacks


# ---- O_DIRECT -----------------------------------------------------------------------


def test_direct_io_serves_guest_buffers_of_any_alignment(
    dut: DeviceUnderTest, dev: BlkDevice, shadow: ShadowDisk
) -> None:
    """backend.direct: O_DIRECT runs on the device's aligned bounce buffers, so guest
    segments off the block grid work (virtio 1.2 puts no alignment on buffers)."""
    if not dut.spec.backend.direct:
        pytest.skip("spec uses the page cache")
    block = dut.spec.device.block_size
    odd = [block // 2 + 1, 2 * block - block // 2 - 1]  # neither aligned nor block-sized
    data = os.urandom(2 * block)
    if not dut.spec.features.ro:
        c = dev.run(BlkRequest.write(dev.memory, 0, data, odd))
        assert (c.status, c.used_len, c.guard_errors) == (VIRTIO_BLK_S_OK, 1, [])
        shadow.write(0, data)
    c = dev.run(BlkRequest.read(dev.memory, 0, 2 * block, odd))
    assert (c.status, c.used_len, c.guard_errors) == (VIRTIO_BLK_S_OK, 2 * block + 1, [])
    assert c.data == shadow.expected(0, 2 * block)


def test_direct_io_works_on_memory_that_cannot_be_pinned(
    dut: DeviceUnderTest, backend: Backend, shadow: ShadowDisk
) -> None:
    """hvisor's zone memory cannot be pinned (O_DIRECT into it fails with EFAULT):
    guest RAM from memfd_secret behaves the same, and the device must still work."""
    if not dut.spec.backend.direct:
        pytest.skip("spec uses the page cache")
    try:
        memory = GuestMemory(unpinnable=True)
    except GuestMemoryError as exc:
        pytest.skip(str(exc))
    d = dut.driver(memory=memory)
    try:
        backend.attach(d)
        data = os.urandom(64 * 1024)
        if not dut.spec.features.ro:
            c = d.run(BlkRequest.write(d.memory, 128, data, 4))
            assert (c.status, c.used_len) == (VIRTIO_BLK_S_OK, 1)
            shadow.write(128 * 512, data)
        for size in (4096, 64 * 1024, 1 << 20):  # a chunk, and the synchronous path
            c = d.run(BlkRequest.read(d.memory, 128, size, 4))
            assert (c.status, c.used_len, c.guard_errors) == (VIRTIO_BLK_S_OK, size + 1, [])
            assert c.data == shadow.expected(128 * 512, size)
    finally:
        d.close()
