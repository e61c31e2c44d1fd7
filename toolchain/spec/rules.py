"""Semantic rules: what the shape checks cannot see.

Each rule yields (key path, message). Rules run only on a spec whose shape
is valid, so they may rely on every field being present and typed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from .model import VIRTIO_BLK_ID_BYTES, SpecBody

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


RULES: tuple[Rule, ...] = (
    _queue_size_power_of_two,
    _serial_fits_get_id,
    _size_max_sector_multiple,
)


def check(spec: SpecBody) -> list[Finding]:
    """Every finding of every rule, in rule order."""
    return [finding for rule in RULES for finding in rule(spec)]
