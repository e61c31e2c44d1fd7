"""Mutation check: every hardening rule has a test that fails without the rule.

Each mutant removes one check from a generated virtio_blk.c (the text it
replaces must be found exactly once, so a template change cannot silently
turn a mutant into a no-op), is built for the host, and the test named for
that rule is run against it with pytest. A mutant the test does not catch
("survived") means the rule is untested. hvisor-tool HEAD's device lacks
most of these checks (hvisor-api.md §7, §11), so the killed mutants are the
tests that fail against HEAD's semantics.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .build import build
from .project import Layout, specs
from .spec.model import Spec, ThreadingModel
from .targets import load_target


@dataclass(frozen=True)
class Mutant:
    """One check removed: find -> replace in virtio_blk.c; test must then fail."""

    name: str
    rule: str
    find: str
    replace: str
    test: str  # pytest -k expression selecting the rule's test(s)
    # The specs the rule exists in (all when None); where it applies, find
    # must still occur exactly once.
    applies: Callable[[Spec], bool] | None = None
    # The test module holding the rule's test.
    module: str = "tests/test_hostile_guest.py"


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "no-index-bound",
        "descriptor index < table size (virtio 1.2 2.7.5.2)",
        "if (idx >= size)\n            return",
        "if (0)\n            return",
        "test_bad_index_or_loop or test_an_index_past_a_table_that_ends_guest_memory",
    ),
    Mutant(
        "no-chain-bound",
        "a chain holds at most BLK_CHAIN_MAX descriptors, which also ends loops",
        "if (++total > BLK_CHAIN_MAX)",
        "if (++total == 0)",
        "test_bad_index_or_loop",
    ),
    Mutant(
        "start-only-translation",
        "every buffer lies inside one region (both ends translated)",
        "if (first == NULL || last == NULL || last < first ||\n"
        "        (uint64_t)(last - first) != len - 1)",
        "if (first == NULL)",
        "test_buffer_not_inside_one_region",
    ),
    Mutant(
        "short-header",
        "the header is 16 readable bytes; fewer is IOERR",
        "return got == sizeof(*h) ? (int)i : -1;",
        "return (int)i;",
        "test_malformed_request_gets_ioerr",
    ),
    Mutant(
        "status-at-the-start",
        "the status is the last device-writable byte, wherever it lies",
        "req->status = (uint8_t *)last->iov_base + last->iov_len - 1;",
        "req->status = (uint8_t *)last->iov_base;",
        "test_malformed_request_gets_ioerr",
    ),
    Mutant(
        "data-on-both-sides",
        "data on the side the request type requires",
        "(nreadable != 0 && nwrite != 0)",
        "0",
        "test_data_on_both_sides_of_a_read",
    ),
    Mutant(
        "readable-after-writable",
        "device-readable buffers come first (virtio 1.2 2.7.4.2)",
        "return false; /* readable after writable (virtio 1.2 2.7.4.2) */",
        "return true;",
        "test_malformed_request_gets_ioerr",
    ),
    Mutant(
        "no-segment-size-limit",
        "no segment above size_max once SIZE_MAX is negotiated",
        "if (req->data[i].iov_len > BLK_SEGMENT_BYTES_MAX &&",
        "if (0 &&",
        "test_a_segment_of_size_max",
    ),
    Mutant(
        "size-max-binds-unnegotiated",
        "SIZE_MAX binds only a driver that accepted it (virtio 1.2 5.2.3)",
        "if (req->data[i].iov_len > BLK_SEGMENT_BYTES_MAX &&\n"
        "            blk_negotiated(q, VIRTIO_BLK_F_SIZE_MAX))",
        "if (req->data[i].iov_len > BLK_SEGMENT_BYTES_MAX)",
        "test_seg_max_and_size_max_bind_only_when_negotiated",
        module="tests/test_conformance.py",
    ),
    Mutant(
        "seg-max-binds-unnegotiated",
        "SEG_MAX binds only a driver that accepted it (virtio 1.2 5.2.3)",
        "if (blk_negotiated(q, VIRTIO_BLK_F_SEG_MAX) && req->niov > BLK_SEG_MAX)",
        "if (req->niov > BLK_SEG_MAX)",
        "test_seg_max_and_size_max_bind_only_when_negotiated",
        # Without indirect a chain cannot carry more than seg_max (its default,
        # queue_size - 2) segments: only an indirect spec can show the rule.
        applies=lambda s: s.features.indirect_desc,
        module="tests/test_conformance.py",
    ),
    Mutant(
        "indirect-only-first",
        "an INDIRECT descriptor may follow direct ones (virtio 1.2 2.7.5.3.2)",
        'if (indirect)\n                return "nested indirect table";',
        'if (indirect || total > 1)\n                return "nested indirect table";',
        "test_an_indirect_layout_is_served",
        applies=lambda s: s.features.indirect_desc,
        module="tests/test_conformance.py",
    ),
    Mutant(
        "no-sector-bound",
        "sector range checked against capacity, image never grows",
        "req->sector <= dev->capacity && nsect <= dev->capacity - req->sector",
        "1",
        "test_sector_range_outside_the_disk",
    ),
    Mutant(
        "no-avail-runaway-check",
        "avail index more than a ring ahead: the ring needs a reset",
        "if (pending > q->ring.num) {",
        "if (0) {",
        "test_avail_index_more_than_a_ring_ahead",
    ),
    Mutant(
        "driver-never-told",
        "a broken ring is reported to the core (vhost-user: the connection drops)",
        "if (virtio_dev_needs_reset != NULL)\n        virtio_dev_needs_reset(vdev);",
        "",
        "test_bad_index_or_loop",
    ),
    Mutant(
        "live-ring-trusted",
        "a ring rewritten outside a reset breaks the queue (its validated copy is compared)",
        "return vq->num == r->num &&",
        "return true || vq->num == r->num &&",
        "test_queue_num_enlarged or test_queue_num_shrunk or test_a_ring_moved_by_a_high_write",
        module="tests/test_hostile_hvisor.py",
    ),
    Mutant(
        "no-main-thread-budget",
        "inline: the main thread takes a budget of requests per notify",
        "const bool more = blk_drain(q, BLK_MAIN_BUDGET) >= BLK_MAIN_BUDGET;",
        "const bool more = blk_drain(q, BLK_NO_BUDGET) == 0 && false;",
        "test_a_ring_kicked_once_is_served_a_budget_per_notify",
        applies=lambda s: s.threading.model is ThreadingModel.INLINE,
        module="tests/test_hostile_hvisor.py",
    ),
    Mutant(
        "inline-no-handoff",
        "inline: a pass stopped at its budget hands the rest to the helper",
        "q->backlog = true;\n        pthread_cond_signal(&q->cond);",
        "",
        "test_a_ring_kicked_once_is_served_a_budget_per_notify",
        applies=lambda s: s.threading.model is ThreadingModel.INLINE,
        module="tests/test_hostile_hvisor.py",
    ),
    Mutant(
        "procq-no-handoff",
        "procq: a parse pass stopped at its budget hands the rest to the worker",
        "if (more)\n        q->backlog = true;",
        "",
        "test_a_ring_kicked_once_is_served_a_budget_per_notify",
        applies=lambda s: s.threading.model is ThreadingModel.PROCQ,
        module="tests/test_hostile_hvisor.py",
    ),
    Mutant(
        "split-loses-a-part-error",
        "backend.split_threads: a part that fails fails the request, counted to its gap",
        "if (p->err < 0) {",
        "if (k == 0 && p->err < 0) {",
        "test_a_part_past_the_end_of_a_shrunken_image",
        applies=lambda s: s.backend.splits,
        module="tests/test_split.py",
    ),
    Mutant(
        "split-parts-at-one-offset",
        "backend.split_threads: each part moves its own range of the image",
        "p->off = off + (off_t)start;",
        "p->off = off;",
        "test_reads_across_the_threshold",
        applies=lambda s: s.backend.splits,
        module="tests/test_split.py",
    ),
    Mutant(
        "split-on-one-cpu",
        "backend.split_threads: with one CPU allowed no helper starts",
        "CPU_COUNT(&allowed) < 2",
        "CPU_COUNT(&allowed) < 1",
        "test_with_one_cpu_allowed_no_helper_starts",
        applies=lambda s: s.backend.splits,
        module="tests/test_split.py",
    ),
    Mutant(
        "no-io-uring-fallback",
        "a persistently failing io_uring_enter falls back to synchronous I/O",
        "blk_uring_give_up(q, err);",
        "(void)err;",
        "test_io_uring_enter_failing_for_good_falls_back_to_sync_io",
        applies=lambda s: s.backend.io.asynchronous,
        module="tests/test_features.py",
    ),
)


@dataclass(frozen=True)
class Verdict:
    """What happened to one mutant."""

    mutant: Mutant
    killed: bool
    detail: str


def make_source(original: str, mutant: Mutant) -> str:
    """The mutated source; ValueError unless the text occurs exactly once."""
    count = original.count(mutant.find)
    if count != 1:
        raise ValueError(f"mutant '{mutant.name}': expected 1 match in virtio_blk.c, found {count}")
    return original.replace(mutant.find, mutant.replace)


def _pytest(
    root: Path, spec: str, modules: list[str], tests: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         "--targets", "host", *modules,
         "-k", f"({tests}) and {spec} and host"],
        cwd=root, env={**os.environ, **env}, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip


def cover(root: Path, first: str, names: list[str]) -> list[tuple[str, tuple[Mutant, ...]]]:
    """Every mutant on some spec: first takes all that apply to it, then each
    of names in order those that apply to it and no earlier spec took."""
    plan = []
    left = MUTANTS
    for name in [first, *[n for n in names if n != first]]:
        (model,) = specs(Layout(root), [name])
        mine = tuple(m for m in left if m.applies is None or m.applies(model))
        if mine:
            plan.append((name, mine))
            left = tuple(m for m in left if m not in mine)
    return plan


def run(root: Path, spec: str, mutants: tuple[Mutant, ...] = MUTANTS) -> list[Verdict]:
    """Build and test every mutant of generated/<spec>; one verdict each.

    The selected tests must first pass on the unmutated device, so a failure
    can only come from the removed check.
    """
    generated = root / "generated" / spec
    original = (generated / "virtio_blk.c").read_text()
    (model,) = specs(Layout(root), [spec])
    mutants = tuple(m for m in mutants if m.applies is None or m.applies(model))
    host = load_target("host")
    modules = sorted({m.module for m in mutants})
    baseline = _pytest(root, spec, modules, " or ".join(sorted({m.test for m in mutants})), {})
    if baseline.returncode != 0:
        raise RuntimeError(
            f"the rules' tests fail on the unmutated device:\n{baseline.stdout[-2000:]}"
        )
    verdicts = []
    for mutant in mutants:
        work = root / "build" / "mutants" / spec / mutant.name
        shutil.rmtree(work, ignore_errors=True)
        (work / "src").mkdir(parents=True)
        (work / "src" / "virtio_blk.c").write_text(make_source(original, mutant))
        shutil.copy(generated / "virtio_blk.h", work / "src" / "virtio_blk.h")
        # A removed check can leave a variable unused: warnings stay warnings.
        binary = build(host, work / "src", work / "bin", ("-Wno-error",)).binary
        proc = _pytest(
            root, spec, [mutant.module], mutant.test,
            {"BLKGEN_MUTANT_BINARY": str(binary), "BLKGEN_MUTANT_SPEC": spec},
        )  # fmt: skip
        (work / "pytest.log").write_text(proc.stdout + proc.stderr)
        tail = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
        if proc.returncode == 5:
            raise RuntimeError(f"mutant '{mutant.name}': no test matched '{mutant.test}'")
        verdicts.append(Verdict(mutant, killed=proc.returncode != 0, detail=tail))
    return verdicts
