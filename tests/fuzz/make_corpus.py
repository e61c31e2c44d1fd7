"""Write the fuzzer's seed corpus: small valid and hostile guests.

Each seed is one input for toolchain/fuzz/fuzz_blk.c, in the format its
header comment describes (a 16-byte header, descriptors, avail entries, then
memory patches). Run from the project root:

    python3 tests/fuzz/make_corpus.py            # rewrites tests/fuzz/corpus/
    python3 tests/fuzz/make_corpus.py OUT_DIR    # somewhere else

The corpus directory belongs to this script: files it does not write are
removed. tests/test_fuzz.py checks that the committed corpus is what this
script writes.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Must match toolchain/fuzz/fuzz_blk.c.
GPA_BASE = 0x4000_0000
REGION_BYTES = 0x8000
DESC_OFF, AVAIL_OFF, USED_OFF, DATA_OFF = 0x0000, 0x1000, 0x1400, 0x2000
READ_ONLY, EVENT_IDX, INDIRECT = 1, 2, 4
IMAGE_64K, IMAGE_PARTIAL_TAIL, IMAGE_ONE_SECTOR, IMAGE_EMPTY = 0, 1, 2, 3

F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13

CORPUS = Path(__file__).resolve().parent / "corpus"


@dataclass
class Guest:
    """One fuzzer input: a queue, its descriptors, and guest memory contents."""

    log2_num: int = 3
    config: int = 0
    image: int = IMAGE_64K
    last_avail: int = 0
    used_idx: int = 0
    avail_flags: int = 0
    used_event: int = 0
    descs: list[tuple[int, int, int, int]] = field(default_factory=list)
    avail: list[int] = field(default_factory=list)
    patches: list[tuple[int, bytes]] = field(default_factory=list)
    avail_idx: int | None = None  # default: last_avail + len(avail)
    _data: int = DATA_OFF

    def buffer(self, content: bytes = b"", size: int | None = None) -> int:
        """Room for a buffer in guest memory (offset from GPA_BASE), filled with content."""
        size = len(content) if size is None else size
        off = self._data
        self._data += (size + 15) & ~15
        if content:
            self.patches.append((off, content))
        return off

    def desc(self, offset: int, length: int, flags: int = 0, nxt: int = 0) -> int:
        """Append a descriptor (offset from GPA_BASE); returns its index."""
        self.descs.append((GPA_BASE + offset, length, flags, nxt))
        return len(self.descs) - 1

    def chain(self, parts: list[tuple[int, int, int]]) -> int:
        """Descriptors (offset, len, flags) linked in order; returns the head."""
        first = len(self.descs)
        for i, (off, length, flags) in enumerate(parts):
            last = i == len(parts) - 1
            self.desc(off, length, flags | (0 if last else F_NEXT), first + i + 1)
        return first

    def request(
        self,
        rtype: int,
        sector: int = 0,
        out: list[bytes] | None = None,
        into: list[int] | None = None,
        status: int = 1,
    ) -> int:
        """A well-formed chain: header, readable data, writable data, status."""
        parts = [(self.buffer(struct.pack("<IIQ", rtype, 0, sector)), 16, 0)]
        parts += [(self.buffer(data), len(data), 0) for data in out or []]
        parts += [(self.buffer(size=n), n, F_WRITE) for n in into or []]
        parts.append((self.buffer(size=status), status, F_WRITE))
        head = self.chain(parts)
        self.avail.append(head)
        return head

    def encode(self) -> bytes:
        """The input bytes the harness reads."""
        avail_idx = self.last_avail + len(self.avail) if self.avail_idx is None else self.avail_idx
        out = bytearray(
            struct.pack(
                "<BBHHHHHHH",
                self.config | (self.log2_num << 4),
                self.image,
                self.last_avail & 0xFFFF,
                avail_idx & 0xFFFF,
                self.avail_flags,
                self.used_idx,
                self.used_event,
                len(self.descs),
                1 << self.log2_num,
            )
        )
        for addr, length, flags, nxt in self.descs:
            out += struct.pack("<QIHH", addr & (2**64 - 1), length, flags, nxt)
        num = 1 << self.log2_num
        ring = [0] * num
        for i, head in enumerate(self.avail[:num]):
            ring[(self.last_avail + i) % num] = head
        for head in ring:
            out += struct.pack("<H", head)
        for off, data in self.patches:
            out += struct.pack("<HH", off, len(data)) + data
        return bytes(out)


def _sector(fill: int) -> bytes:
    return bytes([fill]) * 512


def seeds() -> dict[str, Guest]:
    """Every seed, by file name."""
    s: dict[str, Guest] = {}

    g = s.setdefault("read-one-sector", Guest())
    g.request(T_IN, sector=3, into=[512])

    g = s.setdefault("write-two-segments", Guest())
    g.request(T_OUT, sector=5, out=[_sector(0xAA), _sector(0x55)])

    g = s.setdefault("flush", Guest())
    g.request(T_FLUSH)

    g = s.setdefault("get-id", Guest())
    g.request(T_GET_ID, into=[20])

    g = s.setdefault("get-id-short-buffer", Guest())
    g.request(T_GET_ID, into=[8])

    g = s.setdefault("unknown-type", Guest())
    g.request(0x4242)

    g = s.setdefault("discard-one-range", Guest())
    g.request(T_DISCARD, out=[struct.pack("<QII", 8, 8, 0)])

    g = s.setdefault("write-zeroes-unmap", Guest())
    g.request(T_WRITE_ZEROES, out=[struct.pack("<QII", 16, 8, 1)])

    g = s.setdefault("batch-read-write-flush", Guest(log2_num=4))
    g.request(T_IN, sector=0, into=[512, 1024])
    g.request(T_OUT, sector=100, out=[_sector(1)])
    g.request(T_FLUSH)

    g = s.setdefault("read-last-sector", Guest())
    g.request(T_IN, sector=127, into=[512])

    g = s.setdefault("read-past-the-end", Guest())
    g.request(T_IN, sector=127, into=[1024])

    g = s.setdefault("write-huge-sector", Guest())
    g.request(T_OUT, sector=2**64 - 1, out=[_sector(7)])

    g = s.setdefault("write-partial-tail-image", Guest(image=IMAGE_PARTIAL_TAIL))
    g.request(T_OUT, sector=127, out=[_sector(9)])
    g.request(T_OUT, sector=128, out=[_sector(9)])

    g = s.setdefault("read-empty-image", Guest(image=IMAGE_EMPTY))
    g.request(T_IN, sector=0, into=[512])

    g = s.setdefault("write-read-only", Guest(config=READ_ONLY, image=IMAGE_ONE_SECTOR))
    g.request(T_OUT, sector=0, out=[_sector(3)])

    g = s.setdefault("status-two-bytes", Guest())
    g.request(T_IN, into=[512], status=2)

    g = s.setdefault("no-status", Guest())
    g.request(T_FLUSH, status=0)

    g = s.setdefault("header-15-bytes", Guest())
    hdr = g.buffer(struct.pack("<IIQ", T_IN, 0, 0)[:15])
    g.avail.append(g.chain([(hdr, 15, 0), (g.buffer(size=1), 1, F_WRITE)]))

    g = s.setdefault("data-on-both-sides", Guest())
    hdr = g.buffer(struct.pack("<IIQ", T_OUT, 0, 0))
    g.avail.append(
        g.chain(
            [
                (hdr, 16, 0),
                (g.buffer(_sector(1)), 512, 0),
                (g.buffer(size=512), 512, F_WRITE),
                (g.buffer(size=1), 1, F_WRITE),
            ]
        )
    )

    g = s.setdefault("readable-after-writable", Guest())
    hdr = g.buffer(struct.pack("<IIQ", T_IN, 0, 0))
    g.avail.append(
        g.chain([(hdr, 16, 0), (g.buffer(size=512), 512, F_WRITE), (g.buffer(size=1), 1, 0)])
    )

    g = s.setdefault("loop", Guest())
    hdr = g.buffer(struct.pack("<IIQ", T_IN, 0, 0))
    g.desc(hdr, 16, F_NEXT, 1)
    g.desc(g.buffer(size=512), 512, F_WRITE | F_NEXT, 0)
    g.avail.append(0)

    g = s.setdefault("next-out-of-range", Guest())
    hdr = g.buffer(struct.pack("<IIQ", T_IN, 0, 0))
    g.desc(hdr, 16, F_NEXT, 200)
    g.avail.append(0)

    g = s.setdefault("head-out-of-range", Guest())
    g.request(T_FLUSH)
    g.avail[0] = 0xFFFF

    g = s.setdefault("indirect-not-negotiated", Guest())
    table = g.buffer(size=48)
    g.desc(table, 48, F_INDIRECT)
    g.avail.append(0)

    g = s.setdefault("indirect-read", Guest(config=INDIRECT))
    inner = Guest()
    inner._data = g._data
    inner.request(T_IN, sector=1, into=[512])
    g.patches += inner.patches
    g._data = inner._data
    entries = b"".join(struct.pack("<QIHH", a, n, f, x) for a, n, f, x in inner.descs)
    g.desc(g.buffer(entries), len(entries), F_INDIRECT)
    g.avail.append(0)

    g = s.setdefault("buffer-crosses-regions", Guest())
    hdr = g.buffer(struct.pack("<IIQ", T_IN, 0, 0))
    g.avail.append(
        g.chain([(hdr, 16, 0), (REGION_BYTES - 256, 512, F_WRITE), (g.buffer(size=1), 1, F_WRITE)])
    )

    g = s.setdefault("buffer-unmapped", Guest())
    hdr = g.buffer(struct.pack("<IIQ", T_IN, 0, 0))
    g.avail.append(
        g.chain([(hdr, 16, 0), (-GPA_BASE, 512, F_WRITE), (g.buffer(size=1), 1, F_WRITE)])
    )

    g = s.setdefault("buffer-wraps-address-space", Guest())
    hdr = g.buffer(struct.pack("<IIQ", T_IN, 0, 0))
    g.avail.append(
        g.chain(
            [(hdr, 16, 0), (2**64 - 16 - GPA_BASE, 512, F_WRITE), (g.buffer(size=1), 1, F_WRITE)]
        )
    )

    g = s.setdefault("read-into-descriptor-table", Guest())
    hdr = g.buffer(struct.pack("<IIQ", T_IN, 0, 0))
    status = g.buffer(size=1)
    g.avail.append(g.chain([(hdr, 16, 0), (DESC_OFF, 512, F_WRITE), (status, 1, F_WRITE)]))

    g = s.setdefault("read-into-used-ring", Guest())
    hdr = g.buffer(struct.pack("<IIQ", T_IN, 0, 0))
    status = g.buffer(size=1)
    g.avail.append(g.chain([(hdr, 16, 0), (USED_OFF, 512, F_WRITE), (status, 1, F_WRITE)]))

    g = s.setdefault("avail-ran-ahead", Guest())
    g.request(T_FLUSH)
    g.avail_idx = 100

    g = s.setdefault("index-wraps-event-idx", Guest(config=EVENT_IDX, last_avail=0xFFFE))
    g.used_idx = 0xFFFE
    g.used_event = 0xFFFE
    for _ in range(3):
        g.request(T_FLUSH)

    g = s.setdefault("ring-of-one", Guest(log2_num=0))
    g.request(T_FLUSH)

    g = s.setdefault("ring-of-four-full", Guest(log2_num=2))
    g.request(T_FLUSH)
    g.request(T_FLUSH)

    return s


def write_corpus(out: Path) -> list[Path]:
    """Write every seed into out (removing files that are not seeds)."""
    out.mkdir(parents=True, exist_ok=True)
    wanted = {name: guest.encode() for name, guest in seeds().items()}
    for stale in out.iterdir():
        if stale.is_file() and stale.name not in wanted:
            stale.unlink()
    paths = []
    for name, data in sorted(wanted.items()):
        path = out / name
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
        paths.append(path)
    return paths


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else CORPUS
    paths = write_corpus(out)
    print(f"{len(paths)} seeds in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
