"""The guest: Debian's kernel and an initramfs with busybox, fio and the virtio modules.

Prepared once per architecture into the cache (see `debian.cache_root`):
``<cache>/<arch>/guest/`` holds the kernel, ``base.cpio`` (busybox-static,
fio and every shared library it loads, the virtio modules and their load
order) and ``manifest.json`` (package versions, module order). A run adds a
small cpio of its own (the init script and fio job files, see `run_cpio`)
after the base one; the kernel unpacks both.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import debian, elf
from .cpio import CpioWriter

# Bump when what goes into the cached guest changes; a cache of another
# recipe is rebuilt (from the downloaded .debs, without apt when they match).
RECIPE = 1
# The drivers the guest needs; their dependencies come from .modinfo.
WANTED_MODULES = ("virtio_pci", "virtio_mmio", "virtio_blk")
BUSYBOX_PACKAGE = "busybox-static"
FIO_PACKAGE = "fio"

Progress = Callable[[str], None]


class ImageError(RuntimeError):
    """The guest's kernel or initramfs cannot be prepared."""


@dataclass(frozen=True)
class GuestImage:
    """A prepared guest: kernel, base initramfs, and what they were made of."""

    arch: debian.Arch
    kernel: Path
    base_cpio: Path
    manifest: dict[str, Any]

    @property
    def modules(self) -> list[str]:
        """Module names in load order."""
        return list(self.manifest["modules"])


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare(arch_name: str, progress: Progress, cache: Path | None = None) -> GuestImage:
    """The cached guest for an architecture, made first if missing or of an older recipe."""
    guest = debian.arch(arch_name)
    root = (cache or debian.cache_root()) / guest.name
    out = root / "guest"
    with _locked(root / "lock"):
        found = _cached(guest, out)
        if found is not None:
            return found
        progress(f"preparing the {guest.name} guest (once) in {out}")
        debian.ensure_architecture(guest, progress)
        packages = debian.PackageCache(root, guest, progress)
        kernel_pkg = debian.current_kernel(guest)
        packages.download([f"{kernel_pkg}:{guest.name}", f"{BUSYBOX_PACKAGE}:{guest.name}"])
        tmp = root / "guest.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        kernel, modules = _kernel(packages, kernel_pkg, tmp)
        fio = debian.resolve_libraries(packages, FIO_PACKAGE, "/usr/bin/fio")
        busybox = packages.unpack(BUSYBOX_PACKAGE) / "bin" / "busybox"
        if elf.read_info(busybox).interpreter is not None:
            raise ImageError(f"{busybox} is not static")
        order = [m.stem for m in modules]
        with (tmp / "base.cpio").open("wb") as f:
            w = CpioWriter(f)
            _base_tree(w, guest, busybox, fio, packages.trees / FIO_PACKAGE, modules)
            w.file("etc/e2e/modules", "".join(f"{m}\n" for m in order).encode())
            w.close()
        manifest: dict[str, Any] = {
            "recipe": RECIPE,
            "arch": guest.name,
            "kernel_package": kernel_pkg,
            "kernel_version": packages.version(kernel_pkg),
            "busybox": packages.version(BUSYBOX_PACKAGE),
            "fio": packages.version(FIO_PACKAGE),
            "libraries": fio.packages,
            "modules": order,
            "kernel": kernel.name,
            "base_cpio_bytes": (tmp / "base.cpio").stat().st_size,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        progress(
            f"guest ready: {kernel_pkg} {manifest['kernel_version']}, fio {manifest['fio']}, "
            f"initramfs {manifest['base_cpio_bytes'] >> 20} MiB"
        )
        found = _cached(guest, out)
        assert found is not None
        return found


def _cached(guest: debian.Arch, out: Path) -> GuestImage | None:
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    kernel = out / str(manifest.get("kernel", ""))
    if manifest.get("recipe") != RECIPE or not kernel.is_file():
        return None
    if not (out / "base.cpio").is_file():
        return None
    return GuestImage(guest, kernel, out / "base.cpio", manifest)


def _kernel(packages: debian.PackageCache, kernel_pkg: str, out: Path) -> tuple[Path, list[Path]]:
    """The kernel image (uncompressed if gzip) and the wanted .ko files in load order."""
    tree = packages.unpack(
        kernel_pkg,
        members=[
            "./boot/vmlinuz-*",
            "./lib/modules/*/modules.builtin",
            "./lib/modules/*/kernel/drivers/virtio/*.ko",
            "./lib/modules/*/kernel/drivers/block/virtio_blk.ko",
        ],
    )
    (vmlinuz,) = sorted((tree / "boot").glob("vmlinuz-*"))
    data = vmlinuz.read_bytes()
    if data[:2] == b"\x1f\x8b":  # an arm64 Image.gz: QEMU's -kernel wants it plain
        data = gzip.decompress(data)
    kernel = out / "kernel"
    kernel.write_bytes(data)
    (mod_root,) = sorted((tree / "lib" / "modules").iterdir())
    builtin = {
        Path(line.strip()).name.removesuffix(".ko").replace("-", "_")
        for line in (mod_root / "modules.builtin").read_text().splitlines()
    }
    available = {p.stem.replace("-", "_"): p for p in mod_root.rglob("*.ko")}
    return kernel, load_order(WANTED_MODULES, available, builtin)


def load_order(
    wanted: tuple[str, ...] | list[str],
    available: dict[str, Path],
    builtin: set[str],
    depends: Callable[[str], list[str]] | None = None,
) -> list[Path]:
    """The .ko files for `wanted` and their dependencies, each after what it needs.

    Built-in drivers need no loading; a driver neither built in nor
    available is an error. `depends` (default: the .ko's .modinfo) names a
    module's dependencies.
    """

    def modinfo_depends(name: str) -> list[str]:
        return elf.module_depends(available[name])

    deps = depends or modinfo_depends
    order: list[Path] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in builtin or state.get(name) == "done":
            return
        if state.get(name) == "active":
            raise ImageError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        if name not in available:
            raise ImageError(f"module {name} is neither built in nor in the kernel package")
        state[name] = "active"
        for dep in deps(name):
            visit(dep.replace("-", "_"), (*chain, name))
        state[name] = "done"
        order.append(available[name])

    for name in wanted:
        visit(name, ())
    return order


def _base_tree(
    w: CpioWriter,
    guest: debian.Arch,
    busybox: Path,
    fio: debian.Resolved,
    fio_tree: Path,
    modules: list[Path],
) -> None:
    for d in ("bin", "sbin", "dev", "proc", "sys", "tmp", "etc", "etc/e2e", "root", "mnt"):
        w.directory(d)
    for d in ("usr", "usr/bin", "usr/sbin", "lib", "lib/modules"):
        w.directory(d)
    w.char_device("dev/console", 5, 1)
    w.char_device("dev/null", 1, 3, 0o666)
    w.copy("bin/busybox", busybox, 0o755)
    w.symlink("bin/sh", "busybox")
    w.copy("usr/bin/fio", fio_tree / "usr" / "bin" / "fio", 0o755)
    loader = fio.interpreter_path.lstrip("/")  # where fio's PT_INTERP points
    if loader != f"lib/{Path(loader).name}" or Path(loader).name not in fio.libraries:
        if Path(loader).parent != Path("lib"):
            w.directory(str(Path(loader).parent))
        w.copy(loader, fio.interpreter, 0o755)
    for name, path in fio.libraries.items():
        w.copy(f"lib/{name}", path, 0o755)
    for ko in modules:
        w.copy(f"lib/modules/{ko.stem}.ko", ko, 0o644)


MARK = "====="
INIT_TEMPLATE = r"""#!/bin/sh
# hvisor-blkgen e2e guest init, written for one run: load the virtio modules,
# find the disk, run the fio jobs, print their JSON between markers, power off.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin LD_LIBRARY_PATH=/lib
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "=====$*====="; }
fail() {
    say "E2E-ERROR $*"
    dmesg | tail -n 60
    sync
    poweroff -f
    sleep 60
}
say "E2E-INIT uptime=$(cut -d' ' -f1 /proc/uptime)"
# Debian's virtio drivers are modules: busybox insmod does not read
# virtio_mmio.device= from the command line (modprobe would), so pass it on.
mmio=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in virtio_mmio.*) mmio="$mmio ${arg#virtio_mmio.}" ;; esac
done
for m in $(cat /etc/e2e/modules); do
    params=""
    [ "$m" = virtio_mmio ] && params="$mmio"
    insmod "/lib/modules/$m.ko" $params || fail "insmod $m failed"
done
i=0
while [ ! -b /dev/vda ]; do
    i=$((i + 1))
    [ "$i" -gt @WAIT_TENTHS@ ] && fail "no /dev/vda after @WAIT_S@ s"
    sleep 0.1
done
bytes=$(($(cat /sys/block/vda/size) * 512))
queues=$(ls /sys/block/vda/mq | wc -l)
say "E2E-BOOTED bytes=$bytes queues=$queues cpus=$(nproc) uptime=$(cut -d' ' -f1 /proc/uptime)"
for job in @JOBS@; do
    say "FIO-START $job"
    fio --output-format=json --output="/tmp/$job.json" "/etc/e2e/$job.fio" >"/tmp/$job.out" 2>&1
    rc=$?
    say "FIO-JSON-BEGIN $job"
    cat "/tmp/$job.json"
    say "FIO-JSON-END $job rc=$rc"
    [ "$rc" -eq 0 ] || { cat "/tmp/$job.out"; dmesg | tail -n 30; }
done
sync
say "E2E-DONE uptime=$(cut -d' ' -f1 /proc/uptime)"
poweroff -f
sleep 60
"""


def init_script(jobs: tuple[str, ...], disk_wait_s: int) -> str:
    """The guest's /init for these jobs; the disk must appear within disk_wait_s."""
    return (
        INIT_TEMPLATE.replace("@JOBS@", " ".join(jobs))
        .replace("@WAIT_TENTHS@", str(disk_wait_s * 10))
        .replace("@WAIT_S@", str(disk_wait_s))
    )


def run_initramfs(base: GuestImage, out: Path, init: str, job_files: dict[str, str]) -> Path:
    """base.cpio followed by a cpio of this run's /init and fio job files, at `out`."""
    with out.open("wb") as f:
        with base.base_cpio.open("rb") as src:
            shutil.copyfileobj(src, f, 1 << 20)
        w = CpioWriter(f)
        w.file("init", init.encode(), 0o755)
        for name, text in job_files.items():
            w.file(f"etc/e2e/{name}.fio", text.encode())
        w.close()
    return out
