"""The typed, frozen spec model.

pydantic does the shape checks (types, ranges, unknown keys) and gives the
JSON Schema for free; semantic rules that span several keys live in
``rules.py``. Capabilities are data: enum members carry the flags that
templates branch on, so no template ever compares strings.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

# The GET_ID serial is at most VIRTIO_BLK_ID_BYTES (20) bytes.
VIRTIO_BLK_ID_BYTES = 20
# preadv/pwritev take at most IOV_MAX (1024) segments.
IOV_MAX = 1024


class ThreadingModel(StrEnum):
    """Who parses descriptor chains, who does the I/O, who completes."""

    PROCQ = "procq"
    WORKER_DRAIN = "worker-drain"

    @property
    def main_thread_parses(self) -> bool:
        """The notify handler walks chains on the main thread (procq)."""
        return self is ThreadingModel.PROCQ

    @property
    def worker_drains(self) -> bool:
        """The worker owns the avail ring and drains it itself (worker-drain)."""
        return self is ThreadingModel.WORKER_DRAIN

    @property
    def has_request_queue(self) -> bool:
        """Parsed requests travel main -> worker through a mutex-protected FIFO."""
        return self is ThreadingModel.PROCQ

    @property
    def summary(self) -> str:
        """One line for banners and docs."""
        return {
            ThreadingModel.PROCQ: "main thread parses chains into a mutex-protected "
            "request queue; one worker does the I/O, completes, and injects an IRQ "
            "when the queue is empty (hvisor-tool before PR #95)",
            ThreadingModel.WORKER_DRAIN: "main thread only signals; one worker owns "
            "the virtqueue, drains it with notifications off, completes, and injects "
            "one IRQ per batch (hvisor-tool HEAD)",
        }[self]


class IoBackend(StrEnum):
    """How the worker talks to the image file."""

    SYNC = "sync"

    @property
    def summary(self) -> str:
        """One line for banners and docs."""
        return "blocking preadv/pwritev/fdatasync on the worker thread"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class Device(_Section):
    """Device identity and the limits it advertises."""

    serial: Annotated[
        StrictStr,
        Field(
            description="GET_ID answer: printable ASCII, at most 20 bytes "
            "(zero-padded when shorter).",
        ),
    ] = "hvisor-virblk"
    num_queues: Annotated[
        StrictInt,
        Field(
            ge=1,
            le=1,
            description="Number of virtqueues. One until multiqueue (VIRTIO_BLK_F_MQ) "
            "is supported.",
        ),
    ] = 1
    queue_size: Annotated[
        StrictInt,
        Field(
            ge=2,
            le=IOV_MAX,
            description="QueueNumMax: the largest ring the driver may choose; a power of two.",
        ),
    ] = 512
    seg_max: Annotated[
        StrictInt,
        Field(
            ge=1,
            le=IOV_MAX,
            description="Most data segments in one request (config seg_max).",
        ),
    ] = 512
    size_max: Annotated[
        StrictInt,
        Field(
            ge=4096,
            le=(1 << 31),
            description="Largest single data segment in bytes (config size_max).",
        ),
    ] = 1 << 20


class Features(_Section):
    """virtio-blk feature bits offered to the driver (VERSION_1 always is)."""

    seg_max: Annotated[
        StrictBool, Field(description="Offer VIRTIO_BLK_F_SEG_MAX (device.seg_max).")
    ] = True
    size_max: Annotated[
        StrictBool, Field(description="Offer VIRTIO_BLK_F_SIZE_MAX (device.size_max).")
    ] = True
    flush: Annotated[
        StrictBool,
        Field(description="Offer VIRTIO_BLK_F_FLUSH; FLUSH runs fdatasync on the image."),
    ] = True


class Threading(_Section):
    """The threading model of the device."""

    model: Annotated[
        ThreadingModel,
        Field(description="Who parses chains and who does the I/O; see docs/spec.md."),
    ] = ThreadingModel.WORKER_DRAIN


class Backend(_Section):
    """The I/O backend."""

    io: Annotated[
        IoBackend, Field(description="How the worker reads and writes the image; see docs/spec.md.")
    ] = IoBackend.SYNC


class SpecBody(_Section):
    """A virtio-blk device spec (the YAML file's top level)."""

    description: Annotated[
        StrictStr, Field(description="One line saying what this spec is for.")
    ] = ""
    device: Device = Device()
    features: Features = Features()
    threading: Threading = Threading()
    backend: Backend = Backend()


# (C macro name, bit) for every feature bit a spec can offer.
_FEATURE_BITS: dict[str, tuple[str, int]] = {
    "size_max": ("VIRTIO_BLK_F_SIZE_MAX", 1),
    "seg_max": ("VIRTIO_BLK_F_SEG_MAX", 2),
    "flush": ("VIRTIO_BLK_F_FLUSH", 9),
}


class Spec(BaseModel):
    """A validated spec plus where it came from; what templates read."""

    model_config = ConfigDict(frozen=True)

    name: str
    source: str
    sha256: str
    body: SpecBody

    @classmethod
    def from_body(cls, path: Path, text: bytes, body: SpecBody, source: str) -> Spec:
        """Wrap a validated body with its provenance."""
        return cls(
            name=path.stem, source=source, sha256=hashlib.sha256(text).hexdigest(), body=body
        )

    # Convenience accessors: templates say spec.features.flush, not spec.body....
    @property
    def device(self) -> Device:
        """The device section."""
        return self.body.device

    @property
    def features(self) -> Features:
        """The features section."""
        return self.body.features

    @property
    def threading(self) -> Threading:
        """The threading section."""
        return self.body.threading

    @property
    def backend(self) -> Backend:
        """The backend section."""
        return self.body.backend

    @property
    def feature_macros(self) -> list[str]:
        """C macros of the offered feature bits, by bit number, VERSION_1 last."""
        on = sorted(
            (bit, macro)
            for key, (macro, bit) in _FEATURE_BITS.items()
            if getattr(self.features, key)
        )
        return [macro for _, macro in on] + ["VIRTIO_F_VERSION_1"]

    @property
    def feature_mask(self) -> int:
        """The offered feature bits as a number (VERSION_1 is bit 32)."""
        mask = 1 << 32
        for key, (_, bit) in _FEATURE_BITS.items():
            if getattr(self.features, key):
                mask |= 1 << bit
        return mask

    @property
    def data_segments_max(self) -> int:
        """Most data segments the device accepts in one request.

        With SEG_MAX offered that is device.seg_max; without it the driver may
        use every descriptor but the header and the status.
        """
        if self.features.seg_max:
            return self.device.seg_max
        return self.device.queue_size - 2

    @property
    def serial_c(self) -> str:
        """The serial as a C string literal body (printable ASCII, escaped)."""
        return self.device.serial.replace("\\", "\\\\").replace('"', '\\"')
