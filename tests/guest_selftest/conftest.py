"""Fixtures running the Python guest against QEMU's qemu-storage-daemon."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from toolchain.guest import Backend, BlkDevice, ShadowDisk

QSD = shutil.which("qemu-storage-daemon")
IMAGE_SIZE = 16 * 1024 * 1024


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A raw image with a recognisable, non-zero initial pattern."""
    path = tmp_path / "disk.img"
    block = bytes(range(256)) * 16  # 4 KiB
    path.write_bytes(block * (IMAGE_SIZE // len(block)))
    return path


@pytest.fixture
def shadow(image: Path) -> ShadowDisk:
    """Expected contents of ``image``."""
    return ShadowDisk.from_file(str(image))


@pytest.fixture
def qsd_binary() -> str:
    """Path of qemu-storage-daemon; skips the test when it is not installed."""
    if QSD is None:
        pytest.skip("qemu-storage-daemon not installed")
    return QSD


@pytest.fixture
def start_qsd(qsd_binary: str, image: Path, tmp_path: Path) -> Iterator[Callable[..., Backend]]:
    """Factory: start qemu-storage-daemon on ``image`` (kwargs go to Backend.qemu_storage_daemon).

    Every daemon started is stopped at teardown and must exit with status 0.
    """
    started: list[Backend] = []

    def start(**kwargs: Any) -> Backend:
        be = Backend.qemu_storage_daemon(
            str(image), tmp_path / "logs", binary=qsd_binary, name=f"qsd{len(started)}", **kwargs
        )
        started.append(be)
        be.start()
        return be

    yield start
    for be in started:
        be.cleanup()
    for be in started:
        assert be.returncode == 0, be.log_text()


@pytest.fixture
def qsd(start_qsd: Callable[..., Backend]) -> Backend:
    """A running qemu-storage-daemon exporting ``image`` writable."""
    return start_qsd()


@pytest.fixture
def dev(qsd: Backend) -> Iterator[BlkDevice]:
    """A BlkDevice connected to ``qsd`` with one queue."""
    d = BlkDevice(timeout=3.0)
    d.connect(qsd.socket_path)
    yield d
    d.close()


def pytest_report_header() -> str:
    """Say which reference backend is used."""
    return f"guest selftest backend: {QSD or 'qemu-storage-daemon missing'} (pid {os.getpid()})"
