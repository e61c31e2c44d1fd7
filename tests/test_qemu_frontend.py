"""A real QEMU is a frontend of the generated backend.

QEMU realizes vhost-user-blk-pci against our socket: it negotiates features
and protocol features, sets the owner and reads the virtio_blk_config
(realize fails if any of that fails). No guest boots here (that is `invoke
e2e`); this proves the handshake with the frontend users actually run, and
that the backend survives QEMU going away and serves the next one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from toolchain.guest import Backend

from .conftest import DeviceUnderTest

QEMU = shutil.which("qemu-system-x86_64")
VIRTIO_VENDOR = 0x1AF4
VIRTIO_BLK_MODERN = 0x1042

pytestmark = [
    pytest.mark.skipif(QEMU is None, reason="qemu-system-x86 not installed (invoke setup)"),
    pytest.mark.only_transport("vhost-user"),  # QEMU is the vhost-user frontend here
]


class Qmp:
    """Just enough QMP over stdio to ask questions and quit."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True
        )
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"QEMU exited ({self.proc.wait(5)}); see {self.log.name}")
            msg = json.loads(line)
            if "event" not in msg:
                return msg

    def execute(self, command: str) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"execute": command}) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        assert "error" not in reply, reply
        return reply["return"]

    def quit(self) -> int:
        self.execute("quit")
        code = self.proc.wait(10)
        self.log.close()
        return code


def _qemu(socket_path: str, log: Path) -> Qmp:
    assert QEMU is not None
    return Qmp(
        [
            QEMU,
            "-machine", "q35", "-accel", "tcg", "-nodefaults", "-display", "none", "-S",
            "-m", "128M",
            "-object", "memory-backend-memfd,id=mem,size=128M,share=on",
            "-numa", "node,memdev=mem",
            "-chardev", f"socket,id=c0,path={socket_path}",
            "-device", "vhost-user-blk-pci,chardev=c0,num-queues=1,disable-legacy=on,id=disk0",
            "-qmp", "stdio",
        ],
        log,
    )  # fmt: skip


def _virtio_blk_devices(qmp: Qmp) -> list[dict[str, Any]]:
    return [
        dev
        for bus in qmp.execute("query-pci")
        for dev in bus["devices"]
        if dev.get("qdev_id") == "disk0"
        and dev["id"]["vendor"] == VIRTIO_VENDOR
        and dev["id"]["device"] == VIRTIO_BLK_MODERN
    ]


def test_qemu_realizes_vhost_user_blk_pci_against_the_backend_twice(
    dut: DeviceUnderTest, backend: Backend, log_dir: Path
) -> None:
    for attempt in range(2):
        qmp = _qemu(backend.socket_path, log_dir / f"qemu{attempt}.log")
        try:
            assert len(_virtio_blk_devices(qmp)) == 1
            assert qmp.execute("query-status")["status"] == "prelaunch"
        finally:
            assert qmp.quit() == 0
        assert backend.alive(), backend.log_text()
