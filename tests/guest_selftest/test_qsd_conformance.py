"""The conformance cases against QEMU's reference backend (qemu-storage-daemon).

The same case tables as tests/test_conformance.py (toolchain/guest/
conformance.py), run against qemu-storage-daemon's vhost-user-blk export
(QEMU's block/export/vhost-user-blk-server.c over libvhost-user). Two things
come out of it:

- a check of the cases themselves: where qsd agrees with the rules, the case
  is not testing something only our device does;
- the list of places where QEMU and the rules part ways. Each is recorded in
  QSD_DIFFERS with the virtio 1.2 section that decides it and what qsd does;
  those cases are strict xfails, so a change in qsd's behaviour shows up.

Run: python3 -m pytest tests/guest_selftest/test_qsd_conformance.py
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from toolchain.guest import Backend, BlkDevice, BlkError, GuestMemory, ShadowDisk, VirtqueueError
from toolchain.guest.conformance import CASES, Case, Limits, Skip, check_device_works, run_case

#: qsd's GET_ID answer (QEMU 7.2: snprintf of this into the first data buffer).
QSD_SERIAL = "vhost_user_blk"
QUEUE_SIZE = 128
REGION = 16 * 1024 * 1024
GAP = 0x10_0000

#: case -> (the section that decides, what qsd does instead), from runs of this file
#: against qemu-storage-daemon 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18). "qsd breaks"
#: marks where the virtio 1.2 text decides against qsd; "rules" where the text
#: leaves it to the device and the rules choose differently from QEMU.
QSD_DIFFERS: dict[str, tuple[str, str]] = {}


def _differ(section: str, what: str, *names: str) -> None:
    for name in names:
        QSD_DIFFERS[name] = (section, what)


_differ(
    "§2.7.4.1, §2.7.5; qsd breaks: 1.2 does not forbid len 0",
    "libvhost-user vu_panic 'zero sized buffers are not allowed': connection closed",
    "read-zero-length-descriptors-everywhere",
    "write-zero-length-descriptors-everywhere",
    "read-zero-length-readable-after-writable-is-ignored",
    "read-zero-length-writable-after-the-status",
    "flush-header-split-and-zero-length-data",
    "a-chain-using-every-descriptor-of-the-ring",
    "indirect-with-zero-length-entries",
    "only-a-zero-length-writable-descriptor",
    "only-zero-length-descriptors",
    "header-of-8-bytes-and-a-zero-length-one",
)
_differ(
    "§5.2.6 'NUL-padded ASCII string up to 20 bytes'; qsd breaks",
    "copies the serial and one NUL (15 bytes), leaves the rest of the 20 untouched; "
    "used len = all writable bytes + 1 (33 for 32)",
    "get-id",
    "get-id-status-at-the-tail-of-the-data",
    "get-id-data-split-7+13",
    "get-id-into-32-bytes",
)
_differ(
    "§2.7.5.3.2 'MUST handle ... normal chained descriptors followed by a single "
    "INDIRECT'; qsd breaks",
    "an INDIRECT descriptor after direct ones is taken as a plain buffer: request dropped "
    "(no completion) or, readable after writable, vu_panic",
    "header-then-indirect-data-and-status",
    "header-and-data-then-indirect-status",
    "write-header-then-indirect-data-and-status",
    "indirect-get-id",
)
_differ(
    "§2.7.8.2 / §2.7.14; rules: used len 0 (the buffer is returned)",
    "no device-writable byte: 'virtio-blk request missing headers', never completed "
    "(the descriptors are lost to the driver)",
    "header-only",
    "header-and-readable-data-only",
    "get-id-with-a-readable-status",
)
_differ(
    "§5.2.6; rules: IOERR",
    "header shorter than 16 bytes (or no readable byte): request dropped, never completed",
    "header-of-8-bytes",
    "header-of-15-bytes",
    "no-readable-bytes-at-all",
)
_differ(
    "§2.7.4.2 (a driver MUST); rules: IOERR, the queue keeps working",
    "vu_panic 'Incorrect order for descriptors': connection closed",
    "readable-data-after-writable-data",
    "readable-status-after-writable-data",
    "header-after-the-status",
)
_differ(
    "§2.7.5 (guest-physical addresses); rules: IOERR for a data buffer",
    "vu_panic 'virtio: invalid address for buffers': connection closed",
    *(f"in-data-{k}" for k in ("below-ram", "past-the-end", "in-the-gap")),
    *(f"in-data-{k}" for k in ("straddling-the-end", "spanning-the-gap", "wrapping-2-64")),
    *(f"out-data-{k}" for k in ("below-ram", "in-the-gap", "straddling-the-end")),
    "out-data-wrapping-2-64",
    "second-data-buffer-outside-ram",
    "header-outside-ram",
)
_differ(
    "§5.2.6, §5.2.6.1; rules: IOERR",
    "data on the wrong side is ignored (IN reads into whatever is writable, extra "
    "readable bytes skipped, FLUSH/GET_ID data ignored): OK",
    "in-with-readable-data",
    "in-with-readable-and-writable-data",
    "in-header-of-24-bytes",
    "out-with-writable-data",
    "get-id-with-readable-data",
    "flush-with-readable-data",
    "flush-with-writable-data",
)
_differ(
    "§2.7.8.2 'MUST write at least len bytes ... beginning at the first device-writable "
    "buffer'; qsd breaks",
    "IOERR / UNSUPP right, but used len = every writable byte + 1, though only the "
    "status byte was written",
    "in-of-1000-bytes",
    "in-of-511-bytes",
    "in-of-4097-bytes",
    *(
        f"in-sector-{k}"
        for k in (
            "at-capacity",
            "straddling-the-end",
            "far-past-the-end",
            "times-512-wraps-to-0",
            "times-512-wraps-to-512",
            "u64-max",
        )
    ),
    "unknown-type-with-writable-data",
)
_differ(
    "§5.2.6.3: VIRTIO_BLK_T_BARRIER is legacy only; qsd breaks (UNSUPP for VERSION_1)",
    "masks the BARRIER bit: type 0x80000000 is served as an IN of 0 bytes",
    "unknown-type-0x80000000",
)
_differ(
    "§2.7.13 (the ring cannot wrap); rules: nothing done, nothing written",
    "closes the connection, but first reads a chain of the broken ring into guest memory",
    "avail-index-a-ring-and-one-ahead",
    "avail-index-0x8000-ahead",
)
_differ(
    "§2.7.5.3.1 (a driver MUST NOT); rules: broken, told",
    "INDIRECT without the feature: followed as the head; mid-chain taken as a plain "
    "buffer and the request dropped",
    "indirect-not-negotiated-as-the-head",
    "indirect-not-negotiated-after-the-header",
)
_differ(
    "§2.7.5.3.1 (a driver MUST NOT); rules: broken, told",
    "INDIRECT with NEXT: the table followed, NEXT ignored; nested INDIRECT: request "
    "dropped; a 65536-entry table: served",
    "indirect-with-next",
    "nested-indirect",
    "indirect-table-longer-than-any-chain",
)
_differ(
    "§5.2.3, §5.2.4; qsd breaks: offers VIRTIO_BLK_F_SIZE_MAX with size_max 0",
    "does not enforce the size_max it offers (0): a 512-byte segment is served",
    "size-max-plus-512-segment-is-refused",
)

ALL = {name: case for table in CASES.values() for name, case in table.items()}


@pytest.fixture
def connect(qsd: Backend) -> Iterator[Callable[..., BlkDevice]]:
    """Factory: a driver on guest RAM with a gap, refusing ``refuse`` feature bits."""
    made: list[BlkDevice] = []

    def make(refuse: int = 0) -> BlkDevice:
        d = BlkDevice(
            GuestMemory.with_gap(2, REGION, GAP),
            queue_size=QUEUE_SIZE,
            timeout=3.0,
            feature_mask=~refuse,
        )
        made.append(d)
        d.connect(qsd.socket_path)
        return d

    yield make
    for d in made:
        d.close()


def conform(
    case: Case,
    qsd: Backend,
    connect: Callable[..., BlkDevice],
    shadow: ShadowDisk,
    image: Path,
) -> list[str]:
    """Everything in which qsd's outcome for ``case`` differs from the rules."""
    dev = connect(case.refuse)
    limits = Limits.of(dev, serial=QSD_SERIAL)
    try:
        result = run_case(dev, case, limits, shadow, settle=0.2)
    except Skip as e:
        pytest.skip(str(e))
    problems = result.mismatches()
    if not qsd.alive():
        return [*problems, "qemu-storage-daemon died"]
    if result.told is not None:
        dev.reconnect()
    try:
        problems += [f"afterwards: {p}" for p in check_device_works(dev, limits, shadow)]
    except (BlkError, VirtqueueError) as e:  # e.g. a completion of the case arrives late
        problems.append(f"afterwards: {e}")
    if image.read_bytes() != bytes(shadow.data):
        problems.append("the image differs from what the rules allow")
    if problems:
        print(result.report())  # shown with -rA / on failure: the full picture
    return problems


@pytest.mark.parametrize("name", list(ALL))
def test_qsd_agrees_with_the_rules(
    qsd: Backend,
    connect: Callable[..., BlkDevice],
    shadow: ShadowDisk,
    image: Path,
    name: str,
    request: pytest.FixtureRequest,
) -> None:
    """One conformance case against qemu-storage-daemon (sections cited by the case)."""
    if name in QSD_DIFFERS:
        section, what = QSD_DIFFERS[name]
        request.applymarker(
            pytest.mark.xfail(reason=f"qsd differs ({section}): {what}", strict=True)
        )
    problems = conform(ALL[name], qsd, connect, shadow, image)
    assert problems == [], f"{name} ({ALL[name].section}): " + "; ".join(problems)
