"""backend.split_threads: large transfers copied by several threads at once.

A request of at least split_min_bytes is cut into split_threads parts of whole
pages; the queue's thread copies the first and helper threads ("blk-split")
the rest, and the request completes once every part has. These check that
the helpers exist, that data survives every way a cut can fall (between
segments, inside one, on the threshold), and that a part failing mid-way
counts only the bytes before the gap (virtio 1.2 2.7.8). Specs that do not
split skip, saying so.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from toolchain.guest import Backend, BlkDevice, BlkRequest, ShadowDisk
from toolchain.guest.blk import VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK

from .conftest import IMAGE_SIZE, DeviceUnderTest

SECTORS = IMAGE_SIZE // 512


@pytest.fixture
def splits(dut: DeviceUnderTest) -> int:
    """The spec's split_min_bytes; skip on specs that do not split."""
    if not dut.spec.backend.splits:
        pytest.skip(f"spec '{dut.spec.name}' copies each request on one thread")
    return dut.spec.backend.split_min_bytes


def thread_names(pid: int) -> list[str]:
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):  # the thread ended meanwhile
            names.append(Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip())
    return names


def cut(rng: random.Random, total: int, pieces: int) -> list[int]:
    """``total`` bytes in ``pieces`` segments of random, mostly odd, sizes."""
    points = sorted(rng.sample(range(1, total), pieces - 1))
    return [b - a for a, b in zip([0, *points], [*points, total], strict=True)]


def test_each_queue_has_its_helper_threads(
    dut: DeviceUnderTest, splits: int, backend: Backend, dev: BlkDevice
) -> None:
    dev.read(0, 4096)  # the device is set up and serving
    helpers = thread_names(backend.pid).count("blk-split")
    expected = (dut.spec.backend.split_threads - 1) * len(dev.queues)
    assert helpers == expected, thread_names(backend.pid)


def transfer_sizes(split_min: int) -> list[int]:
    return [split_min - 4096, split_min, split_min + 512, 3 * split_min + 1536, 1 << 20]


def test_reads_across_the_threshold_return_the_image(
    dut: DeviceUnderTest, splits: int, dev: BlkDevice, shadow: ShadowDisk
) -> None:
    rng = random.Random(splits)
    segs_max = min(dev.config().seg_max or 1, 64)
    for nbytes in transfer_sizes(splits):
        sector = rng.randrange(0, SECTORS - nbytes // 512)
        for segments in (1, cut(rng, nbytes, segs_max)):
            data = dev.read(sector, nbytes, segments)
            assert data == shadow.expected(sector * 512, nbytes), (nbytes, segments)


def test_writes_across_the_threshold_land_where_they_were_sent(
    dut: DeviceUnderTest, splits: int, dev: BlkDevice, shadow: ShadowDisk
) -> None:
    if dut.spec.features.ro:
        pytest.skip("read-only spec: it refuses writes before any copy")
    rng = random.Random(splits + 1)
    segs_max = min(dev.config().seg_max or 1, 64)
    for nbytes in transfer_sizes(splits):
        sector = rng.randrange(0, SECTORS - nbytes // 512)
        data = rng.randbytes(nbytes)
        dev.write(sector, data, cut(rng, nbytes, segs_max))
        shadow.write(sector * 512, data)
        assert dev.read(sector, nbytes) == data
    for offset in range(0, IMAGE_SIZE, 1 << 20):  # and nothing else changed
        assert dev.read(offset // 512, 1 << 20) == shadow.expected(offset, 1 << 20), offset


def test_large_requests_in_flight_together_all_complete(
    dut: DeviceUnderTest, splits: int, dev: BlkDevice, shadow: ShadowDisk
) -> None:
    """Several split requests queued at once: each waits for all its parts."""
    rng = random.Random(splits + 2)
    nbytes = 2 * splits
    slots = list(range(0, SECTORS - nbytes // 512, nbytes // 512))
    for _round in range(3):
        for slot in rng.sample(slots, 4):
            if dut.spec.features.ro or rng.random() < 0.5:
                dev.submit(BlkRequest.read(dev.memory, slot, nbytes, 3), kick=False)
            else:
                dev.submit(BlkRequest.write(dev.memory, slot, rng.randbytes(nbytes), 3), kick=False)
        dev.queues[0].kick()
        done = dev.complete()
        assert len(done) == 4
        for c in done:
            assert (c.status, c.guard_errors) == (VIRTIO_BLK_S_OK, []), c
            shadow.observe(c)


def test_a_part_past_the_end_of_a_shrunken_image_counts_only_the_bytes_before_it(
    dut: DeviceUnderTest, splits: int, dev: BlkDevice, image: Path, shadow: ShadowDisk
) -> None:
    """The image shrinks under the device: a split read across the new end
    completes with IOERR, and its used length is the bytes read before the gap
    (the parts after the end read nothing; the status is not counted)."""
    nbytes = 4 * splits
    sector = SECTORS - nbytes // 512
    threads = dut.spec.backend.split_threads
    step = (-(-nbytes // threads) + 4095) // 4096 * 4096  # the device's cut
    keep = step + step // 2 + 4096  # the file now ends inside the second part
    os.truncate(image, sector * 512 + keep)
    c = dev.run(BlkRequest.read(dev.memory, sector, nbytes))
    assert (c.status, c.used_len, c.guard_errors) == (VIRTIO_BLK_S_IOERR, keep, [])
    assert c.data[:keep] == shadow.expected(sector * 512, keep)


def test_with_one_cpu_allowed_no_helper_starts_and_large_requests_run_whole(
    dut: DeviceUnderTest,
    splits: int,
    start_backend: Callable[..., Backend],
    shadow: ShadowDisk,
) -> None:
    """Under taskset or a one-CPU cpuset the parts could only take turns: the
    device starts no helper, says so once, and serves large requests whole."""
    allowed = os.sched_getaffinity(0)
    with dut.driver() as dev:
        os.sched_setaffinity(0, {min(allowed)})  # the backend inherits it
        try:
            be = start_backend()
            be.attach(dev)
        finally:
            os.sched_setaffinity(0, allowed)
        nbytes = 2 * splits
        assert dev.read(8, nbytes, 3) == shadow.expected(8 * 512, nbytes)
        assert "blk-split" not in thread_names(be.pid)
    assert "one CPU allowed, large requests not split" in Path(be.log_path).read_text()
