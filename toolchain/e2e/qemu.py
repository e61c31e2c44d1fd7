"""QEMU command lines for the e2e guest: machine, transport and disk peer.

amd64: q35 (PCI) or microvm (virtio-mmio); arm64: virt, either way. The disk
is a vhost-user-blk device on a unix socket (our backend, or
qemu-storage-daemon) or QEMU's own virtio-blk on the image ("builtin").
Guest RAM is a shared memfd: vhost-user maps it in the backend, and without
share=on the backend never sees the rings (the guest hangs silently).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

TRANSPORTS = ("pci", "mmio")
PEERS = ("ours", "qsd", "builtin")
QEMU_BINARY = {"amd64": "qemu-system-x86_64", "arm64": "qemu-system-aarch64"}
QEMU_PACKAGE = {"amd64": "qemu-system-x86", "arm64": "qemu-system-arm"}


@dataclass(frozen=True)
class Machine:
    """What QEMU emulates and how the disk is attached."""

    arch: str  # amd64 | arm64
    transport: str  # pci | mmio
    peer: str  # ours | qsd | builtin
    num_queues: int
    queue_size: int = 128  # the spec's device.queue_size (QueueNumMax): QEMU cannot ask
    memory_mib: int = 512
    cpus: int = 2

    def check(self) -> None:
        """ValueError for a combination that cannot run."""
        if self.arch not in QEMU_BINARY:
            raise ValueError(f"unknown arch '{self.arch}'; known: {', '.join(QEMU_BINARY)}")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"unknown transport '{self.transport}'; known: pci, mmio")
        if self.peer not in PEERS:
            raise ValueError(f"unknown peer '{self.peer}'; known: {', '.join(PEERS)}")
        if self.num_queues < 1 or self.cpus < 1 or self.memory_mib < 64:
            raise ValueError("num_queues and cpus must be >= 1, memory >= 64 MiB")
        if self.queue_size < 2 or self.queue_size > 1024 or self.queue_size & (self.queue_size - 1):
            raise ValueError("queue_size must be a power of two in 2..1024 (QEMU's limit)")


def host_khz(cpuinfo: str) -> int:
    """The host TSC rate in kHz from /proc/cpuinfo ('cpu MHz'), for microvm's tsc_early_khz."""
    m = re.search(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo, re.M)
    if m is None:
        raise ValueError("no 'cpu MHz' in /proc/cpuinfo")
    return round(float(m.group(1)) * 1000)


def kernel_cmdline(machine: Machine, cpuinfo: str = "") -> str:
    """Console, panic handling and, for microvm, the TSC settings."""
    console = "ttyS0" if machine.arch == "amd64" else "ttyAMA0"
    parts = [f"console={console}", "panic=-1", "quiet", "loglevel=3", "rdinit=/init"]
    if machine.arch == "amd64" and machine.transport == "mmio":
        # microvm has no PIT/HPET to calibrate against.
        parts += [f"tsc_early_khz={host_khz(cpuinfo)}", "tsc=reliable"]
    return " ".join(parts)


def argv(
    machine: Machine,
    kernel: Path,
    initrd: Path,
    cmdline: str,
    *,
    socket_path: str | None = None,
    image: Path | None = None,
) -> list[str]:
    """The full qemu-system command line (without a nice prefix)."""
    machine.check()
    mem = machine.memory_mib
    args = [QEMU_BINARY[machine.arch]]
    mmio = machine.transport == "mmio"
    if machine.arch == "amd64":
        args += ["-M", "microvm" if mmio else "q35", "-accel", "tcg", "-cpu", "max"]
    else:
        # pauth-impdef: QEMU's cheap pointer-authentication hash, much faster under TCG.
        args += ["-M", "virt", "-accel", "tcg", "-cpu", "max,pauth-impdef=on"]
    args += [
        "-smp", str(machine.cpus),
        "-m", f"{mem}M",
        "-object", f"memory-backend-memfd,id=mem,size={mem}M,share=on",
        "-numa", "node,memdev=mem",
        "-nodefaults", "-nographic", "-serial", "stdio", "-no-reboot",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
    ]  # fmt: skip
    if mmio:
        args += ["-global", "virtio-mmio.force-legacy=false"]
    nq = machine.num_queues
    # vhost-user has no message for the ring size limit: QEMU offers the guest its
    # own queue-size (on virtio-mmio 1024 unless told), and a ring larger than the
    # backend's QueueNumMax is refused. The same size is given to the peers.
    qs = f"num-queues={nq},queue-size={machine.queue_size}"
    if machine.peer == "builtin":
        if image is None:
            raise ValueError("the builtin peer needs the image")
        args += [
            "-drive",
            f"file={image},if=none,id=d0,format=raw,aio=io_uring,cache=none",
            "-device",
            f"virtio-blk-device,drive=d0,{qs}"
            if mmio
            else f"virtio-blk-pci,drive=d0,{qs},disable-legacy=on",
        ]
    else:
        if socket_path is None:
            raise ValueError("a vhost-user peer needs its socket")
        args += [
            "-chardev",
            f"socket,id=c0,path={socket_path}",
            "-device",
            f"vhost-user-blk,chardev=c0,{qs}"
            if mmio
            else f"vhost-user-blk-pci,chardev=c0,{qs},disable-legacy=on",
        ]
    return args
