"""The typed, frozen spec model.

pydantic does the shape checks (types, ranges, unknown keys) and gives the
JSON Schema for free; semantic rules that span several keys live in
``rules.py``. Capabilities are data: enum members carry the flags that
templates branch on, so no template ever compares strings.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)

from .digest import spec_sha256

# The GET_ID serial is at most VIRTIO_BLK_ID_BYTES (20) bytes.
VIRTIO_BLK_ID_BYTES = 20
# preadv/pwritev take at most IOV_MAX (1024) segments.
IOV_MAX = 1024
# hvisor-tool's struct virtio_device_ops has VIRTIO_MAX_VQUEUES (4) handlers.
VIRTIO_MAX_VQUEUES = 4
# DISCARD / WRITE_ZEROES segments are copied onto the worker's stack.
MAX_RANGE_SEGMENTS = 256


@dataclass(frozen=True)
class _ModelTraits:
    """What templates need to know about a threading model; no defaults, so a
    new member must decide every one."""

    has_worker: bool
    owner_drains: bool
    worker_drains: bool
    main_thread_parses: bool
    multiqueue: bool
    # Requests hvisor's main thread takes from a queue per notify (0: it takes
    # none); a ring holding more is finished off the main thread.
    main_budget: int
    summary: str


class ThreadingModel(StrEnum):
    """Who parses descriptor chains, who does the I/O, who completes."""

    INLINE = "inline"
    PROCQ = "procq"
    WORKER_DRAIN = "worker-drain"
    PER_QUEUE = "per-queue"

    @property
    def _traits(self) -> _ModelTraits:
        return _MODEL_TRAITS[self]

    @property
    def has_worker(self) -> bool:
        """I/O runs on worker threads, not in the notify handler."""
        return self._traits.has_worker

    @property
    def owner_drains(self) -> bool:
        """One thread owns the whole virtqueue: it pops, does the I/O and completes."""
        return self._traits.owner_drains

    @property
    def worker_drains(self) -> bool:
        """That owner is a worker thread (worker-drain, per-queue)."""
        return self._traits.worker_drains

    @property
    def main_thread_parses(self) -> bool:
        """The notify handler walks chains on hvisor's main thread (inline, procq)."""
        return self._traits.main_thread_parses

    @property
    def multiqueue(self) -> bool:
        """The model serves more than one virtqueue."""
        return self._traits.multiqueue

    @property
    def main_budget(self) -> int:
        """Requests the notify handler takes per call on hvisor's main thread."""
        return self._traits.main_budget

    @property
    def summary(self) -> str:
        """One line for banners and docs."""
        return self._traits.summary

    @property
    def partial(self) -> str:
        """The template that implements the model."""
        return f"threading/{self.value}.c.j2"

    @classmethod
    def names(cls, predicate: Callable[[ThreadingModel], bool]) -> str:
        """Quoted names of the members for which predicate holds, for rule messages."""
        return " or ".join(f"'{m.value}'" for m in cls if predicate(m))


_MODEL_TRAITS: dict[ThreadingModel, _ModelTraits] = {
    ThreadingModel.INLINE: _ModelTraits(
        has_worker=False,
        owner_drains=True,
        worker_drains=False,
        main_thread_parses=True,
        multiqueue=True,
        main_budget=8,
        summary="no worker: the notify handler drains the queue, does the I/O and "
        "completes on the main thread (the baseline), a budget per notify; a helper "
        "thread finishes a ring holding more",
    ),
    ThreadingModel.PROCQ: _ModelTraits(
        has_worker=True,
        owner_drains=False,
        worker_drains=False,
        main_thread_parses=True,
        multiqueue=False,
        main_budget=64,
        summary="main thread parses chains into a mutex-protected request queue; one "
        "worker does the I/O, completes, and injects an IRQ when the queue is empty "
        "(hvisor-tool before PR #95)",
    ),
    ThreadingModel.WORKER_DRAIN: _ModelTraits(
        has_worker=True,
        owner_drains=True,
        worker_drains=True,
        main_thread_parses=False,
        multiqueue=False,
        main_budget=0,
        summary="main thread only signals; one worker owns the virtqueue, drains it "
        "with notifications off, completes, and injects one IRQ per batch "
        "(hvisor-tool HEAD)",
    ),
    ThreadingModel.PER_QUEUE: _ModelTraits(
        has_worker=True,
        owner_drains=True,
        worker_drains=True,
        main_thread_parses=False,
        multiqueue=True,
        main_budget=0,
        summary="multiqueue: one worker per virtqueue, each owning and draining its "
        "queue as in worker-drain",
    ),
}


@dataclass(frozen=True)
class _IrqTraits:
    """What templates need to know about an interrupt policy."""

    per_request: bool
    adaptive: bool


class IrqPolicy(StrEnum):
    """When the device interrupts the driver."""

    PER_BATCH = "per-batch"
    PER_REQUEST = "per-request"
    ADAPTIVE = "adaptive"

    @property
    def per_request(self) -> bool:
        """Interrupt after every completed request."""
        return _IRQ_TRAITS[self].per_request

    @property
    def adaptive(self) -> bool:
        """Interrupt at the end of a batch, or sooner when completions pile up or age."""
        return _IRQ_TRAITS[self].adaptive


_IRQ_TRAITS: dict[IrqPolicy, _IrqTraits] = {
    IrqPolicy.PER_BATCH: _IrqTraits(per_request=False, adaptive=False),
    IrqPolicy.PER_REQUEST: _IrqTraits(per_request=True, adaptive=False),
    IrqPolicy.ADAPTIVE: _IrqTraits(per_request=False, adaptive=True),
}


@dataclass(frozen=True)
class _IoTraits:
    """What templates and rules need to know about an I/O backend."""

    asynchronous: bool
    summary: str


class IoBackend(StrEnum):
    """How the worker talks to the image file."""

    SYNC = "sync"
    IO_URING = "io_uring"

    @property
    def asynchronous(self) -> bool:
        """Many requests in flight per queue: needs a thread that owns the queue."""
        return _IO_TRAITS[self].asynchronous

    @property
    def summary(self) -> str:
        """One line for banners and docs."""
        return _IO_TRAITS[self].summary

    @property
    def partial(self) -> str:
        """The template that implements the backend."""
        return f"io/{self.value}.c.j2"


_IO_TRAITS: dict[IoBackend, _IoTraits] = {
    IoBackend.SYNC: _IoTraits(
        asynchronous=False,
        summary="blocking preadv/pwritev/fdatasync on the queue's owner",
    ),
    IoBackend.IO_URING: _IoTraits(
        asynchronous=True,
        summary="io_uring: many requests in flight per queue, completions reaped in "
        "batches; falls back to sync where io_uring is unavailable",
    ),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class Device(_Section):
    """Device identity and the limits it advertises."""

    @model_validator(mode="before")
    @classmethod
    def _seg_max_follows_queue_size(cls, data: object) -> object:
        """Without an explicit seg_max, offer what a direct chain can carry."""
        if isinstance(data, dict) and "seg_max" not in data:
            size = data.get("queue_size", 512)
            if isinstance(size, int) and not isinstance(size, bool) and 3 <= size <= IOV_MAX:
                data = {**data, "seg_max": size - 2}
        return data

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
            le=VIRTIO_MAX_VQUEUES,
            description="Number of virtqueues (hvisor-tool registers at most 4); more "
            "than one needs features.mq and a multiqueue threading model.",
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
            description="Most data segments in one request (config seg_max); default "
            "queue_size - 2, the most a direct chain holds beside header and status.",
        ),
    ] = 510
    size_max: Annotated[
        StrictInt,
        Field(
            ge=4096,
            le=(1 << 31),
            description="Largest single data segment in bytes (config size_max).",
        ),
    ] = 1 << 20
    block_size: Annotated[
        StrictInt,
        Field(
            ge=512,
            le=65536,
            description="Logical block size in bytes (config blk_size); a power of two. "
            "Offered to the driver with features.blk_size.",
        ),
    ] = 512
    physical_block_exp: Annotated[
        StrictInt,
        Field(ge=0, le=15, description="Topology: log2(physical block / logical block)."),
    ] = 0
    alignment_offset: Annotated[
        StrictInt, Field(ge=0, le=255, description="Topology: offset of the first aligned block.")
    ] = 0
    min_io_size: Annotated[
        StrictInt, Field(ge=1, le=65535, description="Topology: suggested minimum I/O, in blocks.")
    ] = 1
    opt_io_size: Annotated[
        StrictInt,
        Field(ge=0, le=(1 << 32) - 1, description="Topology: optimal I/O size, in blocks."),
    ] = 0
    max_discard_sectors: Annotated[
        StrictInt,
        Field(ge=0, le=(1 << 32) - 1, description="DISCARD: most sectors in one segment."),
    ] = 1 << 22
    max_discard_seg: Annotated[
        StrictInt,
        Field(ge=0, le=MAX_RANGE_SEGMENTS, description="DISCARD: most segments in one request."),
    ] = 1
    discard_sector_alignment: Annotated[
        StrictInt,
        Field(ge=1, le=(1 << 32) - 1, description="DISCARD: preferred alignment, in sectors."),
    ] = 8
    max_write_zeroes_sectors: Annotated[
        StrictInt,
        Field(ge=0, le=(1 << 32) - 1, description="WRITE_ZEROES: most sectors in one segment."),
    ] = 1 << 22
    max_write_zeroes_seg: Annotated[
        StrictInt,
        Field(
            ge=0,
            le=MAX_RANGE_SEGMENTS,
            description="WRITE_ZEROES: most segments in one request.",
        ),
    ] = 1
    write_zeroes_may_unmap: Annotated[
        StrictBool,
        Field(
            description="WRITE_ZEROES with the UNMAP flag may punch holes (the image "
            "becomes sparse there) instead of writing zeroes.",
        ),
    ] = True


class Features(_Section):
    """Feature bits offered to the driver (VIRTIO_F_VERSION_1 always is)."""

    seg_max: Annotated[
        StrictBool, Field(description="VIRTIO_BLK_F_SEG_MAX: advertise device.seg_max.")
    ] = True
    size_max: Annotated[
        StrictBool, Field(description="VIRTIO_BLK_F_SIZE_MAX: advertise device.size_max.")
    ] = True
    flush: Annotated[
        StrictBool,
        Field(description="VIRTIO_BLK_F_FLUSH: FLUSH runs fdatasync on the image."),
    ] = True
    blk_size: Annotated[
        StrictBool, Field(description="VIRTIO_BLK_F_BLK_SIZE: advertise device.block_size.")
    ] = False
    ro: Annotated[
        StrictBool,
        Field(description="VIRTIO_BLK_F_RO: the image is opened read-only; writes fail."),
    ] = False
    topology: Annotated[
        StrictBool,
        Field(description="VIRTIO_BLK_F_TOPOLOGY: advertise the device.* topology keys."),
    ] = False
    mq: Annotated[
        StrictBool,
        Field(description="VIRTIO_BLK_F_MQ: advertise device.num_queues."),
    ] = False
    discard: Annotated[
        StrictBool,
        Field(
            description="VIRTIO_BLK_F_DISCARD: DISCARD punches holes in the image "
            "(device.max_discard_*)."
        ),
    ] = False
    write_zeroes: Annotated[
        StrictBool,
        Field(
            description="VIRTIO_BLK_F_WRITE_ZEROES: zero ranges of the image "
            "(device.max_write_zeroes_*)."
        ),
    ] = False
    config_wce: Annotated[
        StrictBool,
        Field(
            description="VIRTIO_BLK_F_CONFIG_WCE: driver-writable cache mode. Refused: "
            "hvisor-tool's framework rejects config-space writes."
        ),
    ] = False
    event_idx: Annotated[
        StrictBool,
        Field(description="VIRTIO_RING_F_EVENT_IDX: used_event / avail_event suppression."),
    ] = False
    indirect_desc: Annotated[
        StrictBool,
        Field(description="VIRTIO_RING_F_INDIRECT_DESC: chains through indirect tables."),
    ] = False


class Threading(_Section):
    """The threading model of the device."""

    model: Annotated[
        ThreadingModel,
        Field(description="Who parses chains and who does the I/O; see docs/spec.md."),
    ] = ThreadingModel.WORKER_DRAIN
    irq: Annotated[
        IrqPolicy,
        Field(
            description="Interrupt once per drained batch, after every request, or "
            "adaptive: at the end of a batch and as soon as irq_pending completions wait "
            "or the oldest has waited irq_delay_us."
        ),
    ] = IrqPolicy.PER_BATCH
    irq_pending: Annotated[
        StrictInt,
        Field(
            ge=1,
            le=1024,
            description="irq: adaptive: interrupt once this many completions wait for one.",
        ),
    ] = 16
    irq_delay_us: Annotated[
        StrictInt,
        Field(
            ge=0,
            le=100_000,
            description="irq: adaptive: interrupt once the oldest completion not yet "
            "signalled is this many microseconds old (checked at each completion).",
        ),
    ] = 50
    poll_us: Annotated[
        StrictInt,
        Field(
            ge=0,
            le=1_000_000,
            description="Worker polling budget in microseconds: after a drain the worker "
            "keeps checking the avail ring this long (notifications off) before it "
            "sleeps; adaptive, it shrinks when polls find nothing. 0 = off.",
        ),
    ] = 0
    affinity: Annotated[
        list[Annotated[StrictInt, Field(ge=0, le=1023)]],
        Field(
            description="CPUs for the workers, assigned round-robin by queue; empty = no pinning.",
        ),
    ] = []


class Backend(_Section):
    """The I/O backend."""

    io: Annotated[
        IoBackend,
        Field(description="sync (preadv/pwritev) or io_uring (asynchronous); see docs/spec.md."),
    ] = IoBackend.SYNC
    direct: Annotated[
        StrictBool,
        Field(
            description="Open the image with O_DIRECT (bypass the page cache); requests "
            "must then be aligned to device.block_size in memory, length and offset.",
        ),
    ] = False
    split_threads: Annotated[
        StrictInt,
        Field(
            ge=1,
            le=8,
            description="Threads that copy one large read or write together: the queue's "
            "own thread takes the first part, split_threads - 1 helper threads the rest. "
            "1 = the queue's thread alone (hvisor-tool's behaviour).",
        ),
    ] = 1
    split_min_bytes: Annotated[
        StrictInt,
        Field(
            ge=8192,
            le=1 << 30,
            multiple_of=4096,
            description="split_threads > 1: requests of at least this many data bytes are "
            "split, into parts of whole 4 KiB pages; smaller ones run on the queue's "
            "thread alone.",
        ),
    ] = 262144

    @property
    def splits(self) -> bool:
        """Large transfers are copied by more than one thread (split_threads above 1)."""
        return self.split_threads > 1


class SpecBody(_Section):
    """A virtio-blk device spec (the YAML file's top level)."""

    description: Annotated[
        StrictStr, Field(description="One line saying what this spec is for.")
    ] = ""
    device: Device = Device()
    features: Features = Features()
    threading: Threading = Threading()
    backend: Backend = Backend()


# spec key under features -> (C macro, bit)
_FEATURE_BITS: dict[str, tuple[str, int]] = {
    "size_max": ("VIRTIO_BLK_F_SIZE_MAX", 1),
    "seg_max": ("VIRTIO_BLK_F_SEG_MAX", 2),
    "ro": ("VIRTIO_BLK_F_RO", 5),
    "blk_size": ("VIRTIO_BLK_F_BLK_SIZE", 6),
    "flush": ("VIRTIO_BLK_F_FLUSH", 9),
    "topology": ("VIRTIO_BLK_F_TOPOLOGY", 10),
    "config_wce": ("VIRTIO_BLK_F_CONFIG_WCE", 11),
    "mq": ("VIRTIO_BLK_F_MQ", 12),
    "discard": ("VIRTIO_BLK_F_DISCARD", 13),
    "write_zeroes": ("VIRTIO_BLK_F_WRITE_ZEROES", 14),
    "indirect_desc": ("VIRTIO_RING_F_INDIRECT_DESC", 28),
    "event_idx": ("VIRTIO_RING_F_EVENT_IDX", 29),
}


class Spec(BaseModel):
    """A validated spec plus where it came from; what templates read."""

    model_config = ConfigDict(frozen=True)

    name: str
    source: str
    body: SpecBody

    @classmethod
    def from_body(cls, path: Path, body: SpecBody, source: str) -> Spec:
        """Wrap a validated body with its provenance."""
        return cls(name=path.stem, source=source, body=body)

    @property
    def gen_argument(self) -> str:
        """What `invoke gen --spec` takes to regenerate this spec: its name when it is
        shipped (spec/<name>.yaml), else its recorded path."""
        return self.name if self.source == f"spec/{self.name}.yaml" else shlex.quote(self.source)

    @property
    def sha256(self) -> str:
        """The spec hash: of the validated body and the toolkit version (see digest.py)."""
        return spec_sha256(self.body)

    # Templates say spec.features.flush, not spec.body.features.flush.
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

    def _offered(self) -> list[tuple[int, str]]:
        return sorted(
            (bit, macro)
            for key, (macro, bit) in _FEATURE_BITS.items()
            if getattr(self.features, key)
        )

    @property
    def feature_macros(self) -> list[str]:
        """C macros of the offered feature bits, by bit number, VERSION_1 last."""
        return [macro for _, macro in self._offered()] + ["VIRTIO_F_VERSION_1"]

    @property
    def feature_mask(self) -> int:
        """The offered feature bits as a number (VERSION_1 is bit 32)."""
        mask = 1 << 32
        for bit, _ in self._offered():
            mask |= 1 << bit
        return mask

    @property
    def data_segments_max(self) -> int:
        """Most data segments the device accepts in one request.

        With SEG_MAX offered that is device.seg_max; without it the driver may
        use every descriptor of the largest chain but the header and status.
        """
        if self.features.seg_max:
            return self.device.seg_max
        return self.device.queue_size - 2

    @property
    def chain_max(self) -> int:
        """Most descriptors one chain may use, direct and indirect together.

        virtio 1.2 §2.7.5.3.1 bounds a chain by the queue size; an indirect
        table may also carry every data segment SEG_MAX allows plus header and
        status, as Linux sends it.
        """
        return max(self.device.queue_size, self.data_segments_max + 2)

    @property
    def has_range_ops(self) -> bool:
        """DISCARD or WRITE_ZEROES is offered (ranges of sectors, not data)."""
        return self.features.discard or self.features.write_zeroes

    @property
    def range_segments_max(self) -> int:
        """Most DISCARD / WRITE_ZEROES segments accepted in one request."""
        return max(
            self.device.max_discard_seg if self.features.discard else 1,
            self.device.max_write_zeroes_seg if self.features.write_zeroes else 1,
        )

    @property
    def needs_gnu_source(self) -> bool:
        """The device uses GNU extensions (fallocate, O_DIRECT, CPU affinity, thread names)."""
        return (
            self.has_range_ops
            or self.backend.direct
            or bool(self.threading.affinity)
            or self.backend.splits
        )

    @property
    def serial_c(self) -> str:
        """The serial as a C string literal body (printable ASCII, escaped)."""
        return self.device.serial.replace("\\", "\\\\").replace('"', '\\"')

    @property
    def affinity_c(self) -> str:
        """The worker CPU list as a C initializer body."""
        return ", ".join(str(cpu) for cpu in self.threading.affinity)
