"""Semantic rules: what the shape checks cannot see.

Each rule yields (key path, message). Rules run only on a spec whose shape
is valid, so they may rely on every field being present and typed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from .model import VIRTIO_BLK_ID_BYTES, SpecBody, ThreadingModel

Finding = tuple[tuple[str, ...], str]
Rule = Callable[[SpecBody], Iterator[Finding]]


def _queue_size_power_of_two(spec: SpecBody) -> Iterator[Finding]:
    size = spec.device.queue_size
    if size & (size - 1):
        lower = 1 << (size.bit_length() - 1)
        yield (
            ("device", "queue_size"),
            f"{size} is not a power of two (split rings index with num - 1); "
            f"try {lower} or {lower * 2}",
        )


def _serial_fits_get_id(spec: SpecBody) -> Iterator[Finding]:
    serial = spec.device.serial
    if not serial.isascii() or not serial.isprintable():
        yield (("device", "serial"), f"'{serial}' must be printable ASCII")
    elif len(serial) > VIRTIO_BLK_ID_BYTES:
        yield (
            ("device", "serial"),
            f"'{serial}' is {len(serial)} bytes; GET_ID returns at most {VIRTIO_BLK_ID_BYTES}",
        )


def _size_max_sector_multiple(spec: SpecBody) -> Iterator[Finding]:
    if spec.device.size_max % 512:
        yield (
            ("device", "size_max"),
            f"{spec.device.size_max} is not a multiple of 512 (the sector size)",
        )


def _block_size_power_of_two(spec: SpecBody) -> Iterator[Finding]:
    size = spec.device.block_size
    if size & (size - 1):
        yield (("device", "block_size"), f"{size} is not a power of two")


def _multiqueue_needs_mq_and_a_multiqueue_model(spec: SpecBody) -> Iterator[Finding]:
    n = spec.device.num_queues
    model = spec.threading.model
    if n > 1 and not spec.features.mq:
        yield (
            ("device", "num_queues"),
            f"{n} queues need features.mq (a driver without it uses queue 0 only)",
        )
    if n > 1 and not model.multiqueue:
        yield (
            ("threading", "model"),
            f"'{model.value}' serves one queue, but device.num_queues is {n}; "
            f"use {ThreadingModel.names(lambda m: m.multiqueue)}",
        )
    if model is ThreadingModel.PER_QUEUE and n < 2:
        yield (
            ("threading", "model"),
            "'per-queue' needs device.num_queues of at least 2 (with one queue it is "
            "'worker-drain')",
        )


def _range_limits_nonzero(spec: SpecBody) -> Iterator[Finding]:
    d = spec.device
    for feature, keys in (
        ("discard", ("max_discard_sectors", "max_discard_seg")),
        ("write_zeroes", ("max_write_zeroes_sectors", "max_write_zeroes_seg")),
    ):
        if not getattr(spec.features, feature):
            continue
        for key in keys:
            if getattr(d, key) == 0:
                yield (
                    ("device", key),
                    f"0 makes {feature.upper()} unusable while features.{feature} is on; "
                    "give at least 1",
                )


def _read_only_cannot_modify(spec: SpecBody) -> Iterator[Finding]:
    if spec.features.ro:
        for feature in ("discard", "write_zeroes"):
            if getattr(spec.features, feature):
                yield (
                    ("features", feature),
                    f"a read-only device (features.ro) cannot offer {feature.upper()}",
                )


def _config_wce_cannot_work_on_hvisor(spec: SpecBody) -> Iterator[Finding]:
    if spec.features.config_wce:
        yield (
            ("features", "config_wce"),
            "cannot work: the driver toggles the cache mode by writing config space, "
            "and hvisor-tool's framework rejects every config-space write",
        )


def _polling_needs_a_draining_worker(spec: SpecBody) -> Iterator[Finding]:
    t = spec.threading
    if t.poll_us and not t.model.worker_drains:
        yield (
            ("threading", "poll_us"),
            "polling needs a worker that owns its queue "
            f"({ThreadingModel.names(lambda m: m.worker_drains)}), not '{t.model.value}'",
        )


def _irq_tuning_needs_adaptive(spec: SpecBody) -> Iterator[Finding]:
    t = spec.threading
    if not t.irq.adaptive:
        for key in ("irq_pending", "irq_delay_us"):
            if key in t.model_fields_set:
                yield (("threading", key), f"only with irq: adaptive, not '{t.irq.value}'")


def _affinity_needs_workers(spec: SpecBody) -> Iterator[Finding]:
    t = spec.threading
    if t.affinity and not t.model.has_worker:
        yield (
            ("threading", "affinity"),
            f"'{t.model.value}' has no worker threads to pin",
        )


def _io_uring_needs_a_draining_worker(spec: SpecBody) -> Iterator[Finding]:
    model = spec.threading.model
    if spec.backend.io.asynchronous and not model.worker_drains:
        yield (
            ("backend", "io"),
            f"{spec.backend.io.value} keeps requests in flight on a worker that owns its "
            f"queue ({ThreadingModel.names(lambda m: m.worker_drains)}), not '{model.value}'",
        )


def _direct_io_needs_announced_block_size(spec: SpecBody) -> Iterator[Finding]:
    b = spec.backend
    if b.direct and not spec.features.blk_size:
        yield (
            ("backend", "direct"),
            "O_DIRECT needs every request aligned to the block size, so the driver must "
            "be told it: enable features.blk_size",
        )


def _split_needs_synchronous_buffered_io(spec: SpecBody) -> Iterator[Finding]:
    b = spec.backend
    if b.splits:
        if b.io.asynchronous:
            yield (
                ("backend", "split_threads"),
                f"splits synchronous transfers; {b.io.value} keeps its own requests in "
                "flight: use backend.io: sync",
            )
        elif b.direct:
            yield (
                ("backend", "split_threads"),
                "O_DIRECT transfers go through the queue's one bounce buffer and cannot "
                "be split: drop backend.direct",
            )
    elif "split_min_bytes" in b.model_fields_set:
        yield (("backend", "split_min_bytes"), "only with split_threads above 1")


def _seg_max_fits_a_direct_chain(spec: SpecBody) -> Iterator[Finding]:
    d = spec.device
    if spec.features.seg_max and not spec.features.indirect_desc and d.seg_max > d.queue_size - 2:
        if d.queue_size < 3:
            yield (
                ("device", "queue_size"),
                f"a {d.queue_size}-entry ring cannot carry header, data and status in one "
                "chain; give at least 4, or enable features.indirect_desc",
            )
            return
        yield (
            ("device", "seg_max"),
            f"{d.seg_max} data segments cannot fit a chain of at most device.queue_size "
            f"({d.queue_size}) descriptors with header and status (virtio 1.2 2.7.5.3.1); "
            f"give at most {d.queue_size - 2}, or enable features.indirect_desc",
        )


RULES: tuple[Rule, ...] = (
    _queue_size_power_of_two,
    _serial_fits_get_id,
    _size_max_sector_multiple,
    _block_size_power_of_two,
    _multiqueue_needs_mq_and_a_multiqueue_model,
    _range_limits_nonzero,
    _read_only_cannot_modify,
    _config_wce_cannot_work_on_hvisor,
    _polling_needs_a_draining_worker,
    _irq_tuning_needs_adaptive,
    _affinity_needs_workers,
    _io_uring_needs_a_draining_worker,
    _direct_io_needs_announced_block_size,
    _split_needs_synchronous_buffered_io,
    _seg_max_fits_a_direct_chain,
)


def check(spec: SpecBody) -> list[Finding]:
    """Every finding of every rule, in rule order."""
    return [finding for rule in RULES for finding in rule(spec)]
