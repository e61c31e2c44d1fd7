"""The runtime's "tell the driver" hook and the guest's view of it, with a probe device.

A device that finds a ring breaking a structural rule sets DEVICE_NEEDS_RESET
(0x40) in Status and the configuration-change bit in InterruptStatus, then
calls the optional core hook ``virtio_dev_needs_reset()`` (virtio 1.2 section
2.1.2: "The device SHOULD set DEVICE_NEEDS_RESET when it enters an error
state that a reset is needed"). The runtime's answer differs per transport:

- vhost-user: the backend closes the frontend connection, resets the device
  as on a disconnect, and accepts the next frontend (libvhost-user's
  vu_panic on a broken ring);
- hvisor: nothing beyond hvisor-tool HEAD, which has no such hook: the
  driver reads DEVICE_NEEDS_RESET from Status.

The generated devices do not call the hook yet, so these tests build
tests/needs_reset_probe/ (a device that only completes chains, and tells the
driver on the two faults it knows) with the runtime, and drive it through
:meth:`BlkDevice.wait_needs_reset` and :meth:`BlkDevice.reconnect` on both
transports, for each selected target.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from toolchain.bridge.backend import HvisorBackend
from toolchain.bridge.mmio import DEVICE_NEEDS_RESET, INTERRUPT_STATUS, STATUS, MmioTransport
from toolchain.build import build
from toolchain.guest import Backend, BlkDevice, BlkRequest
from toolchain.guest.blk import VIRTIO_BLK_T_GET_ID
from toolchain.guest.hostile import Desc, RawQueue
from toolchain.targets import load_target, sanitizer_reports

from .conftest import LAYOUT, SANITIZER_TIMEOUT, TIMEOUT, selected_targets, selected_transports

PROBE_SOURCES = Path(__file__).parent / "needs_reset_probe"
TRANSPORTS = ("vhost-user", "hvisor")
QUEUE_SIZE = 64


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test with a ``where`` runs per transport x selected target."""
    explicit = any(m.args[0] == "where" for m in metafunc.definition.iter_markers("parametrize"))
    if "where" not in metafunc.fixturenames or explicit:
        return
    config = metafunc.config
    transports = [t for t in TRANSPORTS if t in selected_transports(config)]
    params = []
    for tr in transports:
        for tg in selected_targets(config):
            marks = []
            if tr == "hvisor" and "-fsanitize=thread" in load_target(tg).cflags:
                # The hvisor core reads registers the device's threads write, as
                # HEAD's does (docs/runtime.md, "Sanitizer builds").
                marks.append(pytest.mark.skip(reason="TSan: the hvisor core races as HEAD's"))
            params.append(pytest.param((tr, tg), id=f"{tr}@{tg}", marks=marks))
    if not params:
        params = [pytest.param(None, marks=pytest.mark.skip(reason="no transport selected"))]
    metafunc.parametrize("where", params)


@pytest.fixture
def probe(
    where: tuple[str, str], tmp_path: Path, log_dir: Path
) -> Iterator[Callable[[], tuple[Backend, BlkDevice]]]:
    """Factory: the probe device's backend and a driver attached to it."""
    transport, target_name = where
    target = load_target(target_name)
    binary = build(target, PROBE_SOURCES, LAYOUT.build_dir / "needs-reset-probe" / target_name)
    image = tmp_path / "unused.img"
    image.write_bytes(bytes(4096))
    timeout = SANITIZER_TIMEOUT if target.sanitizer else TIMEOUT[target.emulated]
    started: list[tuple[Backend, BlkDevice]] = []

    def start() -> tuple[Backend, BlkDevice]:
        make = Backend.vhost_user_blk if transport == "vhost-user" else HvisorBackend.runtime
        be = make(
            str(binary.binary),
            str(image),
            log_dir,
            prefix=target.runner,
            name=f"probe{len(started)}",
            env=dict(target.env),
        )
        be.start()
        dev = BlkDevice(timeout=timeout, queue_size=QUEUE_SIZE)
        started.append((be, dev))
        be.attach(dev)
        return be, dev

    yield start
    for be, dev in started:
        dev.close()
        if be.proc is None:  # an hvisor backend no driver attached to
            code: int | None = 0
        elif be.alive() or be.returncode is None:
            code = be.stop()
        else:  # stopped by the test (a deliberate kill records 0)
            code = be.returncode
        be.cleanup()
        assert code == 0, f"{be.name} exited with {code}:\n{be.log_text()}"
        assert sanitizer_reports(be.log_text()) == [], be.log_text()


def complete_one(dev: BlkDevice) -> None:
    """The probe completes any chain with used length 0 and writes nothing."""
    req = BlkRequest.simple(dev.memory, VIRTIO_BLK_T_GET_ID, 20)
    c = dev.run(req)
    assert (c.used_len, c.guard_errors) == (0, [])


def break_the_ring(dev: BlkDevice, how: str) -> None:
    """Post a chain the probe treats as a structural fault (and kick)."""
    raw = RawQueue(dev)
    q = raw.q
    if how == "avail-ahead":
        out = raw.post({0: Desc(0, 0)}, [0], avail_idx=q._avail_idx + raw.num + 1, expect=0)
    else:  # head index >= num
        out = raw.post({}, [raw.num], expect=0)
    assert out.used == []


@pytest.mark.parametrize("how", ["avail-ahead", "head-out-of-ring"])
def test_the_driver_is_told_and_a_reconnect_recovers_every_time(
    probe: Callable[[], tuple[Backend, BlkDevice]], where: tuple[str, str], how: str
) -> None:
    """Told once per fault (connection closed / Status 0x40); reset; the queue works again."""
    be, dev = probe()
    for _ in range(3):
        complete_one(dev)
        assert dev.needs_reset() is None
        break_the_ring(dev, how)
        told = dev.wait_needs_reset()
        assert told is not None, "the device never said it needs a reset"
        assert be.alive()
        if where[0] == "vhost-user":
            assert "closed the connection" in told.how
            assert told.config_interrupt is None
        else:
            assert "0x4" in told.how  # DEVICE_NEEDS_RESET with DRIVER_OK etc.
            assert told.config_interrupt, "InterruptStatus lacks the config-change bit"
        assert dev.queues[0].used_idx == dev.queues[0].last_used  # nothing completed
        dev.reconnect()
        assert dev.needs_reset() is None
    complete_one(dev)
    if where[0] == "vhost-user":
        assert be.log_text().count("closing the frontend connection") == 3


def test_a_healthy_device_is_not_reported_as_needing_a_reset(
    probe: Callable[[], tuple[Backend, BlkDevice]],
) -> None:
    """wait_needs_reset() waits its whole timeout and answers None."""
    _be, dev = probe()
    complete_one(dev)
    assert dev.wait_needs_reset(0.2) is None
    complete_one(dev)


def test_hvisor_transport_adds_nothing_to_what_head_shows_the_driver(
    probe: Callable[[], tuple[Backend, BlkDevice]], where: tuple[str, str]
) -> None:
    """hvisor: no interrupt is raised for it (HEAD cannot); Status and InterruptStatus show it.

    vhost-user: after the drop, the next frontend gets a device that works.
    """
    be, dev = probe()
    break_the_ring(dev, "avail-ahead")
    if where[0] == "vhost-user":
        assert dev.wait_needs_reset() is not None
        second = BlkDevice(timeout=dev.timeout, queue_size=QUEUE_SIZE)
        try:
            be.attach(second)  # a different frontend: accepted after the drop
            complete_one(second)
        finally:
            second.close()
        return
    t = dev.transport
    assert isinstance(t, MmioTransport)
    assert dev.wait_needs_reset() is not None
    assert t.read(STATUS) & DEVICE_NEEDS_RESET
    assert t.read(INTERRUPT_STATUS) & 2
    assert t.interrupts == 0, "an interrupt without a used entry: HEAD's core cannot raise one"
    assert be.alive()
    assert "the driver sees it in Status" in be.log_text()


@pytest.mark.parametrize("where", [("vhost-user", "host")], ids=["vhost-user@host"])
def test_a_killed_backend_reads_as_a_closed_connection(
    probe: Callable[[], tuple[Backend, BlkDevice]],
) -> None:
    """The helper's vhost-user side alone: EOF is what it reports (check alive() to tell)."""
    be, dev = probe()
    assert dev.needs_reset() is None
    be.kill()
    be.returncode = 0
    told = dev.wait_needs_reset()
    assert told is not None and told.transport == "vhost-user"
    assert not be.alive()
