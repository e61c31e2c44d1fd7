"""Run a real Linux guest against a backend: boot, fio, results.

One run: build the backend (for `peer=ours`), take the cached guest (see
`image.prepare`), make a fresh image in /dev/shm, start the backend, boot
QEMU under `nice`, follow the serial console for the init's markers, parse
fio's JSON, stop QEMU and the backend by their PIDs, and write everything to
the run's directory. Every wait is bounded; timeouts grow for an arm64 guest
(TCG) and for a backend under qemu-aarch64.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from ..guest.backend import Backend, BackendError
from ..proc import stop
from ..project import Layout, build_one, specs
from ..targets import load_target
from ..tools import require
from . import fio, image, qemu
from .fio import JobResult, JobSettings

Progress = Callable[[str], None]
MARKER = re.compile(r"=====([A-Z0-9-]+)(.*?)=====\s*$")
KERNEL_LINE = re.compile(r"^\[\s*\d+\.\d+\]")
CHUNK = 16 << 20


class E2EError(RuntimeError):
    """The run could not be set up (nothing to report yet)."""


@dataclass(frozen=True)
class E2EConfig:
    """One guest boot: which backend, which machine, which jobs."""

    spec: str = "virtio-blk"
    target: str = "host"
    arch: str = "amd64"
    transport: str = "pci"
    peer: str = "ours"
    jobs: tuple[str, ...] = fio.JOB_NAMES
    settings: JobSettings = field(default_factory=JobSettings)
    image_mib: int = 256
    cpus: int = 2
    memory_mib: int = 512
    nice: int = 10
    image_dir: str = "/dev/shm"

    @property
    def label(self) -> str:
        """A short name for the run (its directory)."""
        who = f"{self.spec}@{self.target}" if self.peer == "ours" else self.peer
        return f"{who}-{self.arch}-{self.transport}"

    @property
    def scale(self) -> float:
        """How much slower than an amd64 guest with a native backend this run may be."""
        s = 6.0 if self.arch == "arm64" else 1.0
        if self.peer == "ours" and load_target(self.target).emulated:
            s *= 1.5
        return s

    def check(self) -> None:
        """ValueError for settings that cannot run."""
        qemu.Machine(
            self.arch, self.transport, self.peer, 1, 128, self.memory_mib, self.cpus
        ).check()
        fio.parse_jobs(self.jobs)
        load_target(self.target)
        if self.image_mib < 64 or self.settings.verify_mib > self.image_mib:
            raise ValueError("the image must be >= 64 MiB and hold the verify region")


@dataclass
class Console:
    """The guest's serial output, followed by a thread: log file plus marker times."""

    log: IO[bytes]
    start: float
    markers: list[tuple[float, str, str]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    closed: bool = False

    def follow(self, stream: IO[bytes]) -> None:
        """Read lines until EOF (QEMU exited)."""
        for raw in iter(stream.readline, b""):
            self.log.write(raw)
            self.log.flush()
            line = raw.decode(errors="replace")
            for m in MARKER.finditer(line.rstrip("\r\n")):
                with self.changed:
                    self.markers.append((time.monotonic() - self.start, m.group(1), m.group(2)))
                    self.changed.notify_all()
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def find(self, name: str, arg: str = "") -> tuple[float, str] | None:
        """(seconds since QEMU started, arguments) of the first such marker."""
        with self.changed:
            for t, n, args in self.markers:
                if n == name and (not arg or args.split()[:1] == [arg]):
                    return t, args.strip()
        return None

    def error(self) -> str | None:
        """The init's E2E-ERROR message, if it printed one."""
        found = self.find("E2E-ERROR")
        return found[1] if found else None


def _kv(args: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in args.split() if "=" in item)


def fill_image(path: Path, mib: int) -> None:
    """A fresh image of random bytes (so reads move real data)."""
    with path.open("wb") as f:
        left = mib << 20
        while left:
            n = min(CHUNK, left)
            f.write(os.urandom(n))
            left -= n


def extract_jobs(console_text: str, jobs: tuple[str, ...]) -> dict[str, JobResult | str]:
    """Each job's parsed fio output from the console, or why it is missing."""
    text = console_text.replace("\r", "")
    out: dict[str, JobResult | str] = {}
    for job in jobs:
        m = re.search(
            rf"=====FIO-JSON-BEGIN {job}=====\n(.*?)=====FIO-JSON-END {job} rc=(\d+)=====",
            text,
            re.S,
        )
        if m is None:
            out[job] = "no output (the guest did not finish the job)"
            continue
        body = "\n".join(ln for ln in m.group(1).splitlines() if not KERNEL_LINE.match(ln))
        try:
            out[job] = fio.parse_output(job, body, int(m.group(2)))
        except ValueError as exc:
            out[job] = f"unreadable fio output (exit {m.group(2)}): {exc}"
    return out


MMIO_QUEUE_SIZE = 1024  # QEMU's virtio-mmio always offers VIRTQUEUE_MAX_SIZE as QueueNumMax


def mmio_variant(layout: Layout, spec: str) -> tuple[Layout, str]:
    """The spec with device.queue_size raised to 1024, generated and built under
    build/e2e/mmio-specs/ (never in generated/).

    QEMU's virtio-mmio transport answers QueueNumMax with 1024 whatever the
    device's queue-size, so the Linux driver sets up 1024-entry rings, which a
    backend whose QueueNumMax is smaller refuses (SET_VRING_NUM). hvisor's own
    virtio-mmio transport offers the device's QueueNumMax; only the QEMU
    frontend needs this.
    """
    import yaml

    from ..project import generate

    scratch = Layout(layout.build_dir / "e2e" / "mmio-specs")
    scratch.spec_dir.mkdir(parents=True, exist_ok=True)
    if not scratch.template_dir.exists():
        scratch.template_dir.symlink_to(layout.template_dir)
    data = yaml.safe_load(layout.spec_files([spec])[0].read_text()) or {}
    data.setdefault("device", {})["queue_size"] = MMIO_QUEUE_SIZE
    data["description"] = f"{data.get('description', spec)} (e2e mmio: queue_size 1024)"
    target = scratch.spec_dir / f"{spec}.yaml"
    text = yaml.safe_dump(data, sort_keys=False)
    if not target.exists() or target.read_text() != text:
        target.write_text(text)
    generate(scratch, [spec], check=False)
    return scratch, spec


def _start_backend(
    layout: Layout, config: E2EConfig, img: Path, run_dir: Path, num_queues: int
) -> Backend | None:
    nice = ["nice", "-n", str(config.nice)]
    if config.peer == "builtin":
        return None
    if config.peer == "qsd":
        be = Backend.qemu_storage_daemon(
            str(img), run_dir, num_queues=num_queues, binary=require("qemu-storage-daemon")
        )
        be.argv = [*nice, *be.argv]
        return be
    target = load_target(config.target)
    for tool in target.runner:
        require(tool)
    if config.transport == "mmio":
        layout, _ = mmio_variant(layout, config.spec)
    binary = build_one(layout, config.spec, config.target).binary
    return Backend.vhost_user_blk(
        str(binary), str(img), run_dir, prefix=[*nice, *target.runner], env=dict(target.env)
    )


def run_one(layout: Layout, config: E2EConfig, run_dir: Path, progress: Progress) -> dict[str, Any]:
    """Boot the guest once; the record written to run_dir/result.json ('ok' says if it passed)."""
    config.check()
    (spec,) = specs(layout, [config.spec])
    num_queues = spec.device.num_queues
    machine = qemu.Machine(
        config.arch,
        config.transport,
        config.peer,
        num_queues,
        MMIO_QUEUE_SIZE if config.transport == "mmio" else min(spec.device.queue_size, 1024),
        config.memory_mib,
        config.cpus,
    )
    qemu_bin = require(qemu.QEMU_BINARY[config.arch])
    guest = image.prepare(config.arch, progress)
    run_dir.mkdir(parents=True, exist_ok=True)
    scale = config.scale
    s = config.settings
    boot_timeout = 120.0 * scale
    job_timeout = {
        "verify": (60.0 + 2.0 * s.verify_mib) * scale,
        "randread": (60.0 + s.runtime_s) * scale,
        "seqread": (60.0 + s.runtime_s) * scale,
    }
    init = image.init_script(config.jobs, disk_wait_s=int(30 * scale))
    job_files = {j: fio.job_file(j, s) for j in config.jobs}
    (run_dir / "init").write_text(init)
    for name, text in job_files.items():
        (run_dir / f"{name}.fio").write_text(text)
    cpuinfo = Path("/proc/cpuinfo").read_text()
    record: dict[str, Any] = {
        "config": {
            **asdict(config),
            "label": config.label,
            "num_queues": num_queues,
            "queue_size": machine.queue_size,
        },
        "guest": {k: guest.manifest[k] for k in ("kernel_package", "kernel_version", "fio")},
        "failures": [],
    }
    failures: list[str] = record["failures"]
    work = Path(tempfile.mkdtemp(prefix="e2e-", dir=config.image_dir))
    backend: Backend | None = None
    proc: subprocess.Popen[bytes] | None = None
    console_log = (run_dir / "console.log").open("wb")
    try:
        img = work / "disk.img"
        fill_image(img, config.image_mib)
        initrd = image.run_initramfs(guest, work / "initrd.cpio", init, job_files)
        backend = _start_backend(layout, config, img, run_dir, num_queues)
        if backend is not None:
            backend.start()
            record["backend_cmd"] = shlex.join(backend.argv)
        cmd = qemu.argv(
            machine,
            guest.kernel,
            initrd,
            qemu.kernel_cmdline(machine, cpuinfo),
            socket_path=backend.socket_path if backend else None,
            image=img,
        )
        cmd = ["nice", "-n", str(config.nice), qemu_bin, *cmd[1:]]
        record["qemu_cmd"] = shlex.join(cmd)
        (run_dir / "qemu.cmd").write_text(record["qemu_cmd"] + "\n")
        progress(f"booting {config.label}: {', '.join(config.jobs)}")
        start = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        console = Console(console_log, start)
        assert proc.stdout is not None
        reader = threading.Thread(target=console.follow, args=(proc.stdout,), daemon=True)
        reader.start()
        _follow(config, console, proc, backend, boot_timeout, job_timeout, record, progress)
        record["wall_s"] = round(time.monotonic() - start, 2)
        if proc.poll() is None:
            # The init powers off after E2E-DONE; a guest that did not is stopped.
            try:
                proc.wait(timeout=20.0 * scale)
            except subprocess.TimeoutExpired:
                record["qemu_stopped"] = True
        stop(proc)
        reader.join(timeout=10)
        record["qemu_exit"] = proc.returncode
    except (BackendError, OSError, ValueError) as exc:
        failures.append(f"setup: {exc}")
    finally:
        if proc is not None:
            stop(proc)
        if backend is not None:
            code = backend.stop(timeout=10.0 * scale)
            backend.cleanup()
            record["backend_exit"] = code
            if code != 0:
                failures.append(
                    f"backend exited with {code} after SIGTERM; see {backend.log_path.name}"
                )
        console_log.close()
        shutil.rmtree(work, ignore_errors=True)
    _collect_jobs(config, run_dir, record, failures)
    record["ok"] = not failures
    (run_dir / "result.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _follow(
    config: E2EConfig,
    console: Console,
    proc: subprocess.Popen[bytes],
    backend: Backend | None,
    boot_timeout: float,
    job_timeout: dict[str, float],
    record: dict[str, Any],
    progress: Progress,
) -> None:
    """Wait, bounded, for each marker in turn; failures go into the record."""
    failures: list[str] = record["failures"]

    def wait_for(name: str, arg: str, timeout: float) -> tuple[float, str] | None:
        deadline = time.monotonic() + timeout
        while True:
            found = console.find(name, arg)
            if found is not None:
                return found
            problem = console.error()
            if problem is not None:
                failures.append(f"guest: {problem}")
                return None
            if backend is not None and not backend.alive():
                code = backend.proc.returncode if backend.proc else None
                failures.append(f"backend died during the run (exit {code})")
                return None
            if console.closed or proc.poll() is not None:
                failures.append(f"QEMU exited ({proc.wait()}) before {name} {arg}".rstrip())
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                failures.append(
                    f"timeout: no {name} {arg} within {timeout:.0f}s".replace("  ", " ")
                )
                return None
            with console.changed:
                console.changed.wait(timeout=min(left, 0.5))

    booted = wait_for("E2E-BOOTED", "", boot_timeout)
    init = console.find("E2E-INIT")
    if init is not None:
        record["init_s"] = round(init[0], 2)
    if booted is None:
        return
    info = _kv(booted[1])
    record["boot_s"] = round(booted[0], 2)
    record["guest_uptime_at_boot_s"] = float(info.get("uptime", "nan"))
    record["disk_bytes"] = int(info.get("bytes", "0"))
    record["guest_queues"] = int(info.get("queues", "0"))
    record["guest_cpus"] = int(info.get("cpus", "0"))
    progress(
        f"  booted in {booted[0]:.1f}s (guest sees {record['disk_bytes'] >> 20} MiB, "
        f"{record['guest_queues']} queue(s))"
    )
    expected_queues = min(record["config"]["num_queues"], record["guest_cpus"])
    if record["guest_queues"] != expected_queues:
        failures.append(
            f"the guest's virtio_blk uses {record['guest_queues']} queue(s), "
            f"expected {expected_queues}"
        )
    if record["disk_bytes"] != config.image_mib << 20:
        failures.append(f"the guest sees {record['disk_bytes']} bytes, not {config.image_mib} MiB")
    for job in config.jobs:
        end = wait_for("FIO-JSON-END", job, job_timeout[job])
        if end is None:
            return
        progress(f"  {job}: done at {end[0]:.1f}s ({end[1]})")
    wait_for("E2E-DONE", "", 30.0 * config.scale)


def _collect_jobs(
    config: E2EConfig, run_dir: Path, record: dict[str, Any], failures: list[str]
) -> None:
    log = run_dir / "console.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    results: dict[str, Any] = {}
    for job, found in extract_jobs(text, config.jobs).items():
        if isinstance(found, str):
            results[job] = {"name": job, "ok": False, "problem": found}
            if not any(f.startswith(("timeout", "QEMU", "guest", "backend")) for f in failures):
                failures.append(f"{job}: {found}")
            continue
        (run_dir / f"fio-{job}.json").write_text(json.dumps(found.raw, indent=2) + "\n")
        results[job] = found.as_dict()
        if not found.ok:
            failures.append(f"{job}: fio exit {found.exit_code}, error {found.error}")
        if job == "verify" and found.ok and not found.verify_ran:
            failures.append("verify: fio did not read back what it wrote")
    record["jobs"] = results


@dataclass(frozen=True)
class RunSet:
    """Several runs written under one directory, with one table."""

    out: Path
    records: list[dict[str, Any]]

    @property
    def ok(self) -> bool:
        """Every run passed."""
        return all(r["ok"] for r in self.records)


def new_out_dir(layout: Layout) -> Path:
    """build/e2e/<UTC timestamp>/"""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = layout.build_dir / "e2e" / stamp
    n = 1
    while out.exists():
        n += 1
        out = layout.build_dir / "e2e" / f"{stamp}-{n}"
    out.mkdir(parents=True)
    return out


def run_many(
    layout: Layout,
    configs: list[E2EConfig],
    progress: Progress,
    command: str = "",
    out: Path | None = None,
) -> RunSet:
    """Run each config in turn (one guest at a time) into out/<label>/; results.json + report."""
    from .report import report_markdown

    for c in configs:
        c.check()
    out = out or new_out_dir(layout)
    records = []
    for c in configs:
        record = run_one(layout, c, out / c.label, progress)
        records.append(record)
        state = "ok" if record["ok"] else "FAILED: " + "; ".join(record["failures"])
        progress(f"  {c.label}: {state}")
    summary = {
        "command": command,
        "started": out.name,
        "ok": all(r["ok"] for r in records),
        "runs": records,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(records, command))
    return RunSet(out, records)


def matrix_configs(
    base: E2EConfig, arches: tuple[str, ...] = ("amd64", "arm64")
) -> list[E2EConfig]:
    """The matrix: default + procq specs on amd64 {pci, mmio} (host build) and arm64
    {pci, mmio} (rk3588 build under qemu-aarch64), and the qsd and builtin peers on
    each machine and transport."""
    configs = []
    for arch in arches:
        target = "host" if arch == "amd64" else "rk3588"
        for transport in qemu.TRANSPORTS:
            for spec in ("virtio-blk", "procq"):
                configs.append(
                    replace(base, spec=spec, target=target, arch=arch, transport=transport)
                )
            for peer in ("qsd", "builtin"):
                configs.append(
                    replace(
                        base,
                        spec="virtio-blk",
                        target=target,
                        arch=arch,
                        transport=transport,
                        peer=peer,
                    )
                )
    return configs
