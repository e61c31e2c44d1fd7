"""vhost-user frontend: the control-plane half that QEMU normally plays.

Message framing follows QEMU docs/interop/vhost-user.rst: a 12-byte header
(u32 request, u32 flags, u32 size, little-endian) followed by ``size`` bytes
of payload; file descriptors travel as SCM_RIGHTS ancillary data.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections.abc import Sequence
from enum import IntEnum
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from .memory import GuestMemory

VERSION = 0x1
FLAG_REPLY = 1 << 2
FLAG_NEED_REPLY = 1 << 3
HEADER = struct.Struct("<III")
MAX_PAYLOAD = 0x10000
MAX_MEM_REGIONS = 8
VRING_NOFD_MASK = 1 << 8
VRING_IDX_MASK = 0xFF
CONFIG_HDR = struct.Struct("<III")

#: Virtio feature bit that advertises vhost-user protocol features.
F_PROTOCOL_FEATURES = 30


class Request(IntEnum):
    """Frontend-to-backend request codes."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


class ProtocolFeature(IntEnum):
    """VHOST_USER_PROTOCOL_F_* bit numbers."""

    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    NET_MTU = 4
    BACKEND_REQ = 5
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    BACKEND_SEND_FD = 10
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16


#: Requests whose reply is part of the protocol (need_reply is meaningless).
_HAS_REPLY = {
    Request.GET_FEATURES,
    Request.GET_PROTOCOL_FEATURES,
    Request.GET_VRING_BASE,
    Request.GET_QUEUE_NUM,
    Request.GET_CONFIG,
    Request.GET_INFLIGHT_FD,
    Request.GET_MAX_MEM_SLOTS,
    Request.GET_STATUS,
}


def request_name(code: int) -> str:
    """Human-readable name of a request code."""
    try:
        return Request(code).name
    except ValueError:
        return f"REQUEST_{code}"


class VhostUserError(Exception):
    """A vhost-user exchange failed; the message names the request."""


class VhostUserFrontend:
    """Connected vhost-user frontend socket.

    ``timeout`` bounds every send and receive; ``connect_timeout`` bounds the
    wait for the backend socket to appear and accept.
    """

    def __init__(
        self, socket_path: str, timeout: float = 5.0, connect_timeout: float = 10.0
    ) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.protocol_features = 0
        #: Ask for REPLY_ACK on set-type messages once it is negotiated.
        self.use_reply_ack = True
        self.sock = self._connect(socket_path, connect_timeout)

    def _connect(self, path: str, connect_timeout: float) -> socket.socket:
        deadline = time.monotonic() + connect_timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            s.settimeout(self.timeout)
            try:
                s.connect(path)
                return s
            except OSError as e:
                s.close()
                if e.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN):
                    raise VhostUserError(f"connect {path}: {e}") from e
                if time.monotonic() >= deadline:
                    raise VhostUserError(f"connect {path}: timed out ({e})") from e
                time.sleep(0.02)

    # -- raw transport -----------------------------------------------------

    def send(
        self,
        request: int,
        payload: bytes = b"",
        fds: Sequence[int] = (),
        flags: int | None = None,
        size: int | None = None,
    ) -> None:
        """Send one message; ``flags``/``size`` override the header (for malicious tests)."""
        hdr = HEADER.pack(
            request, VERSION if flags is None else flags, len(payload) if size is None else size
        )
        data = hdr + payload
        try:
            sent = socket.send_fds(self.sock, [data], list(fds)) if fds else self.sock.send(data)
            if sent < len(data):
                self.sock.sendall(data[sent:])
        except OSError as e:
            raise VhostUserError(f"{request_name(request)}: send failed: {e}") from e

    def _recv_exact(self, n: int, what: str) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except TimeoutError as e:
                raise VhostUserError(f"{what}: no reply within {self.timeout}s") from e
            except OSError as e:
                raise VhostUserError(f"{what}: recv failed: {e}") from e
            if not chunk:
                raise VhostUserError(f"{what}: backend closed the connection")
            buf += chunk
        return bytes(buf)

    def recv_reply(self, request: int | None = None) -> tuple[int, int, bytes]:
        """Receive one reply; return (request, flags, payload).

        When ``request`` is given the reply must carry that code and the
        REPLY flag, otherwise VhostUserError is raised.
        """
        what = request_name(request) if request is not None else "reply"
        code, flags, size = HEADER.unpack(self._recv_exact(HEADER.size, what))
        if size > MAX_PAYLOAD:
            raise VhostUserError(f"{what}: reply size {size} too large")
        payload = self._recv_exact(size, what) if size else b""
        if request is not None:
            if code != request:
                raise VhostUserError(f"{what}: reply carries request {request_name(code)}")
            if not flags & FLAG_REPLY or flags & 0x3 != VERSION:
                raise VhostUserError(f"{what}: bad reply flags {flags:#x}")
        return code, flags, payload

    # -- helpers ------------------------------------------------------------

    @property
    def reply_ack(self) -> bool:
        """Whether REPLY_ACK is negotiated and in use."""
        negotiated = self.protocol_features >> ProtocolFeature.REPLY_ACK & 1
        return self.use_reply_ack and bool(negotiated)

    def _set(self, request: Request, payload: bytes = b"", fds: Sequence[int] = ()) -> None:
        """Send a message with no protocol reply, acknowledged if REPLY_ACK is on."""
        ack = self.reply_ack
        self.send(request, payload, fds, VERSION | (FLAG_NEED_REPLY if ack else 0))
        if ack:
            body = self._get_payload(request, 8)
            (status,) = struct.unpack("<Q", body)
            if status:
                raise VhostUserError(f"{request.name}: backend nacked ({status})")

    def _get_payload(self, request: Request, size: int | None = None) -> bytes:
        _, _, payload = self.recv_reply(request)
        if size is not None and len(payload) != size:
            raise VhostUserError(f"{request.name}: reply size {len(payload)} != {size}")
        return payload

    def _get_u64(self, request: Request) -> int:
        self.send(request)
        (value,) = struct.unpack("<Q", self._get_payload(request, 8))
        return int(value)

    # -- requests -------------------------------------------------------------

    def get_features(self) -> int:
        """GET_FEATURES: the backend's virtio feature bits."""
        return self._get_u64(Request.GET_FEATURES)

    def set_features(self, features: int) -> None:
        """SET_FEATURES."""
        self._set(Request.SET_FEATURES, struct.pack("<Q", features))

    def set_owner(self) -> None:
        """SET_OWNER."""
        self._set(Request.SET_OWNER)

    def reset_owner(self) -> None:
        """RESET_OWNER (deprecated; for malicious tests)."""
        self._set(Request.RESET_OWNER)

    def get_protocol_features(self) -> int:
        """GET_PROTOCOL_FEATURES."""
        return self._get_u64(Request.GET_PROTOCOL_FEATURES)

    def set_protocol_features(self, features: int) -> None:
        """SET_PROTOCOL_FEATURES; records them so REPLY_ACK takes effect afterwards."""
        self._set(Request.SET_PROTOCOL_FEATURES, struct.pack("<Q", features))
        self.protocol_features = features

    def get_queue_num(self) -> int:
        """GET_QUEUE_NUM: maximum number of queues (needs protocol MQ)."""
        return self._get_u64(Request.GET_QUEUE_NUM)

    def get_max_mem_slots(self) -> int:
        """GET_MAX_MEM_SLOTS (needs CONFIGURE_MEM_SLOTS)."""
        return self._get_u64(Request.GET_MAX_MEM_SLOTS)

    def set_mem_table(self, memory: GuestMemory) -> None:
        """SET_MEM_TABLE with one fd per region of ``memory``."""
        regions = memory.regions
        if not 0 < len(regions) <= MAX_MEM_REGIONS:
            raise VhostUserError(f"SET_MEM_TABLE: {len(regions)} regions")
        payload = struct.pack("<II", len(regions), 0) + b"".join(
            struct.pack("<QQQQ", r.guest_phys_addr, r.size, r.userspace_addr, r.mmap_offset)
            for r in regions
        )
        self._set(Request.SET_MEM_TABLE, payload, [r.fd for r in regions])

    def set_vring_num(self, index: int, num: int) -> None:
        """SET_VRING_NUM."""
        self._set(Request.SET_VRING_NUM, struct.pack("<II", index, num))

    def set_vring_addr(
        self,
        index: int,
        desc_uaddr: int,
        used_uaddr: int,
        avail_uaddr: int,
        flags: int = 0,
        log: int = 0,
    ) -> None:
        """SET_VRING_ADDR (wire order: index, flags, desc, used, avail, log)."""
        self._set(
            Request.SET_VRING_ADDR,
            struct.pack("<IIQQQQ", index, flags, desc_uaddr, used_uaddr, avail_uaddr, log),
        )

    def set_vring_base(self, index: int, base: int) -> None:
        """SET_VRING_BASE: next avail index the backend will read."""
        self._set(Request.SET_VRING_BASE, struct.pack("<II", index, base))

    def get_vring_base(self, index: int) -> int:
        """GET_VRING_BASE: stops the ring and returns its next avail index."""
        self.send(Request.GET_VRING_BASE, struct.pack("<II", index, 0))
        got, num = struct.unpack("<II", self._get_payload(Request.GET_VRING_BASE, 8))
        if got != index:
            raise VhostUserError(f"GET_VRING_BASE: reply for ring {got}, asked {index}")
        return int(num)

    def _vring_fd(self, request: Request, index: int, fd: int | None) -> None:
        value = (index & VRING_IDX_MASK) | (VRING_NOFD_MASK if fd is None else 0)
        self._set(request, struct.pack("<Q", value), [] if fd is None else [fd])

    def set_vring_kick(self, index: int, fd: int | None) -> None:
        """SET_VRING_KICK (``None`` sends the no-fd flag)."""
        self._vring_fd(Request.SET_VRING_KICK, index, fd)

    def set_vring_call(self, index: int, fd: int | None) -> None:
        """SET_VRING_CALL (``None`` sends the no-fd flag)."""
        self._vring_fd(Request.SET_VRING_CALL, index, fd)

    def set_vring_err(self, index: int, fd: int | None) -> None:
        """SET_VRING_ERR (``None`` sends the no-fd flag)."""
        self._vring_fd(Request.SET_VRING_ERR, index, fd)

    def set_vring_enable(self, index: int, enable: bool = True) -> None:
        """SET_VRING_ENABLE."""
        self._set(Request.SET_VRING_ENABLE, struct.pack("<II", index, int(enable)))

    def get_config(self, offset: int, size: int, flags: int = 0) -> bytes:
        """GET_CONFIG: ``size`` bytes of device config space from ``offset``."""
        self.send(Request.GET_CONFIG, CONFIG_HDR.pack(offset, size, flags) + bytes(size))
        payload = self._get_payload(Request.GET_CONFIG)
        if len(payload) != CONFIG_HDR.size + size:
            raise VhostUserError(f"GET_CONFIG: reply size {len(payload)} (backend refused?)")
        r_off, r_size, _ = CONFIG_HDR.unpack_from(payload)
        if (r_off, r_size) != (offset, size):
            raise VhostUserError(f"GET_CONFIG: reply for {r_off}+{r_size}")
        return payload[CONFIG_HDR.size :]

    def set_config(self, offset: int, data: bytes, flags: int = 0) -> None:
        """SET_CONFIG (flags 0 = frontend-initiated write)."""
        self._set(Request.SET_CONFIG, CONFIG_HDR.pack(offset, len(data), flags) + data)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self.sock.fileno() >= 0:
            self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def eventfd() -> int:
    """A fresh non-blocking, close-on-exec eventfd."""
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
