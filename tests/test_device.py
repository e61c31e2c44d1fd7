"""The generated device, end to end: every spec x target, driven by the Python guest.

These read as the device's behavioural specification. Each runs against the
real backend binary (the rk3588 build under qemu-aarch64, the host build
natively) and checks status, used length, data and guard bytes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from toolchain.flash import git_revision
from toolchain.guest import Backend, BlkDevice, BlkRequest, ShadowDisk
from toolchain.guest.blk import (
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_GET_ID,
)
from toolchain.guest.hostile import fd_count

from .conftest import IMAGE_SIZE, LAYOUT, ROOT, DeviceUnderTest, in_flight, require_segments

SECTORS = IMAGE_SIZE // 512
F_PROTOCOL_FEATURES = 30


# ---- identity and configuration -------------------------------------------


@pytest.mark.only_transport("vhost-user")
def test_version_names_the_spec_its_model_hash_the_toolkit_and_the_target(
    dut: DeviceUnderTest,
) -> None:
    """`vhost-user-blk --version`: what a deployed binary was built from."""
    proc = subprocess.run(
        [*dut.prefix, str(dut.binary), "--version"],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, **dut.env},
    )  # fmt: skip
    assert (proc.returncode, proc.stderr) == (0, "")
    manifest = json.loads((LAYOUT.generated_for(dut.spec.name) / "manifest.json").read_text())
    assert proc.stdout == (
        f"vhost-user-blk (hvisor-blkgen): spec {dut.spec.name} (sha256 {manifest['sha256']}), "
        f"toolkit {git_revision(ROOT)}, target {dut.target.name}\n"
    )


def test_offers_exactly_the_spec_features(dev: BlkDevice, dut: DeviceUnderTest) -> None:
    offered = dev.offered_features & ~(1 << F_PROTOCOL_FEATURES)
    assert offered == dut.manifest["feature_mask"]


def test_config_reports_capacity_seg_max_and_size_max(dev: BlkDevice, dut: DeviceUnderTest) -> None:
    config = dev.config()
    assert config.capacity == SECTORS
    assert config.seg_max == dut.spec.device.seg_max
    assert config.size_max == dut.spec.device.size_max
    assert config.blk_size == (dut.spec.device.block_size if dut.spec.features.blk_size else 512)


def test_get_id_returns_the_spec_serial_zero_padded(dev: BlkDevice, dut: DeviceUnderTest) -> None:
    req = BlkRequest.get_id(dev.memory)
    c = dev.run(req)
    serial = dut.spec.device.serial.encode()
    assert c.status == VIRTIO_BLK_S_OK
    assert c.data == serial + bytes(20 - len(serial))
    assert c.used_len == 20 + 1
    assert c.guard_errors == []


def test_get_id_into_a_short_buffer_writes_only_that_buffer(
    dev: BlkDevice, dut: DeviceUnderTest
) -> None:
    req = BlkRequest.simple(dev.memory, VIRTIO_BLK_T_GET_ID, in_len=8)
    c = dev.run(req)
    assert c.status == VIRTIO_BLK_S_OK
    assert c.data == dut.spec.device.serial.encode()[:8]
    assert c.used_len == 8 + 1
    assert c.guard_errors == []


def test_unknown_request_type_completes_with_unsupp(dev: BlkDevice) -> None:
    c = dev.run(BlkRequest.simple(dev.memory, 0x4242, in_len=0))
    assert c.status == VIRTIO_BLK_S_UNSUPP
    assert c.used_len == 1
    assert c.guard_errors == []


# ---- reads and writes -------------------------------------------------------


@pytest.fixture
def writable(dut: DeviceUnderTest) -> None:
    """Skip on specs whose device is read-only (those have their own tests)."""
    if dut.spec.features.ro:
        pytest.skip("read-only spec: writes are covered by test_read_only_spec_*")


ROUND_TRIPS = [
    (0, 512, 1),
    (1, 4096, 1),
    (7, 4096, 3),
    (100, 65536, 1),
    (2048, 65536, 16),
    (SECTORS - 1, 512, 1),
    (SECTORS - 256, 131072, [512, 3584, 61440, 65536]),
]


@pytest.mark.parametrize(("sector", "nbytes", "segments"), ROUND_TRIPS)
def test_write_then_read_round_trips_at_many_offsets_and_sizes(
    dut: DeviceUnderTest,
    dev: BlkDevice,
    shadow: ShadowDisk,
    sector: int,
    nbytes: int,
    segments: int | list[int],
    writable: None,
) -> None:
    require_segments(dut, dev, segments if isinstance(segments, int) else len(segments))
    before = dev.read(sector, nbytes)
    assert before == shadow.expected(sector * 512, nbytes)
    data = os.urandom(nbytes)
    dev.write(sector, data, segments)
    assert dev.read(sector, nbytes) == data
    assert dev.read(sector, nbytes, segments) == data


def test_read_completes_with_data_length_plus_status_as_used_length(dev: BlkDevice) -> None:
    c = dev.run(BlkRequest.read(dev.memory, 8, 8192, [4096, 1024, 3072]))
    assert (c.status, c.used_len, c.guard_errors) == (VIRTIO_BLK_S_OK, 8192 + 1, [])


def test_write_completes_with_status_only_as_used_length(dev: BlkDevice, writable: None) -> None:
    c = dev.run(BlkRequest.write(dev.memory, 8, os.urandom(4096), 2))
    assert (c.status, c.used_len, c.guard_errors) == (VIRTIO_BLK_S_OK, 1, [])


def test_flush_completes_ok_and_the_written_data_is_in_the_image(
    dev: BlkDevice, image: Path, writable: None
) -> None:
    data = os.urandom(8192)
    dev.write(64, data)
    dev.flush()
    with image.open("rb") as f:
        f.seek(64 * 512)
        assert f.read(len(data)) == data


def test_acknowledged_flushed_data_survives_sigkill_of_the_backend(
    dev: BlkDevice, backend: Backend, image: Path, writable: None
) -> None:
    data = os.urandom(4096)
    dev.write(200, data)
    dev.flush()
    backend.kill()
    backend.proc.wait(10) if backend.proc else None
    backend.returncode = 0  # killed on purpose: not a failure of teardown
    with image.open("rb") as f:
        f.seek(200 * 512)
        assert f.read(len(data)) == data


# ---- bounds -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("sector", "nbytes"),
    [(SECTORS, 512), (SECTORS - 1, 1024), (2**63, 512), (2**64 - 1, 512)],
    ids=["at-end", "straddling-end", "huge", "wrapping"],
)
def test_read_past_capacity_completes_with_ioerr(dev: BlkDevice, sector: int, nbytes: int) -> None:
    """Used len 0: the unwritten data buffer precedes the status (virtio 1.2 2.7.8)."""
    c = dev.run(BlkRequest.read(dev.memory, sector, nbytes))
    assert (c.status, c.used_len, c.guard_errors) == (VIRTIO_BLK_S_IOERR, 0, [])


@pytest.mark.parametrize(
    ("sector", "nbytes"),
    [(SECTORS, 512), (SECTORS - 1, 1024), (2**64 - 1, 4096)],
    ids=["at-end", "straddling-end", "wrapping"],
)
def test_write_past_capacity_completes_with_ioerr_and_does_not_grow_the_image(
    dev: BlkDevice, image: Path, shadow: ShadowDisk, sector: int, nbytes: int, writable: None
) -> None:
    c = dev.run(BlkRequest.write(dev.memory, sector, os.urandom(nbytes)))
    assert (c.status, c.used_len) == (VIRTIO_BLK_S_IOERR, 1)
    assert image.stat().st_size == IMAGE_SIZE
    assert dev.read(SECTORS - 2, 1024) == shadow.expected(IMAGE_SIZE - 1024, 1024)


def test_data_length_not_a_multiple_of_512_completes_with_ioerr(dev: BlkDevice) -> None:
    c = dev.run(BlkRequest.read(dev.memory, 0, 1000))
    assert (c.status, c.used_len, c.guard_errors) == (VIRTIO_BLK_S_IOERR, 0, [])


# ---- concurrency ------------------------------------------------------------


def test_64_requests_in_flight_all_complete_and_match_a_shadow_disk(
    dev: BlkDevice, shadow: ShadowDisk, writable: None
) -> None:
    rng = random.Random(64)
    slots = SECTORS // 64  # each request of a batch gets its own slot: no overlaps
    n = in_flight(dev.queue_size)
    max_segs = max(1, min(4, dev.queue_size // n - 2))  # n chains must fit the ring
    for _round in range(4):
        for slot in rng.sample(range(slots), n):
            sector = slot * 64 + rng.randrange(0, 32)
            nbytes = 512 * rng.randint(1, 32)
            segs = min(rng.randint(1, max_segs), nbytes // 512)
            if rng.random() < 0.5:
                req = BlkRequest.write(dev.memory, sector, rng.randbytes(nbytes), segs)
            else:
                req = BlkRequest.read(dev.memory, sector, nbytes, segs)
            dev.submit(req, kick=False)
        dev.queues[0].kick()
        done = dev.complete()
        assert len(done) == n
        for c in done:
            assert (c.status, c.guard_errors) == (VIRTIO_BLK_S_OK, []), c
            shadow.observe(c)  # applies writes, checks reads
    assert dev.read(0, IMAGE_SIZE // 8) == shadow.expected(0, IMAGE_SIZE // 8)


# ---- ring and connection life cycle -----------------------------------------


@pytest.mark.vhost_user_only("GET_VRING_BASE stops one ring; virtio-mmio has no such operation")
def test_stopped_ring_is_left_alone_and_resumes_where_it_stopped(
    dev: BlkDevice, writable: None
) -> None:
    dev.write(0, b"\x5a" * 4096)
    base = dev.stop_queue(0)
    assert base == dev.queues[0].avail_idx
    dev.submit(BlkRequest.read(dev.memory, 0, 4096))
    time.sleep(0.3)
    assert dev.queues[0].used_idx == base  # nothing completed while stopped
    dev.resume_queue(0, base)
    dev.queues[0].kick()
    (c,) = dev.complete()
    assert (c.status, c.data) == (VIRTIO_BLK_S_OK, b"\x5a" * 4096)


def test_disconnect_and_reconnect_keeps_the_data_and_does_not_leak(
    dev: BlkDevice, backend: Backend, writable: None
) -> None:
    data = os.urandom(4096)
    dev.write(10, data)
    dev.reconnect()
    fds = fd_count(backend.pid)
    for _ in range(20):
        dev.reconnect()
        assert dev.read(10, 4096) == data
    assert fd_count(backend.pid) == fds


def test_disconnect_with_requests_in_flight_then_reconnect_works(
    dev: BlkDevice, backend: Backend, writable: None
) -> None:
    for i in range(in_flight(dev.queue_size)):
        dev.submit(BlkRequest.write(dev.memory, i * 8, os.urandom(4096)), kick=False)
    dev.queues[0].kick()
    dev.reconnect()
    assert backend.alive()
    data = os.urandom(4096)
    dev.write(3, data)
    assert dev.read(3, 4096) == data


def test_sigterm_with_requests_in_flight_exits_cleanly(
    dev: BlkDevice, backend: Backend, dut: DeviceUnderTest
) -> None:
    for i in range(in_flight(dev.queue_size)):
        dev.submit(BlkRequest.read(dev.memory, i * 8, 4096), kick=False)
    dev.queues[0].kick()
    start = time.monotonic()
    assert backend.stop(signal.SIGTERM, timeout=dut.timeout) == 0
    assert time.monotonic() - start < dut.timeout


# ---- read-only ----------------------------------------------------------------


def test_read_only_backend_offers_ro_and_refuses_writes(
    dut: DeviceUnderTest, start_backend: Callable[..., Backend], shadow: ShadowDisk
) -> None:
    be = start_backend(read_only=True)
    with dut.driver() as d:
        be.attach(d)
        assert d.offered_features >> VIRTIO_BLK_F_RO & 1
        c = d.run(BlkRequest.write(d.memory, 0, os.urandom(512)))
        assert (c.status, c.used_len) == (VIRTIO_BLK_S_IOERR, 1)
        assert d.read(0, 512) == shadow.expected(0, 512)
