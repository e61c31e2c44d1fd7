"""Shared pytest options and fixtures.

The device suite runs once per (spec, target): the rk3588 build under
qemu-aarch64, the host build natively. Logs and command lines of each test
are kept under build/test-logs/ for debugging.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from toolchain import project
from toolchain.guest import Backend, BlkDevice, ShadowDisk
from toolchain.spec import Spec
from toolchain.targets import Target, load_target, target_names

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = project.Layout(ROOT)
IMAGE_SIZE = 8 * 1024 * 1024
# qemu-user translates the backend; give it room, but never hang a test.
TIMEOUT = {True: 10.0, False: 5.0}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite the expected .err files of golden tests (review the diff!)",
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how many device tests ran each target (rk3588 = under qemu-aarch64)."""
    counts = {"rk3588": 0, "host": 0}
    for report in terminalreporter.stats.get("passed", []):
        for target in counts:
            if f"@{target}" in report.nodeid:
                counts[target] += 1
    if any(counts.values()):
        terminalreporter.write_line(
            f"device tests passed: {counts['rk3588']} on the rk3588 build under "
            f"qemu-aarch64, {counts['host']} on the host build"
        )


@pytest.fixture(scope="session")
def root() -> Path:
    """The project root."""
    return ROOT


@pytest.fixture(scope="session")
def update_golden(request: pytest.FixtureRequest) -> bool:
    """Whether golden files are to be rewritten rather than compared."""
    return bool(request.config.getoption("--update-golden"))


@dataclass(frozen=True)
class DeviceUnderTest:
    """One spec built for one target."""

    spec: Spec
    target: Target
    binary: Path
    manifest: dict[str, Any]

    @property
    def prefix(self) -> list[str]:
        """argv prefix that runs the binary (qemu-aarch64 for rk3588)."""
        return self.target.runner

    @property
    def timeout(self) -> float:
        """Per-request completion timeout."""
        return TIMEOUT[self.target.emulated]

    def driver(self, **kwargs: Any) -> BlkDevice:
        """A guest driver suited to this device (timeouts, I/O alignment)."""
        d = BlkDevice(timeout=self.timeout, **kwargs)
        if self.spec.backend.direct:  # O_DIRECT: block-aligned buffers and lengths
            d.memory.io_align = self.spec.device.block_size
        return d


def configurations() -> list[tuple[str, str]]:
    """(spec, target) for every spec in spec/ and every target."""
    specs = sorted(p.stem for p in LAYOUT.spec_dir.glob("*.yaml"))
    return [(s, t) for s in specs for t in target_names()]


@pytest.fixture(scope="session", params=configurations(), ids=lambda c: f"{c[0]}@{c[1]}")
def dut(request: pytest.FixtureRequest) -> DeviceUnderTest:
    """The device under test; built once per session."""
    spec_name, target_name = request.param
    target = load_target(target_name)
    for tool in (target.cc, *target.runner):
        if shutil.which(tool) is None:
            pytest.fail(f"'{tool}' is missing; run: invoke setup")
    (spec,) = project.specs(LAYOUT, [spec_name])
    result = project.build_one(LAYOUT, spec_name, target_name)
    manifest = json.loads((LAYOUT.generated_for(spec_name) / "manifest.json").read_text())
    return DeviceUnderTest(spec, target, result.binary, manifest)


@pytest.fixture
def log_dir(request: pytest.FixtureRequest) -> Path:
    """build/test-logs/<test id>/, emptied at the start of the test."""
    name = re.sub(r"[^A-Za-z0-9_.@-]+", "_", request.node.nodeid)[-150:]
    path = LAYOUT.build_dir / "test-logs" / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """An 8 MiB image of random bytes (every sector distinct)."""
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(IMAGE_SIZE))
    return path


@pytest.fixture
def shadow(image: Path) -> ShadowDisk:
    """What the image is expected to hold."""
    return ShadowDisk.from_file(str(image))


@pytest.fixture
def start_backend(
    dut: DeviceUnderTest, image: Path, log_dir: Path
) -> Iterator[Callable[..., Backend]]:
    """Factory starting the device's backend; each must exit 0 at teardown."""
    started: list[Backend] = []

    def start(**kwargs: Any) -> Backend:
        be = Backend.vhost_user_blk(
            str(dut.binary),
            str(image),
            log_dir,
            prefix=dut.prefix,
            name=f"backend{len(started)}",
            **kwargs,
        )
        started.append(be)
        be.start()
        return be

    yield start
    codes = []
    for be in started:
        codes.append(be.stop() if be.alive() else be.returncode)
        be.cleanup()
    for be, code in zip(started, codes, strict=True):
        assert code == 0, f"{be.name} exited with {code}:\n{be.log_text()}"


@pytest.fixture
def backend(start_backend: Callable[..., Backend]) -> Backend:
    """A running backend serving the image read-write."""
    return start_backend()


@pytest.fixture
def dev(dut: DeviceUnderTest, backend: Backend) -> Iterator[BlkDevice]:
    """A guest driver connected to the backend; queues as large as the spec allows."""
    d = dut.driver(queue_size=dut.spec.device.queue_size)
    d.connect(backend.socket_path)
    yield d
    d.close()
