"""A real firmware client: SeaBIOS boots from a disk the default spec serves.

SeaBIOS's virtio-blk driver (q35, vhost-user-blk-pci, bootindex=1) reads the
boot sector through the backend and jumps to it; the sector (a few bytes of
real-mode code written here) prints a marker on QEMU's debug console. This is
the client that hung before: SeaBIOS 1.16.2 computes its largest request as
size_max * seg_max / 512 in 16 bits, which the old seg_max of 512 made 0 (see
README, "Two things the QEMU frontend needs"). The kernel's EDD probe, the
other SeaBIOS path, runs in every `invoke e2e` boot and in tests/test_e2e.py.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from toolchain import project
from toolchain.build import build
from toolchain.targets import load_target

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = project.Layout(ROOT)
MARKER = b"BLKGEN-BOOT-OK"

#: org 0x7c00: cld; ds = 0; dx = 0x402 (QEMU's debugcon); print MARKER; hlt.
BOOT_CODE = bytes.fromhex(
    "fc"  # cld
    "31c0"  # xor ax, ax
    "8ed8"  # mov ds, ax
    "ba0204"  # mov dx, 0x402
    "be177c"  # mov si, 0x7c17 (the message)
    "ac"  # lp: lodsb
    "84c0"  # test al, al
    "7403"  # jz done
    "ee"  # out dx, al
    "ebf8"  # jmp lp
    "fa"  # done: cli
    "f4"  # hlt
    "ebfc"  # jmp done
)


def boot_sector() -> bytes:
    """A 512-byte MBR that prints MARKER through the debug console."""
    code = BOOT_CODE + MARKER + b"\0"
    assert len(BOOT_CODE) == 0x17
    return code.ljust(510, b"\0") + b"\x55\xaa"


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86 (invoke setup)"
)
def test_seabios_boots_from_a_disk_the_default_spec_serves(tmp_path: Path) -> None:
    spec = project.DEFAULT_SPEC
    binary = build(
        load_target("host"), LAYOUT.generated_for(spec), LAYOUT.build_for("host", spec)
    ).binary
    disk = tmp_path / "disk.img"
    disk.write_bytes(boot_sector() + bytes((64 << 20) - 512))
    sock, debugcon = tmp_path / "blk.sock", tmp_path / "debugcon.log"
    backend_log = (tmp_path / "backend.log").open("wb")
    backend = subprocess.Popen(
        [str(binary), "--socket-path", str(sock), "--blk-file", str(disk)],
        stdout=backend_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    qemu = None
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sock.exists(), "the backend did not create its socket"
        qemu = subprocess.Popen(
            ["qemu-system-x86_64", "-M", "q35", "-accel", "tcg", "-m", "256M",
             "-object", "memory-backend-memfd,id=mem,size=256M,share=on",
             "-numa", "node,memdev=mem", "-nodefaults", "-nographic",
             "-monitor", "none", "-serial", "none", "-no-reboot",
             "-chardev", f"socket,id=c0,path={sock}",
             "-device", "vhost-user-blk-pci,chardev=c0,num-queues=1,queue-size=512,"
             "disable-legacy=on,bootindex=1",
             "-chardev", f"file,id=dbg,path={debugcon}",
             "-device", "isa-debugcon,iobase=0x402,chardev=dbg"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and qemu.poll() is None:
            if debugcon.exists() and MARKER in debugcon.read_bytes():
                break
            time.sleep(0.2)
        assert debugcon.exists() and MARKER in debugcon.read_bytes(), (
            "SeaBIOS did not boot the disk within 60 s; debug console: "
            f"{debugcon.read_bytes()[-300:] if debugcon.exists() else b''!r}"
        )
        assert backend.poll() is None, "the backend died"
    finally:
        if qemu is not None:
            qemu.kill()
            qemu.wait()
        backend.terminate()
        backend.wait(timeout=10)
        backend_log.close()
