"""The main-thread stall benchmark (`invoke stall`).

hvisor-tool runs every guest's MMIO accesses on one main thread; whatever a
device's notify handler or reset does there, every other access of every
zone waits for, some with a guest vCPU spinning in EL2 (hvisor-api.md
section 5). This benchmark measures, per spec, the longest such hold under
a guest that keeps its ring full of the largest requests a Linux guest
sends, and the longest reset (STATUS = 0) issued with the ring full.

It drives the project's runtime on the hvisor transport (the clean-room
core, whose main loop times every access it handles and reports the longest
QueueNotify, STATUS write and other access at shutdown). Specs run in turn
within each round (A B C A B C ...), so a noisy machine slows them alike;
the report gives the median and the spread over the rounds.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..bridge.backend import HvisorBackend
from ..bridge.mmio import MmioTransport
from ..guest.blk import VIRTIO_BLK_S_OK, BlkDevice, BlkRequest
from ..guest.memory import GuestMemory
from ..project import Layout, build_one, specs
from ..targets import load_target

Progress = Callable[[str], None]

#: Requests are made of 64 KiB segments; by default 16 of them, 1 MiB, what a
#: Linux guest sends at most with its default max_sectors_kb (1280).
SEGMENT_BYTES = 64 * 1024
RING = 256  # entries per queue, at most the spec's queue_size
RAM_GPA = 0x4000_0000
IMAGE_MIB = 64
#: Guest RAM for request buffers at most: with indirect_desc and large
#: requests a full ring would need more, and fewer are kept in flight.
MAX_RAM = 512 << 20

_LINE = re.compile(
    r"main thread: (?P<accesses>\d+) accesses; longest QueueNotify (?P<notify_ns>\d+) ns "
    r"\(most on CPU (?P<notify_cpu_ns>\d+) ns; the main thread completed at most "
    r"(?P<completions>\d+) in one\), longest STATUS write (?P<status_ns>\d+) ns "
    r"\(most on CPU (?P<status_cpu_ns>\d+) ns\), longest other access (?P<other_ns>\d+) ns"
)


@dataclass(frozen=True)
class StallConfig:
    """What one `invoke stall` does."""

    specs: tuple[str, ...] = ("inline", "procq", "virtio-blk", "per-queue")
    target: str = "host"
    rounds: int = 3
    seconds: float = 3.0
    resets: int = 5
    request_kib: int = 1024  # each request's size: a multiple of 64 KiB
    out_dir: Path | None = None  # default: build/stall/<timestamp>/
    command: str = ""

    def check(self) -> None:
        """ValueError for settings that cannot run."""
        if not self.specs or len(set(self.specs)) != len(self.specs):
            raise ValueError("name each spec once (--spec A --spec B)")
        if self.rounds < 1 or self.seconds <= 0 or self.resets < 0:
            raise ValueError("--rounds >= 1, --seconds > 0 and --resets >= 0")
        if self.request_kib < 64 or self.request_kib % 64 or self.request_kib > 32 * 1024:
            raise ValueError("--request-kib: a multiple of 64 in 64..32768")

    @property
    def segments(self) -> int:
        """64 KiB segments per request."""
        return self.request_kib // 64


@dataclass(frozen=True)
class StallRun:
    """One spec's run in one round: what the core measured, and the load."""

    spec: str
    round: int
    in_flight: int
    requests: int
    resets: int
    accesses: int
    notify_ns: int
    notify_cpu_ns: int
    completions: int
    status_ns: int
    status_cpu_ns: int
    other_ns: int


def main_thread_figures(log: str) -> dict[str, int] | None:
    """The figures the runtime's hvisor core prints at shutdown, or None."""
    found = _LINE.search(log)
    return None if found is None else {k: int(v) for k, v in found.groupdict().items()}


def _request(dev: BlkDevice, sector: int, segments: int) -> BlkRequest:
    sizes = [SEGMENT_BYTES] * segments
    return BlkRequest.read(dev.memory, sector, sum(sizes), sizes)


def _fill(dev: BlkDevice, want: int, sector: int, sectors: int, segments: int) -> int:
    """Post requests until want are outstanding; one kick. Returns the next sector."""
    step = segments * SEGMENT_BYTES // 512
    while dev.outstanding() < want:
        dev.submit(_request(dev, sector, segments), kick=False)
        sector = (sector + step) % (sectors - step)
    dev.queues[0].kick()
    return sector


def run_one(layout: Layout, spec_name: str, target_name: str, rnd: int, cfg: StallConfig,
            work: Path) -> StallRun:  # fmt: skip
    """One spec, one round: load for cfg.seconds, then cfg.resets resets with the ring full."""
    (spec,) = specs(layout, [spec_name])
    target = load_target(target_name)
    binary = build_one(layout, spec_name, target_name).binary
    image = work / "disk.img"
    with image.open("wb") as f:  # random bytes: no holes, which read cheaper
        for _ in range(IMAGE_MIB):
            f.write(os.urandom(1 << 20))
    sectors = (IMAGE_MIB << 20) // 512
    ring = min(RING, spec.device.queue_size)
    indirect = spec.features.indirect_desc
    segments = cfg.segments
    if not indirect and segments + 2 > ring:
        raise ValueError(f"{spec_name}: a {cfg.request_kib} KiB request needs indirect_desc")
    per_request = segments * SEGMENT_BYTES
    full = ring if indirect else max(1, ring // (segments + 2))
    in_flight = max(1, min(full, MAX_RAM // per_request - 2))
    memory = GuestMemory([(RAM_GPA, (in_flight + 2) * per_request + (1 << 20))])
    timeout = 60.0 if target.emulated else 10.0
    if spec.backend.direct:
        memory.io_align = spec.device.block_size
    dev = BlkDevice(memory=memory, queue_size=ring, timeout=timeout, indirect=indirect)
    backend = HvisorBackend.runtime(
        str(binary), str(image), work, prefix=target.runner, name=f"{spec_name}-{rnd}",
        env=dict(target.env),
    )  # fmt: skip
    backend.start()
    backend.attach(dev)
    requests = 0
    try:
        sector = 0
        deadline = time.monotonic() + cfg.seconds
        while time.monotonic() < deadline:
            sector = _fill(dev, in_flight, sector, sectors, segments)
            done = dev.complete(count=1)
            requests += len(done)
            if any(c.status != VIRTIO_BLK_S_OK for c in done):
                raise RuntimeError(f"{spec_name}: a read failed: {done[0]}")
        dev.complete()
        for _ in range(cfg.resets):
            _fill(dev, in_flight, sector, sectors, segments)
            transport = dev.transport
            assert isinstance(transport, MmioTransport)
            transport.set_status(0)  # with the ring full
            dev.reconnect()
    finally:
        dev.close()
        code = backend.stop()
    figures = main_thread_figures(backend.log_text())
    if code != 0 or figures is None:
        raise RuntimeError(f"{spec_name}: the runtime exited {code}; see {backend.log_path}")
    backend.cleanup()
    return StallRun(spec_name, rnd, in_flight, requests, cfg.resets, **figures)


def _us(ns: Sequence[int]) -> str:
    med = statistics.median(ns) / 1000
    return f"{med:.0f} ({min(ns) / 1000:.0f}-{max(ns) / 1000:.0f})"


def report(cfg: StallConfig, runs: list[StallRun], models: dict[str, str]) -> str:
    """Markdown: per spec, the median (min-max) over rounds of each longest hold."""
    head = (
        "# Main-thread stall\n\n"
        f"`{cfg.command or 'invoke stall'}` on {platform.machine()} "
        f"({cfg.target}), {cfg.rounds} round(s) of {cfg.seconds:g} s load + "
        f"{cfg.resets} reset(s) with the ring full; requests of {cfg.segments} x "
        f"{SEGMENT_BYTES // 1024} KiB reads. Figures in us: median (min-max) over rounds.\n\n"
        "Wall time includes the main thread being preempted (on a 2-core machine the\n"
        "guest, the main thread and the workers share two CPUs); CPU time is the work\n"
        "the main thread itself did.\n\n"
        "| spec | model | longest QueueNotify, wall | on CPU | main thread completed in one | "
        "longest STATUS=0, wall | on CPU | longest other access | in flight | requests/round |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for name in cfg.specs:
        mine = [r for r in runs if r.spec == name]
        model = models[name]
        rows.append(
            f"| {name} | {model} | {_us([r.notify_ns for r in mine])} | "
            f"{_us([r.notify_cpu_ns for r in mine])} | {max(r.completions for r in mine)} | "
            f"{_us([r.status_ns for r in mine])} | {_us([r.status_cpu_ns for r in mine])} | "
            f"{_us([r.other_ns for r in mine])} | {mine[0].in_flight} | "
            f"{statistics.median(r.requests for r in mine):.0f} |"
        )
    return head + "\n".join(rows) + "\n"


def run_stall(layout: Layout, cfg: StallConfig, progress: Progress) -> Path:
    """Every round runs every spec in turn; results and report in build/stall/<timestamp>/."""
    cfg.check()
    models = {s.name: s.threading.model.value for s in specs(layout, list(cfg.specs))}
    out = cfg.out_dir or layout.build_dir / "stall" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True)
    runs: list[StallRun] = []
    for rnd in range(cfg.rounds):
        for name in cfg.specs:
            with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="blkgen-stall-") as tmp:
                r = run_one(layout, name, cfg.target, rnd, cfg, Path(tmp))
            runs.append(r)
            progress(
                f"round {rnd + 1}/{cfg.rounds} {name}: QueueNotify {r.notify_ns / 1000:.0f} us, "
                f"STATUS=0 {r.status_ns / 1000:.0f} us, {r.requests} requests"
            )
    (out / "runs.json").write_text(json.dumps([asdict(r) for r in runs], indent=2) + "\n")
    (out / "report.md").write_text(report(cfg, runs, models))
    return out
