"""The orderings AArch64 needs are in every spec's rk3588 object.

No emulator here shows AArch64 memory reordering (qemu-user runs on an x86
host, whose stores are never reordered with each other), so the orderings are
checked where they are made: in the instructions the compiler emitted. Each
spec's virtio_blk.c is compiled for rk3588 with the target's own flags plus
``-fno-inline`` (so each function stands alone and the check can name it), and
disassembled:

- ``blk_push_used``: the used element's two stores, then the used index with a
  store-release (``stlrh``), nothing stored after it. A driver that sees the
  index then sees the element, the status and the data (virtio 1.2 2.7.8.2).
- ``blk_notify_guest``: a full barrier (``dmb ish``) before the call into
  ``virtio_inject_irq``, which loads the driver's suppression fields.
- ``blk_notify_on_and_empty``: a full barrier between re-enabling
  notifications and re-reading the avail index (the lost wake-up).

And in the C: the used index is written in exactly one place, never through
hvisor's ``update_used_ring`` (which stores element and index with no barrier
between them, hvisor-api.md section 14).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from toolchain.build import RUNTIME_DIR
from toolchain.project import Layout
from toolchain.targets import load_target

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = Layout(ROOT)
OBJDUMP = "aarch64-linux-gnu-objdump"


def _functions(obj: Path) -> dict[str, list[str]]:
    """Disassembly of obj: function name (no .isra/.constprop suffix) -> instructions."""
    text = subprocess.run(
        [OBJDUMP, "-d", "--no-show-raw-insn", str(obj)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    funcs: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        head = re.match(r"^[0-9a-f]+ <([A-Za-z0-9_]+)(?:\.[a-z]+\.\d+)*>:$", line)
        if head:
            current = funcs.setdefault(head.group(1), [])
            continue
        insn = re.match(r"^\s+[0-9a-f]+:\s+(.*)$", line)
        if insn and current is not None:
            current.append(" ".join(insn.group(1).split()))
    return funcs


@pytest.fixture(scope="module", params=LAYOUT.spec_names())
def disassembly(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(spec, C source, functions of its rk3588 object)."""
    target = load_target("rk3588")
    if shutil.which(target.cc) is None or shutil.which(OBJDUMP) is None:
        pytest.skip(f"needs {target.cc} and {OBJDUMP} (invoke setup installs them)")
    spec = request.param
    generated = LAYOUT.generated_for(spec)
    obj = tmp_path_factory.mktemp(spec) / "virtio_blk.o"
    subprocess.run(
        [target.cc, *target.cflags, "-fno-inline", f"-I{generated}", f"-I{RUNTIME_DIR}",
         "-c", str(generated / "virtio_blk.c"), "-o", str(obj)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return spec, (generated / "virtio_blk.c").read_text(), _functions(obj)


def _stores(insns: list[str]) -> list[str]:
    return [i for i in insns if re.match(r"^(str|strh|strb|stp|stlr|stlrh|stlrb)\b", i)]


def test_the_used_index_is_published_with_a_store_release_after_the_element(
    disassembly: tuple[str, str, dict[str, list[str]]],
) -> None:
    _spec, _source, funcs = disassembly
    stores = _stores(funcs["blk_push_used"])
    assert stores[-1].startswith("stlrh "), stores
    # id and len of the element come before it; the shadow index may too
    assert len([s for s in stores[:-1] if s.startswith("str ")]) >= 2, stores


def test_a_full_barrier_comes_before_virtio_inject_irq(
    disassembly: tuple[str, str, dict[str, list[str]]],
) -> None:
    _spec, _source, funcs = disassembly
    insns = funcs["blk_notify_guest"]
    call = next(k for k, i in enumerate(insns) if i.endswith("<virtio_inject_irq>"))
    assert "dmb ish" in insns[:call], insns


def test_a_full_barrier_separates_enabling_notifications_from_rereading_avail(
    disassembly: tuple[str, str, dict[str, list[str]]],
) -> None:
    _spec, _source, funcs = disassembly
    insns = funcs["blk_notify_on_and_empty"]
    barrier = insns.index("dmb ish")
    assert _stores(insns[:barrier]), "the enabling store comes before the barrier"
    reread = [k for k, i in enumerate(insns) if "<blk_avail_empty>" in i or i.startswith("ldarh")]
    assert reread and min(reread) > barrier, insns


def test_the_used_index_is_written_in_one_place_and_never_by_update_used_ring(
    disassembly: tuple[str, str, dict[str, list[str]]],
) -> None:
    _spec, source, _funcs = disassembly
    assert not re.search(r"\bupdate_used_ring(_batch)?\s*\(", source)
    assert not re.search(r"used(_ring)?->idx\s*=[^=]", source)  # no plain store
    stores = re.findall(r"__atomic_store_n\(&[^,]*used[^,]*->idx,[^;]*;", source)
    assert stores == ["__atomic_store_n(&r->used->idx, r->used_idx, __ATOMIC_RELEASE);"]
