"""A real Linux guest drives the generated backend (the short CI form of `invoke e2e`).

Debian's kernel with its virtio_blk driver boots under QEMU (TCG, q35,
vhost-user-blk-pci) against the default spec's host build, and fio's verify
job writes 16 MiB with crc32c checksums through io_uring + O_DIRECT and
reads every block back. The guest (kernel, busybox, fio and its libraries)
is prepared once from Debian's archive into the cache outside the repo, so
a fresh machine needs only apt. The smaller parts (cpio, ELF, init, fio
JSON, QEMU command lines) are checked without booting.
"""

from __future__ import annotations

import io
import shutil
import stat
from pathlib import Path

import pytest

from toolchain import project
from toolchain.e2e import cpio, elf, fio, image, qemu, runner

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = project.Layout(ROOT)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None or shutil.which("apt-get") is None,
    reason="needs qemu-system-x86 and apt (invoke setup)",
)
def test_linux_guest_verifies_16_mib_through_the_default_spec(tmp_path: Path) -> None:
    config = runner.E2EConfig(
        spec=project.DEFAULT_SPEC,
        target="host",
        arch="amd64",
        transport="pci",
        jobs=("verify",),
        settings=fio.JobSettings(verify_mib=16),
        image_mib=64,
    )
    out = LAYOUT.build_dir / "test-logs" / "test_e2e"
    shutil.rmtree(out, ignore_errors=True)
    record = runner.run_one(LAYOUT, config, out, lambda line: print(line, flush=True))
    assert record["ok"], f"{record['failures']}; logs in {out}"
    verify = record["jobs"]["verify"]
    assert verify["error"] == 0 and verify["exit_code"] == 0
    assert verify["verify_ran"], "fio did not read back what it wrote"
    written = next(d for d in verify["directions"] if d["rw"] == "write")
    assert written["ios"] * 16 * 1024 == 16 << 20
    assert record["backend_exit"] == 0
    assert record["guest_queues"] == 1 and record["disk_bytes"] == 64 << 20


def test_cpio_newc_entries_are_aligned_and_terminated() -> None:
    buf = io.BytesIO()
    w = cpio.CpioWriter(buf)
    w.directory("etc")
    w.file("etc/x", b"abc", 0o600)
    w.symlink("bin/sh", "busybox")
    w.char_device("dev/console", 5, 1)
    w.close()
    data = buf.getvalue()
    assert len(data) % 4 == 0
    names, pos = [], 0
    while pos < len(data):
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        names.append((name, stat.S_IFMT(mode), size, fields[9:11]))
        pos += 110 + namesize
        pos += -pos % 4
        pos += size + (-size % 4)
    assert names == [
        ("etc", stat.S_IFDIR, 0, [0, 0]),
        ("etc/x", stat.S_IFREG, 3, [0, 0]),
        ("bin/sh", stat.S_IFLNK, 7, [0, 0]),
        ("dev/console", stat.S_IFCHR, 0, [5, 1]),
        ("TRAILER!!!", 0, 0, [0, 0]),
    ]
    with pytest.raises(ValueError, match="twice"):
        w.file("etc/x", b"")


def test_elf_reader_finds_the_interpreter_and_needed_libraries() -> None:
    python = Path(shutil.which("python3") or "/usr/bin/python3").resolve()
    info = elf.read_info(python)
    assert info.machine == elf.EM_X86_64
    libc = next(
        p
        for p in (
            Path("/lib/x86_64-linux-gnu/libc.so.6"),
            Path("/usr/lib/x86_64-linux-gnu/libc.so.6"),
        )
        if p.exists()
    )
    assert elf.read_info(libc).soname == "libc.so.6"


def test_modules_load_after_their_dependencies(tmp_path: Path) -> None:
    order = image.load_order(
        ["blk"],
        {"blk": tmp_path / "blk.ko", "core": tmp_path / "core.ko", "ring": tmp_path / "ring.ko"},
        set(),
        depends={"blk": ["core", "ring"], "core": ["ring"], "ring": []}.__getitem__,
    )
    assert [p.stem for p in order] == ["ring", "core", "blk"]
    with pytest.raises(image.ImageError, match="neither built in"):
        image.load_order(["blk"], {}, set(), depends=lambda name: [])
    assert image.load_order(["blk"], {}, {"blk"}, depends=lambda name: []) == []


def test_fio_json_gives_iops_latency_and_errors() -> None:
    text = (
        'note: both iodepth >= 1 and synchronous I/O engine\n{"jobs": [{"error": 0, '
        '"read": {"total_ios": 100, "iops": 50.0, "bw_bytes": 1048576, "clat_ns": '
        '{"percentile": {"50.000000": 1000, "99.000000": 5000, "99.990000": 9000}}}, '
        '"write": {"total_ios": 100, "iops": 40.0, "bw_bytes": 0, "clat_ns": {}}}]}'
    )
    result = fio.parse_output("verify", text, 0)
    assert result.ok and result.verify_ran
    read = result.directions[0]
    assert (read.rw, read.iops, read.mib_s, read.clat_p99_us) == ("read", 50.0, 1.0, 5.0)
    assert not fio.parse_output("verify", text.replace('"error": 0', '"error": 84'), 1).ok
    with pytest.raises(ValueError):
        fio.parse_jobs("verify,nope")


def test_console_markers_give_each_jobs_output() -> None:
    console = (
        "=====FIO-JSON-BEGIN randread=====\r\n"
        '{"jobs": [{"error": 0,\r\n[   12.5] virtio_blk: noise\r\n'
        '"read": {"total_ios": 3, "iops": 1.0, "bw_bytes": 0}}]}\r\n'
        "=====FIO-JSON-END randread rc=0=====\r\n"
    )
    found = runner.extract_jobs(console, ("randread", "seqread"))
    assert isinstance(found["randread"], fio.JobResult) and found["randread"].ok
    assert isinstance(found["seqread"], str)


def test_qemu_command_lines_share_guest_ram_and_match_the_queues() -> None:
    kernel, initrd = Path("k"), Path("i")
    pci = qemu.argv(
        qemu.Machine("amd64", "pci", "ours", 4, 512), kernel, initrd, "x", socket_path="/s"
    )
    assert "memory-backend-memfd,id=mem,size=512M,share=on" in pci
    assert "vhost-user-blk-pci,chardev=c0,num-queues=4,queue-size=512,disable-legacy=on" in pci
    mmio = qemu.argv(
        qemu.Machine("arm64", "mmio", "builtin", 1, 1024), kernel, initrd, "x", image=Path("d")
    )
    assert mmio[0] == "qemu-system-aarch64" and "virtio-mmio.force-legacy=false" in mmio
    assert "virtio-blk-device,drive=d0,num-queues=1,queue-size=1024" in mmio
    cmdline = qemu.kernel_cmdline(qemu.Machine("amd64", "mmio", "ours", 1), "cpu MHz\t: 2445.428\n")
    assert "tsc_early_khz=2445428" in cmdline and "console=ttyS0" in cmdline
