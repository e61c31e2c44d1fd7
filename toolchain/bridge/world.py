"""hvisor's side of the virtio bridge (hvisor-api.md section 13), in Python.

Layout of the bridge page (little-endian, natural alignment):
``u32 req_front, req_rear, res_front, res_rear; device_req req_list[32];
device_res res_list[32]; u64 cfg_flags[32]; u64 cfg_values[32];
u64 mmio_addrs[8]; u8 mmio_avail; u8 need_wakeup``.

hvisor is the producer of ``req_list`` and the consumer of ``res_list``.
The stand-in for /dev/hvisor (toolchain/runtime/hvisor_dev.c) connects to
the world's unix socket, receives the bridge page and the zones' memory as
file descriptors, hands over the daemon's eventfd, and forwards every
result the daemon pushes (HVISOR_FINISH_REQ) as an IRQ message.
"""

from __future__ import annotations

import array
import json
import mmap
import os
import socket
import struct
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from ..guest.memory import GuestMemory

MAX_REQ = 32
MAX_CPUS = 32
MAX_DEVS = 8
BRIDGE_SIZE = 4096

REQ = struct.Struct("<QQQQIBBH")  # src_cpu, address, size, value, zone, w, irq, pad
OFF_REQ_FRONT, OFF_REQ_REAR, OFF_RES_FRONT, OFF_RES_REAR = 0, 4, 8, 12
OFF_REQ_LIST = 16
OFF_RES_LIST = OFF_REQ_LIST + MAX_REQ * REQ.size
OFF_CFG_FLAGS = OFF_RES_LIST + MAX_REQ * 8
OFF_CFG_VALUES = OFF_CFG_FLAGS + MAX_CPUS * 8
OFF_MMIO_ADDRS = OFF_CFG_VALUES + MAX_CPUS * 8
OFF_MMIO_AVAIL = OFF_MMIO_ADDRS + MAX_DEVS * 8
OFF_NEED_WAKEUP = OFF_MMIO_AVAIL + 1
assert REQ.size == 40 and OFF_CFG_FLAGS == 1552 and OFF_NEED_WAKEUP == 2129

MSG_HELLO, MSG_SETUP, MSG_SET_EVENTFD, MSG_IRQ, MSG_INIT = 1, 2, 3, 4, 5
PROTOCOL_VERSION = 1
VIRTIO_MMIO_QUEUE_NOTIFY = 0x50

#: zone0_ipa = zonex_ipa + this: the root zone sees guest RAM elsewhere than
#: the guest does, so a device that mixes the two address spaces fails.
ZONE0_OFFSET = 0x40_0000_0000
#: After this long without progress while a vCPU waits, a request is
#: re-announced through the eventfd: a second line of defence should the
#: fence in access() not hold.
REANNOUNCE_S = 0.002


class BridgeError(Exception):
    """The daemon did not attach, answer or behave as hvisor expects."""


@dataclass(frozen=True)
class Device:
    """One virtio-mmio device of a zone, as the zone JSON lists it."""

    addr: int
    irq: int
    type: str = "blk"
    len: int = 0x200
    extra: dict[str, object] = field(default_factory=dict)  # e.g. img, read_only

    def json(self) -> dict[str, object]:
        """The entry of the zone JSON's ``devices`` list."""
        return {
            "type": self.type,
            "addr": f"{self.addr:#x}",
            "len": f"{self.len:#x}",
            "irq": self.irq,
            **self.extra,
            "status": "enable",
        }


@dataclass
class Zone:
    """A guest zone: its id, its RAM (GPA = zonex_ipa) and its devices."""

    id: int
    memory: GuestMemory
    devices: list[Device]

    def json(self) -> dict[str, object]:
        """The zone's entry of the ``zones`` list."""
        return {
            "id": self.id,
            "memory_region": [
                {
                    "zone0_ipa": f"{r.guest_phys_addr + ZONE0_OFFSET:#x}",
                    "zonex_ipa": f"{r.guest_phys_addr:#x}",
                    "size": f"{r.size:#x}",
                }
                for r in self.memory.regions
            ],
            "devices": [d.json() for d in self.devices],
        }


class BridgeWorld:
    """The bridge page, the zones and the socket the /dev/hvisor stand-in attaches to.

    One daemon at a time; a daemon that exits can be replaced by a new one
    (:meth:`detach`, then start the next and wait for :meth:`attached`).
    """

    def __init__(self, zones: Sequence[Zone], workdir: str | None = None) -> None:
        self.zones = list(zones)
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="hvw-"))  # short: sun_path
        self.socket_path = str(self.dir / "hvisor.sock")
        self.bridge_fd = os.memfd_create("hvisor-bridge", os.MFD_CLOEXEC)
        os.ftruncate(self.bridge_fd, BRIDGE_SIZE)
        self.page = mmap.mmap(self.bridge_fd, BRIDGE_SIZE, mmap.MAP_SHARED)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        self._listener.bind(self.socket_path)
        self._listener.listen(1)
        self._listener.setblocking(False)
        self.conn: socket.socket | None = None
        self.daemon_eventfd = -1
        self.inits = 0
        self.irqs: Counter[tuple[int, int]] = Counter()  # (zone, irq) -> injections
        self.wakeups = 0  # eventfd writes
        self._last_poke = 0.0
        self._spin_start = 0.0
        self._reset_page()

    # -- set-up -------------------------------------------------------------------

    def _reset_page(self) -> None:
        self.page[:] = bytes(BRIDGE_SIZE)
        # Before the daemon's first pass hvisor must wake it (HEAD sets the
        # flag itself at start on every arch but LoongArch).
        self.page[OFF_NEED_WAKEUP] = 1

    def write_config(self, path: str | os.PathLike[str]) -> Path:
        """Write the zone JSON (hvisor-tool's virtio_cfg format) for the daemon."""
        out = Path(path)
        out.write_text(json.dumps({"zones": [z.json() for z in self.zones]}, indent=2) + "\n")
        return out

    def zone(self, zone_id: int) -> Zone:
        """The zone with this id."""
        for z in self.zones:
            if z.id == zone_id:
                return z
        raise BridgeError(f"no zone {zone_id}")

    def _regions(self) -> list[tuple[int, int, int]]:
        return [
            (r.guest_phys_addr + ZONE0_OFFSET, r.size, r.fd)
            for z in self.zones
            for r in z.memory.regions
        ]

    def attached(self) -> bool:
        """Accept a pending daemon and pump; True once it is serving MMIO.

        Serving means: it handed over its eventfd and set ``mmio_avail``.
        """
        if self.conn is None:
            try:
                conn, _ = self._listener.accept()
            except BlockingIOError:
                return False
            conn.settimeout(5.0)
            msg = conn.recv(64)
            kind, version = struct.unpack_from("<II", msg) if len(msg) >= 8 else (0, 0)
            if kind != MSG_HELLO or version != PROTOCOL_VERSION:
                conn.close()
                raise BridgeError(f"bad HELLO from the stand-in: {msg!r}")
            regions = self._regions()
            body = struct.pack("<II", MSG_SETUP, len(regions)) + b"".join(
                struct.pack("<QQ", ipa, size) for ipa, size, _ in regions
            )
            fds = [self.bridge_fd, *(fd for _, _, fd in regions)]
            conn.sendmsg([body], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            conn.setblocking(False)
            self.conn = conn
        self.pump()
        return self.daemon_eventfd >= 0 and self.page[OFF_MMIO_AVAIL] == 1

    def wait_attached(self, timeout: float = 10.0) -> None:
        """Wait (bounded) until a daemon is serving."""
        deadline = time.monotonic() + timeout
        while not self.attached():
            if time.monotonic() > deadline:
                raise BridgeError(f"no daemon attached to {self.socket_path} after {timeout}s")
            time.sleep(0.005)

    def detach(self) -> None:
        """Forget the daemon (it exited or was killed); the zones keep their memory."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.daemon_eventfd >= 0:
            os.close(self.daemon_eventfd)
            self.daemon_eventfd = -1
        self._reset_page()

    # -- messages from the stand-in ----------------------------------------------------

    def fileno(self) -> int:
        """Readable when the daemon injected an interrupt (or sent anything)."""
        return self.conn.fileno() if self.conn is not None else self._listener.fileno()

    def pump(self) -> int:
        """Read every pending message; return how many interrupts arrived."""
        got = 0
        while self.conn is not None:
            try:
                data, anc, _, _ = self.conn.recvmsg(64, socket.CMSG_SPACE(4 * 4))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data, anc = b"", []
            if not data:  # the daemon went away
                self.conn.close()
                self.conn = None
                break
            fds = [
                fd
                for level, kind, raw in anc
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
                for fd in array.array("i", raw[: len(raw) - len(raw) % 4])
            ]
            (kind,) = struct.unpack_from("<I", data)
            if kind == MSG_SET_EVENTFD and fds:
                if self.daemon_eventfd >= 0:
                    os.close(self.daemon_eventfd)
                self.daemon_eventfd = fds.pop(0)
            elif kind == MSG_IRQ and len(data) >= 12:
                zone, irq = struct.unpack_from("<II", data, 4)
                self.irqs[(zone, irq)] += 1
                got += 1
            elif kind == MSG_INIT:
                self.inits += 1
            for fd in fds:
                os.close(fd)
        return got

    def take_irqs(self, zone: int, irq: int) -> int:
        """How many times (zone, irq) was injected since the last call."""
        self.pump()
        return self.irqs.pop((zone, irq), 0)

    # -- MMIO, as hvisor's trap handler posts it -------------------------------------

    def _u32(self, off: int) -> int:
        return int.from_bytes(self.page[off : off + 4], "little")

    def _u64(self, off: int) -> int:
        return int.from_bytes(self.page[off : off + 8], "little")

    def _wake(self) -> None:
        if self.daemon_eventfd >= 0:
            os.eventfd_write(self.daemon_eventfd, 1)
            self.wakeups += 1

    def kick_if_asleep(self) -> None:
        """Wake a daemon that went to sleep with requests in the ring."""
        if self._u32(OFF_REQ_FRONT) != self._u32(OFF_REQ_REAR) and self.page[OFF_NEED_WAKEUP]:
            self._wake()

    def access(
        self,
        zone: int,
        cpu: int,
        address: int,
        size: int,
        value: int = 0,
        write: bool = False,
        timeout: float = 10.0,
    ) -> int:
        """One trapped access; a read returns the daemon's answer.

        Every access but a QueueNotify write blocks the vCPU until the
        daemon answers through ``cfg_flags[cpu]``, as on the board.
        """
        if not 0 <= cpu < MAX_CPUS:
            raise BridgeError(f"cpu {cpu} out of range")
        if self.conn is None:
            raise BridgeError("no daemon attached")
        need_interrupt = int(write and address % 0x1000 == VIRTIO_MMIO_QUEUE_NOTIFY)
        flag_off = OFF_CFG_FLAGS + 8 * cpu
        old_flag = self._u64(flag_off)
        deadline = time.monotonic() + timeout
        self._spin_start = time.monotonic()
        rear = self._u32(OFF_REQ_REAR)
        while (rear + 1) % MAX_REQ == self._u32(OFF_REQ_FRONT):  # hvisor waits for room
            self._check_progress(deadline, "a free req_list slot")
        off = OFF_REQ_LIST + REQ.size * rear
        self.page[off : off + REQ.size] = REQ.pack(
            cpu, address, size, value & 0xFFFF_FFFF_FFFF_FFFF, zone, int(write), need_interrupt, 0
        )
        self.page[OFF_REQ_REAR : OFF_REQ_REAR + 4] = ((rear + 1) % MAX_REQ).to_bytes(4, "little")
        # hvisor has a full fence between the store of req_rear and the load of
        # need_wakeup (the daemon's side of the handshake has one too). Python
        # has none; releasing and retaking the GIL takes locked instructions, a
        # full barrier on x86, so the load below cannot pass the store.
        time.sleep(0)
        if self.page[OFF_NEED_WAKEUP]:
            self._wake()
        if need_interrupt:
            return 0
        while self._u64(flag_off) == old_flag:
            self._check_progress(
                deadline, f"an answer to {'write' if write else 'read'} {address:#x}"
            )
        return self._u64(OFF_CFG_VALUES + 8 * cpu)

    def _check_progress(self, deadline: float, what: str) -> None:
        """One round of a vCPU spinning in EL2 (yields the CPU to the daemon)."""
        now = time.monotonic()
        if now > deadline:
            raise BridgeError(f"the daemon did not give {what} in time")
        if now - self._last_poke > REANNOUNCE_S:
            self._last_poke = now
            self.pump()
            if self.conn is None:
                raise BridgeError(f"the daemon went away while hvisor waited for {what}")
            self.kick_if_asleep()
        time.sleep(0 if now - self._spin_start < 0.0002 else 0.00005)

    # -- life cycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Close the socket and the bridge page (zone memory belongs to the caller)."""
        self.detach()
        self._listener.close()
        self.page.close()
        os.close(self.bridge_fd)
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        if self._own_dir:
            for p in self.dir.iterdir():
                p.unlink()
            self.dir.rmdir()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
