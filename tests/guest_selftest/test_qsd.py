"""The Python guest against QEMU's vhost-user-blk export (qemu-storage-daemon)."""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from toolchain.guest import Backend, BlkDevice, BlkRequest, GuestMemory, ShadowDisk
from toolchain.guest.blk import (
    SECTOR_SIZE,
    VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
)
from toolchain.guest.vhost_user import VERSION, ProtocolFeature, Request

IMAGE_SIZE = 16 * 1024 * 1024  # as laid out by the ``image`` fixture
SECTORS = IMAGE_SIZE // SECTOR_SIZE


def test_handshake_and_config(dev: BlkDevice) -> None:
    assert dev.has_feature(VIRTIO_F_VERSION_1)
    assert dev.has_feature(VIRTIO_BLK_F_FLUSH)
    assert dev.protocol_features & (1 << ProtocolFeature.CONFIG)
    assert dev.protocol_features & (1 << ProtocolFeature.REPLY_ACK)
    cfg = dev.config()
    assert cfg.capacity == SECTORS
    assert cfg.blk_size == SECTOR_SIZE
    assert cfg.num_queues == 1


def test_raw_message_roundtrip(dev: BlkDevice) -> None:
    fe = dev.fe
    fe.send(Request.GET_FEATURES)
    code, flags, payload = fe.recv_reply(Request.GET_FEATURES)
    assert code == Request.GET_FEATURES and flags & 0x3 == VERSION
    assert struct.unpack("<Q", payload)[0] == dev.offered_features


@pytest.mark.parametrize(
    ("sector", "nbytes", "segments"),
    [
        (0, 512, 1),
        (1, 4096, 1),
        (7, 4096, 3),
        (100, 65536, 4),
        (SECTORS - 1, 512, 1),
        (SECTORS - 8, 4096, 8),
        (12345, 1536, [1, 511, 1024]),
        (2048, 8192, [4096, 7, 4089]),
    ],
)
def test_write_read_back(
    dev: BlkDevice, shadow: ShadowDisk, sector: int, nbytes: int, segments: int | list[int]
) -> None:
    off = sector * SECTOR_SIZE
    assert dev.read(sector, nbytes, segments) == shadow.expected(off, nbytes)
    data = random.Random(sector).randbytes(nbytes)
    dev.write(sector, data, segments)
    shadow.write(off, data)
    assert dev.read(sector, nbytes, 1) == data
    assert dev.read(sector, nbytes, segments) == data


def test_used_len_and_guards(dev: BlkDevice) -> None:
    c = dev.run(BlkRequest.read(dev.memory, 3, 2048, segments=2))
    assert c.ok and c.used_len == 2048 + 1
    c = dev.run(BlkRequest.write(dev.memory, 3, b"\x5a" * 1024))
    assert c.ok and c.guard_errors == []


def test_indirect_descriptors(qsd: Backend) -> None:
    with BlkDevice(indirect=True, timeout=3.0) as d:
        d.connect(qsd.socket_path)
        data = os.urandom(3 * 4096)
        d.write(64, data, segments=5)
        assert d.read(64, len(data), segments=3) == data


def test_flush_and_get_id(dev: BlkDevice) -> None:
    dev.flush()
    ident = dev.get_id()
    assert len(ident) == 20
    assert ident.startswith(b"vhost_user_blk")


def test_write_zeroes(dev: BlkDevice, shadow: ShadowDisk) -> None:
    c = dev.run(BlkRequest.ranges(dev.memory, VIRTIO_BLK_T_WRITE_ZEROES, [(40, 8, 0)]))
    assert c.ok
    shadow.observe(c)
    assert dev.read(39, 10 * SECTOR_SIZE) == shadow.expected(39 * SECTOR_SIZE, 10 * SECTOR_SIZE)


def test_64_in_flight(qsd: Backend, shadow: ShadowDisk) -> None:
    dev = BlkDevice(queue_size=256, timeout=3.0)
    dev.connect(qsd.socket_path)
    rng = random.Random(64)
    for k in range(64):
        sector = rng.randrange(0, SECTORS - 16) & ~15  # 8 KiB slots
        size = rng.choice([512, 1024, 4096, 8192])
        data = rng.randbytes(size)
        req = BlkRequest.write(dev.memory, sector, data, rng.randint(1, 4))
        dev.submit(req, kick=False, indirect=k % 2 == 0)
    assert dev.queues[0].avail_idx == 64
    dev.queues[0].kick()
    done = dev.complete(timeout=5.0)
    assert len(done) == 64
    # overlapping writes would race: apply in completion order only where disjoint
    starts = [c.request.sector for c in done]
    assert all(c.ok for c in done)
    for c in done:
        if starts.count(c.request.sector) == 1:
            shadow.observe(c)
        else:
            shadow.forget(c.request.sector * SECTOR_SIZE, 8192)
    for c in done:
        dev.submit(BlkRequest.read(dev.memory, c.request.sector, len(c.request.payload), 2))
    reads = dev.complete(timeout=5.0)
    assert len(reads) == 64 and all(r.ok for r in reads)
    for r in reads:
        shadow.observe(r)
    dev.close()


def test_stop_and_resume_queue(dev: BlkDevice) -> None:
    dev.write(10, b"\x11" * 512)
    q = dev.queues[0]
    base = dev.stop_queue(0)
    assert base == q.avail_idx == 1
    req = BlkRequest.write(dev.memory, 11, b"\x22" * 512)
    dev.submit(req)  # published and kicked while stopped: must wait
    assert q.wait_used(timeout=0.3) == []
    dev.resume_queue(0, base)
    q.kick()
    (c,) = dev.complete()
    assert c.ok
    assert dev.read(10, 1024) == b"\x11" * 512 + b"\x22" * 512
    assert dev.stop_queue(0) == q.avail_idx == 3


def test_disconnect_and_reconnect(dev: BlkDevice) -> None:
    dev.write(200, b"persist!" * 64)
    dev.disconnect()
    dev.reconnect()
    assert dev.config().capacity == SECTORS
    assert dev.read(200, 512) == b"persist!" * 64
    dev.write(201, b"\x33" * 512)
    dev.reconnect()
    assert dev.read(200, 1024) == b"persist!" * 64 + b"\x33" * 512


def test_no_interrupt_and_no_event_idx(qsd: Backend) -> None:
    with BlkDevice(feature_mask=~(1 << VIRTIO_RING_F_EVENT_IDX), timeout=3.0) as d:
        d.connect(qsd.socket_path)
        q = d.queues[0]
        d.read(0, 512)
        assert q.notifications >= 1
        q.set_no_interrupt(True)
        seen = q.notifications
        for k in range(4):
            d.read(k, 512)
        assert q.notifications == seen  # completions found by polling used->idx
        q.set_no_interrupt(False)


def test_event_idx_negotiated(dev: BlkDevice) -> None:
    q = dev.queues[0]
    assert q.event_idx
    for k in range(5):
        dev.read(k, 512)
    assert q.used_event == q.last_used == 5
    assert q.avail_event == q.avail_idx  # backend asks to be kicked on the next entry


def test_buffers_in_several_regions(qsd: Backend) -> None:
    # Two adjacent regions: a data buffer straddles the boundary.
    mem = GuestMemory([(0x1000_0000, 1 << 20), (0x1010_0000, 1 << 20)])
    with BlkDevice(mem, timeout=3.0) as d:
        d.connect(qsd.socket_path)
        data = os.urandom(2048)
        straddle = 0x1010_0000 - 1000
        mem.alloc(4096, region=1)  # keep the allocator away from the straddling buffer
        hdr = mem.alloc(16, region=1)
        status = mem.alloc(1, region=1)
        mem.write(hdr, BlkRequest.header(1, 300))
        mem.write(straddle, data)
        mem.write(status, b"\xff")
        q = d.queues[0]
        head = q.add_chain([(hdr, 16, False), (straddle, len(data), False), (status, 1, True)])
        q.publish(head)
        q.kick()
        (used,) = q.wait_used(3.0)
        assert used.id == head and mem.read(status, 1)[0] == VIRTIO_BLK_S_OK
        q.free_chain(head)
        req = BlkRequest.read(mem, 300, 2048, region=1)
        assert d.run(req).data == data


def test_gap_regions(qsd: Backend) -> None:
    with BlkDevice(GuestMemory.with_gap(2, 4 << 20, gap=1 << 20), timeout=3.0) as d:
        d.connect(qsd.socket_path)
        data = os.urandom(4096)
        wreq = BlkRequest.write(d.memory, 8, data, segments=2, region=1)
        assert d.run(wreq).ok
        assert d.read(8, 4096) == data


def test_two_queues(start_qsd: Callable[..., Backend]) -> None:
    be = start_qsd(num_queues=2)
    with BlkDevice(num_queues=2, timeout=3.0) as d:
        d.connect(be.socket_path)
        assert d.max_queues == 2 and d.config().num_queues == 2
        d.write(0, b"\x01" * 512, queue=0)
        d.write(1, b"\x02" * 512, queue=1)
        assert d.read(0, 1024, queue=1) == b"\x01" * 512 + b"\x02" * 512


def test_needs_reset_sees_a_backend_that_closed_the_connection(
    qsd_binary: str, image: Path, tmp_path: Path
) -> None:
    """The vhost-user side of BlkDevice.wait_needs_reset: EOF on the socket, or nothing.

    (A killed backend reads the same: a caller tells them apart with alive().)
    """
    be = Backend.qemu_storage_daemon(str(image), tmp_path / "logs", binary=qsd_binary)
    with be, BlkDevice(timeout=3.0) as d:
        d.connect(be.socket_path)
        assert d.needs_reset() is None
        assert d.wait_needs_reset(0.1) is None
        be.kill()
        told = d.wait_needs_reset(3.0)
        assert told is not None and told.transport == "vhost-user"
        assert told.config_interrupt is None


def test_needs_reset_after_a_vu_panic_and_reconnect_recovers(dev: BlkDevice, qsd: Backend) -> None:
    """libvhost-user drops the frontend on a ring it refuses (here a zero-length buffer);
    the helper reports it, the backend lives, a reconnect serves again."""
    q = dev.queues[0]
    hdr = dev.memory.alloc(16)
    dev.memory.write(hdr, BlkRequest.header(0, 0))
    head = q.add_chain([(hdr, 16, False), (hdr, 0, True)])
    q.publish(head)
    q.kick()
    told = dev.wait_needs_reset(3.0)
    assert told is not None
    assert qsd.alive()
    dev.reconnect()
    assert dev.needs_reset() is None
    assert len(dev.read(0, 512)) == 512
