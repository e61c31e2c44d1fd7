"""Property-based hostile-guest tests: random descriptor chains against a live backend.

Hypothesis generates chains (valid and invalid: random indices, flags,
lengths, addresses inside and outside guest memory, random headers, types and
sectors) and posts them to one backend per test function. After every example
the same invariants are checked:

- exactly one completion arrives, for the head that was published, or, when
  the model says the chain's structure cannot be trusted (docs/conformance.md),
  none, and the device says it needs a reset (then it is reset);
- guest memory changed only in writable buffers the chain really offers (the
  whole of guest RAM is compared), and the used length never exceeds them;
- the status byte, when the device wrote one, is 0, 1 or 2, and is what the
  rules say (a Python model of the walk predicts the outcome);
- the image keeps its size and exactly the content the shadow expects;
- the backend is alive.

Profiles (tests/conftest.py): ``ci`` (default, ~50 examples per spec x
target) and ``long`` (HYPOTHESIS_PROFILE=long, thousands).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from toolchain.guest import Backend, BlkDevice, GuestMemory, ShadowDisk
from toolchain.guest.blk import (
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_RING_F_INDIRECT_DESC,
    BlkRequest,
)
from toolchain.guest.hostile import (
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    AlignedRequest,
    Desc,
    Range,
    RawQueue,
    outside,
)

from .conftest import IMAGE_SIZE, DeviceUnderTest

SECTORS = IMAGE_SIZE // 512
U64 = 1 << 64
QUEUE = 16  # small ring: random indices hit it, loops and long chains are cheap
REGION = 4 * 1024 * 1024
GAP = 0x10_0000
BASE = 0x1000_0000
W, N, INDIRECT = VRING_DESC_F_WRITE, VRING_DESC_F_NEXT, VRING_DESC_F_INDIRECT


@pytest.fixture
def pdev(dut: DeviceUnderTest, backend: Backend) -> Iterator[BlkDevice]:
    """One driver per test function: two 4 MiB regions with a gap, a 16-entry ring.

    INDIRECT_DESC is masked out so the model stays simple: an F_INDIRECT
    descriptor must then never be followed.
    """
    d = BlkDevice(
        GuestMemory.with_gap(2, REGION, GAP, BASE),
        timeout=dut.timeout,
        queue_size=QUEUE,
        feature_mask=~(1 << VIRTIO_RING_F_INDIRECT_DESC),
    )
    backend.attach(d)
    yield d
    d.close()


# ---- what hypothesis draws ------------------------------------------------------------

ADDRESS_KINDS = [
    "own",
    "own",
    "own",
    "own",
    "below",
    "gap",
    "above",
    "straddle0",
    "straddle1",
    "span-gap",
    "wrap",
]


@dataclass
class Buf:
    """One descriptor as drawn: where its buffer lives, its length, flags, next."""

    kind: str
    length: int
    flags: int
    content: bytes = b""
    next: int | None = None  # None: the next descriptor of the chain
    addr: int = 0  # filled in when laid out


@dataclass
class Case:
    """A drawn chain: descriptors in order at table ``indices``, published at ``head``."""

    bufs: list[Buf]
    indices: list[int]
    head: int | None  # None: indices[0]
    type_: int
    sector: int
    extras: list[str] = field(default_factory=list)


def _sector(capacity: int) -> st.SearchStrategy[int]:
    return st.one_of(
        st.sampled_from([0, 1, capacity - 8, capacity - 1, capacity, capacity + 1, 1 << 55]),
        st.sampled_from([(1 << 55) + 1, 1 << 63, U64 - 1]),
        st.integers(0, capacity),
        st.integers(0, U64 - 1),
    )


#: Request types drawn most: IN and OUT twice as often; 2, 3 and 0x4242 are unknown.
TYPES = [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_OUT]
TYPES += [VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, 2, 3, 0x4242]

LENGTHS = st.one_of(
    st.sampled_from([0, 1, 2, 15, 16, 17, 20, 511, 512, 1024, 4096, 8192]),
    st.integers(0, 9000),
)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A chain that starts as a plausible request and is then mangled."""
    type_ = draw(
        st.one_of(
            st.sampled_from(TYPES),
            st.integers(0, 0xFFFF_FFFF).filter(
                lambda t: t not in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES)
            ),
        )
    )
    sector = draw(_sector(SECTORS))
    writable_data = type_ in (VIRTIO_BLK_T_IN, VIRTIO_BLK_T_GET_ID)
    bufs = [Buf("own", 16, 0)]
    for _ in range(draw(st.integers(0, 4))):
        n = draw(st.one_of(st.sampled_from([512, 1024, 4096]), LENGTHS))
        bufs.append(Buf("own", n, W if writable_data else 0))
    bufs.append(Buf("own", 1, W))
    mangle = draw(st.sampled_from([0, 0, 0, 1, 2, 3]))  # how hostile; half are clean
    for b in bufs:
        if mangle and draw(st.integers(0, 4)) == 0:
            b.kind = draw(st.sampled_from(ADDRESS_KINDS))
        if mangle and draw(st.integers(0, 5)) == 0:
            b.length = draw(LENGTHS)
        if mangle and draw(st.integers(0, 5)) == 0:
            b.flags ^= draw(st.sampled_from([W, N, INDIRECT, W | N, 0x8000]))
        if mangle > 1 and draw(st.integers(0, 6)) == 0:
            b.next = draw(st.one_of(st.integers(0, QUEUE + 2), st.just(0xFFFF)))
    if mangle and draw(st.booleans()):
        for _ in range(draw(st.integers(1, 3))):  # zero-length descriptors anywhere
            pos = draw(st.integers(0, len(bufs)))
            bufs.insert(pos, Buf(draw(st.sampled_from(ADDRESS_KINDS)), 0, draw(st.integers(0, 7))))
    if mangle > 2 and draw(st.booleans()):
        bufs = bufs + bufs[: draw(st.integers(0, len(bufs)))]  # longer, maybe past num
    bufs = bufs[:QUEUE]
    indices = draw(st.permutations(list(range(QUEUE))))[: len(bufs)]
    head = None
    if mangle > 1 and draw(st.integers(0, 5)) == 0:
        head = draw(st.one_of(st.integers(0, QUEUE + 2), st.integers(0, 0xFFFF)))
    for b in bufs:
        b.content = draw(st.binary(min_size=min(b.length, 64), max_size=min(b.length, 64)))
    return Case(bufs, indices, head, type_, sector)


# ---- laying a case out in guest memory ---------------------------------------------------


def _address(mem: GuestMemory, kind: str, length: int) -> int:
    r0, r1 = mem.regions
    half = max(1, length // 2)
    return {
        "below": 0x1000,
        "gap": r0.end + 0x800,
        "above": r1.end + 0x1000,
        "straddle0": r0.end - half,
        "straddle1": r1.end - half,
        "span-gap": r0.end - half,
        "wrap": U64 - half,
    }[kind]


def lay_out(mem: GuestMemory, case: Case) -> tuple[dict[int, Desc], int, AlignedRequest]:
    """Allocate the case's own buffers (guarded) and build its descriptors."""
    parts: list[tuple[bytes | int, bool]] = []
    own = [b for b in case.bufs if b.kind == "own" and b.length]
    header = BlkRequest.header(case.type_ & 0xFFFF_FFFF, case.sector)
    first_readable = True
    for b in own:
        if first_readable and not b.flags & W:
            data = (header + os.urandom(max(0, b.length - 16)))[: b.length]
            first_readable = False
        elif b.flags & W:
            data = b""
        else:
            data = (b.content * (b.length // max(1, len(b.content)) + 1))[: b.length]
        parts.append((data if data else b.length, False))
    req = AlignedRequest(mem, parts)
    for b, seg in zip(own, req.segments, strict=True):
        b.addr = seg.gpa
    for b in case.bufs:
        if b.kind != "own":
            b.addr = _address(mem, b.kind, b.length)
            if b.kind == "span-gap":
                b.length = min(b.length + GAP + 2, 0xFFFF_FFFF)
        elif not b.length:
            b.addr = int.from_bytes(b.content[:8].ljust(8, b"\0"), "little")
    descs: dict[int, Desc] = {}
    for k, (b, i) in enumerate(zip(case.bufs, case.indices, strict=True)):
        last = k == len(case.bufs) - 1
        flags = b.flags | (0 if last else N)
        nxt = b.next if b.next is not None else (0 if last else case.indices[k + 1])
        descs[i] = Desc(b.addr, b.length, flags, nxt & 0xFFFF)
    head = case.indices[0] if case.head is None else case.head
    return descs, head, req


# ---- the model: what the rules say ------------------------------------------------------------


@dataclass
class Prediction:
    """What the device must do: the (status, used len) outcomes it may choose, where
    the status goes, and the writes it may make; or ``broken``: complete nothing and
    say it needs a reset."""

    outcomes: set[tuple[int | None, int]]
    status_gpa: int | None = None
    data: list[tuple[int, int]] = field(default_factory=list)  # writable data (addr, len)
    reads: list[tuple[int, int]] = field(default_factory=list)
    type_: int = 0
    sector: int = 0
    broken: bool = False


BROKEN = Prediction(set(), broken=True)


def _mapped(mem: GuestMemory, addr: int, length: int) -> bool:
    if addr + length - 1 >= U64:
        return False
    return any(r.contains(addr) and r.contains(addr + length - 1) for r in mem.regions)


def _take(segs: list[tuple[int, int]], n: int) -> tuple[int, list[tuple[int, int]]]:
    """Drop the first n bytes of segs; (bytes dropped, what is left)."""
    got, left = 0, []
    for addr, length in segs:
        k = min(length, n - got)
        got += k
        if length - k:
            left.append((addr + k, length - k))
    return got, left


def predict(
    mem: GuestMemory, table: dict[int, Desc], head: int, dut: DeviceUnderTest
) -> Prediction:
    """Walk the chain as docs/conformance.md says; return what the device must do."""
    spec = dut.spec
    idx, seen = head, 0
    reads: list[tuple[int, int]] = []
    writes: list[tuple[int, int, bool]] = []
    sound = True
    while True:
        if idx >= QUEUE or seen >= QUEUE:
            return BROKEN  # index out of the table, or a loop (2.7.5.2)
        d = table.get(idx, Desc(0, 0))
        if d.flags & INDIRECT:
            return BROKEN  # INDIRECT_DESC is not negotiated (2.7.5.3.1)
        if d.len:
            mapped = _mapped(mem, d.addr, d.len)
            sound = sound and mapped
            if d.flags & W:
                writes.append((d.addr, d.len, mapped))
            elif writes:
                sound = False  # readable after writable (2.7.4.2)
            else:
                reads.append((d.addr, d.len))
        if not d.flags & N:
            break
        idx, seen = d.next, seen + 1
    if not writes:
        return Prediction({(None, 0)})  # nowhere to answer
    addr, length, mapped = writes[-1]
    if not mapped:
        return BROKEN  # the status buffer is not in guest RAM
    status_gpa = addr + length - 1
    wsegs = [(a, n) for a, n, _ in writes[:-1]] + ([(addr, length - 1)] if length > 1 else [])
    before = sum(n for _, n in wsegs)

    def used_len(written: int) -> int:
        # The status counts only with no unwritten writable byte before it (2.7.8).
        return written + 1 if written == before else written

    ioerr = Prediction({(VIRTIO_BLK_S_IOERR, used_len(0))}, status_gpa)
    if not sound:
        return ioerr
    got, rdata = _take(reads, 16)
    if got < 16 or (rdata and wsegs):
        return ioerr  # short header, or data on both sides
    raw = b"".join(mem.read(a, n) for a, n in reads)[:16]
    type_ = int.from_bytes(raw[:4], "little")
    sector = int.from_bytes(raw[8:], "little")
    data = wsegs or rdata
    if spec.features.seg_max and len(data) > spec.device.seg_max:
        return ioerr
    if spec.features.size_max and any(n > spec.device.size_max for _, n in data):
        return ioerr
    data_len = sum(n for _, n in data)
    in_range = data_len % 512 == 0 and sector <= SECTORS and data_len // 512 <= SECTORS - sector
    p = Prediction(set(), status_gpa, wsegs)
    p.reads, p.type_, p.sector = rdata, type_, sector
    err = (VIRTIO_BLK_S_IOERR, used_len(0))
    direct = getattr(spec.backend, "direct", False)
    if type_ == VIRTIO_BLK_T_IN:
        ok = not rdata and in_range
        p.outcomes = {(VIRTIO_BLK_S_OK, used_len(data_len))} if ok else {err}
        if ok and direct and data_len:  # O_DIRECT refuses unaligned buffers
            p.outcomes.add(err)
    elif type_ == VIRTIO_BLK_T_OUT:
        ok = not wsegs and in_range and not getattr(spec.features, "ro", False)
        p.outcomes = {(VIRTIO_BLK_S_OK, 1)} if ok else {err}
        if ok and direct and data_len:
            p.outcomes.add(err)
    elif type_ == VIRTIO_BLK_T_FLUSH and spec.features.flush:
        p.outcomes = {(VIRTIO_BLK_S_OK, used_len(0))} if not data else {err}
    elif type_ == VIRTIO_BLK_T_GET_ID:
        total = sum(n for _, n in wsegs)
        p.outcomes = {(VIRTIO_BLK_S_OK, used_len(min(20, total)))} if wsegs else {err}
    else:
        p.outcomes = {(VIRTIO_BLK_S_UNSUPP, used_len(0))}
    return p


# ---- checking one example ----------------------------------------------------------------------


def _scatter(chunks: list[tuple[int, int]], data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    for addr, n in chunks:
        out.append((addr, data[pos : pos + n]))
        pos += n
    return out


def check_example(
    dev: BlkDevice,
    dut: DeviceUnderTest,
    backend: Backend,
    image: Path,
    shadow: ShadowDisk,
    case: Case,
) -> None:
    """Post one drawn chain and check every invariant."""
    raw = RawQueue(dev)
    raw.zero_table()  # stale descriptors of earlier examples are not reachable
    descs, head, req = lay_out(dev.memory, case)
    raw.write(descs)
    table = {i: Desc(*raw.q.read_desc(i)) for i in range(QUEUE)}
    p = predict(dev.memory, table, head, dut)
    try:
        if p.broken:
            out = raw.post(
                descs, [head], watch_all=True, expect=0, settle=dut.timeout, until=dev.needs_reset
            )
            assert out.used == [], f"completions {out.used} of a chain that cannot be trusted"
            assert outside(out.changed, []) == [], f"wrote: {out.unexpected([])}"
            event("needs reset")
            assert dev.wait_needs_reset() is not None, "the device never said it needs a reset"
            assert backend.alive()
            dev.reconnect()
            return
        out = raw.post(descs, [head], watch_all=True)
        assert [u.id for u in out.used] == [head], f"completions {out.used}"
        used_len = out.used[0].len
        status = dev.memory.read(p.status_gpa, 1)[0] if p.status_gpa is not None else None
        if used_len:
            assert p.status_gpa is not None, "used len > 0 but the chain has no status"
        assert (status, used_len) in p.outcomes, f"got {(status, used_len)}, want {p.outcomes}"
        event(f"status {status} type {p.type_ if p.type_ < 16 else 'other'}")
        allowed: list[Range] = []
        # Data bytes written: the used length, less the status when it counts it (2.7.8).
        writable = sum(n for _, n in p.data)
        written = used_len - 1 if used_len == writable + 1 else used_len
        if p.status_gpa is not None:
            allowed.append((p.status_gpa, p.status_gpa + 1))
            assert written <= writable
            budget = written
            for addr, n in p.data:
                take = min(n, budget)
                allowed.append((addr, addr + take))
                budget -= take
        assert outside(out.changed, allowed) == [], f"wrote outside: {out.unexpected(allowed)}"
        if status == VIRTIO_BLK_S_OK and p.type_ == VIRTIO_BLK_T_IN:
            want = shadow.expected(p.sector * 512, written)
            for addr, chunk in _scatter(p.data, want):
                assert dev.memory.read(addr, len(chunk)) == chunk, "read data differs"
        if status == VIRTIO_BLK_S_OK and p.type_ == VIRTIO_BLK_T_OUT:
            data = b"".join(dev.memory.read(a, n) for a, n in p.reads)
            shadow.write(p.sector * 512, data)
        if status == VIRTIO_BLK_S_OK and p.type_ == VIRTIO_BLK_T_GET_ID:
            serial = dut.spec.device.serial.encode().ljust(20, b"\0")
            got = b"".join(dev.memory.read(a, n) for a, n in p.data)[:written]
            assert got == serial[:written]
        assert image.stat().st_size == IMAGE_SIZE
        assert image.read_bytes() == bytes(shadow.data), "image differs from the shadow"
        assert backend.alive()
    finally:
        req.free()


@given(case=cases())
def test_random_chains_complete_once_and_write_only_where_the_rules_allow(
    pdev: BlkDevice,
    dut: DeviceUnderTest,
    backend: Backend,
    image: Path,
    shadow: ShadowDisk,
    case: Case,
) -> None:
    """Any chain: one completion; status/used len as the rules say; no write outside."""
    check_example(pdev, dut, backend, image, shadow, case)


@given(
    jump=st.one_of(st.integers(0, QUEUE + 3), st.sampled_from([0x8000, 0xFFFF, QUEUE + 1])),
    heads=st.lists(st.one_of(st.just(0), st.integers(0, 0xFFFF)), min_size=QUEUE, max_size=QUEUE),
)
def test_random_avail_index_jumps_are_served_until_an_untrusted_entry(
    pdev: BlkDevice,
    dut: DeviceUnderTest,
    backend: Backend,
    shadow: ShadowDisk,
    jump: int,
    heads: list[int],
) -> None:
    """avail idx moved by ``jump`` over random heads: served in order up to the first
    head outside the table (or none past a ring's worth), then a reset."""
    dev = pdev
    raw = RawQueue(dev)
    raw.zero_table()
    req = AlignedRequest.read(dev.memory, 8, 512)
    h, d, s = req.segments
    raw.write({0: Desc(h.gpa, 16, N, 1), 1: Desc(d.gpa, 512, W | N, 2), 2: Desc(s.gpa, 1, W)})
    q = raw.q
    start = q._avail_idx
    for k, head in enumerate(heads):
        q.set_avail_entry(start + k, head)
    settle = 0.5 if dut.target.emulated else 0.15
    # The ring's entries in order until one the device cannot trust (a head
    # outside the table); more than a ring at once is itself untrusted.
    served: list[int] = []
    broken = jump > QUEUE
    for k in range(0 if broken else jump):
        if heads[k] >= QUEUE:
            broken = True
            break
        served.append(heads[k])
    # vhost-user: the backend drops a frontend whose ring it cannot trust,
    # which is a device reset, and a reset discards the requests not yet
    # started (virtio 1.2 2.4), whatever the threading model (procq, for one,
    # parses ahead of its worker). So entries before the untrusted one may
    # not complete; none past it may. On hvisor the driver resets.
    lossy = broken and dut.transport == "vhost-user"
    try:
        out = raw.post(
            {},
            [],
            avail_idx=start + jump,
            expect=0 if lossy else len(served),
            settle=settle,
            until=dev.needs_reset if lossy else None,
        )
        allowed = [(d.gpa, d.gpa + 512), (s.gpa, s.gpa + 1)]
        assert out.unexpected(allowed) == []
        got = sorted(u.id for u in out.used)  # any completion order
        if lossy:
            assert Counter(got) <= Counter(served), f"completed {got}, only {served} may"
        else:
            assert got == sorted(served)
        for u in out.used:
            # 0: the read; 1: no readable byte, IOERR through the status behind 512
            # unwritten bytes (len 0, 2.7.8); 2: the status alone (len 1); anything
            # else: a zero descriptor, no writable byte.
            assert u.len == {0: 513, 1: 0, 2: 1}.get(u.id, 0)
        if any(u.id == 0 for u in out.used):
            assert dev.memory.read(d.gpa, 512) == shadow.expected(8 * 512, 512)
        if broken:
            assert dev.wait_needs_reset() is not None
            assert backend.alive()
            dev.reconnect()
        assert backend.alive()
    finally:
        req.free()
