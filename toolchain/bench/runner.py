"""Run backends side by side: for each job, A B peer A B peer ... N runs each.

Every run starts its backend fresh on a shared image in /dev/shm, runs the
load generator against it, reads the backend's CPU time and peak RSS from
/proc, and stops it with SIGTERM (it must exit 0).

Over vhost-user the backend listens and the load generator connects. Over
hvisor the load generator plays hvisor and the guest's vCPU: it makes the
bridge page and the zone's RAM, writes the zone JSON and listens; the
daemon (the project's runtime with ``--hvisor``, or hvisor-tool's own,
built from a tree with the /dev/hvisor stand-in) attaches to it, and every
register access of the guest goes through the daemon's main thread, as on
the board.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from .. import hvisor
from ..bridge import daemon
from ..guest.backend import Backend, BackendError
from ..project import Layout, build_one
from ..targets import load_target
from .jobs import Job, select_jobs
from .loadgen import (
    LoadgenError,
    Timing,
    build_loadgen,
    collect_json,
    memcpy_bandwidth,
    run_json,
    spawn,
)

PEERS = ("qsd",)
TRANSPORTS = ("vhost-user", "hvisor")
BACKEND_CPU = "0"
CLIENT_CPU = "1"
CHUNK = 16 << 20

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchConfig:
    """What one `invoke bench` does."""

    specs: tuple[str, ...]
    target: str = "host"
    jobs: tuple[str, ...] = ()  # empty: every job in jobs.yaml
    runs: int = 3
    seconds: float = 10.0
    warmup: float = 1.0
    peer: str | None = None
    pin: bool = False
    image_mib: int | None = None  # default: 1024 native, 256 emulated
    image_dir: str = "/dev/shm"
    out_dir: Path | None = None  # default: build/bench/<timestamp>/
    command: str = ""
    transport: str = "vhost-user"
    hvisor_trees: tuple[str, ...] = ()  # hvisor-tool checkouts (hvisor transport)

    def check(self) -> None:
        """ValueError for settings that cannot run."""
        if not self.specs:
            raise ValueError("name at least one spec (--spec A --spec B)")
        if len(set(self.specs)) != len(self.specs):
            raise ValueError("each spec may be named once")
        if self.peer is not None and self.peer not in PEERS:
            raise ValueError(f"unknown peer '{self.peer}'; known: {', '.join(PEERS)}")
        if self.runs < 1 or self.seconds <= 0 or self.warmup < 0:
            raise ValueError("runs must be >= 1, seconds > 0, warmup >= 0")
        if self.transport not in TRANSPORTS:
            raise ValueError(
                f"unknown transport '{self.transport}'; known: {', '.join(TRANSPORTS)}"
            )
        if self.hvisor_trees and self.transport != "hvisor":
            raise ValueError(
                "--hvisor-tree runs hvisor-tool's own daemon, which serves only the "
                "hvisor transport: add --transport hvisor"
            )
        if self.peer is not None and self.transport != "vhost-user":
            raise ValueError(
                f"--peer {self.peer}: qemu-storage-daemon serves vhost-user only; "
                "drop --peer or use --transport vhost-user"
            )


Kind = Literal["spec", "peer", "upstream", "daemon"]


@dataclass(frozen=True)
class Contender:
    """A backend in the comparison: one of our specs, the reference peer, or
    hvisor-tool's daemon serving its own pair (``upstream``) or one of our
    specs' (``daemon``)."""

    name: str
    role: str  # "A", "B", ... or "peer"
    kind: Kind
    num_queues: int | None  # None: as many as the job asks for
    argv_prefix: tuple[str, ...] = ()
    binary: str = ""
    env: tuple[tuple[str, str], ...] = ()
    spec: str = ""  # the spec whose pair it serves ("" for the peer and upstream)
    revision: str = ""  # hvisor-tool's, for upstream and daemon

    def describe(self) -> dict[str, Any]:
        """The contender as results.json records it."""
        return {
            "name": self.name,
            "role": self.role,
            "kind": self.kind,
            "num_queues": self.num_queues,
            "binary": self.binary,
            "spec": self.spec,
            "hvisor_tool_revision": self.revision,
        }

    def backend(
        self, image: str, log_dir: Path, name: str, job: Job, pin: bool, world: str = ""
    ) -> Backend:
        """A fresh, unstarted backend process for one run; with ``world`` (a
        directory), the hvisor transport's daemon for that world."""
        cpu = ("taskset", "-c", BACKEND_CPU) if pin else ()
        if world:
            config = os.path.join(world, "zone.json")
            if self.kind == "spec":
                argv = [*cpu, *self.argv_prefix, self.binary, "--hvisor", config]
            else:
                argv = [*cpu, *self.argv_prefix, self.binary, "virtio", "start", config]
            env = {**dict(self.env), "HVISOR_SIM_SOCKET": os.path.join(world, "hvisor.sock")}
            return Backend(argv, "", log_dir, name, own_dir=world, env=env)
        if self.kind == "peer":
            return qsd_backend(image, log_dir, name, job.queues, cpu)
        return Backend.vhost_user_blk(
            self.binary,
            image,
            log_dir,
            prefix=[*cpu, *self.argv_prefix],
            name=name,
            env=dict(self.env),
        )


def qsd_backend(
    image: str, log_dir: Path, name: str, queues: int, prefix: Sequence[str] = ()
) -> Backend:
    """qemu-storage-daemon exporting ``image`` over vhost-user-blk with io_uring."""
    sock_dir = tempfile.mkdtemp(prefix="vub-")
    sock = os.path.join(sock_dir, f"{name}.sock")
    argv = [
        *prefix,
        "qemu-storage-daemon",
        "--blockdev",
        f"driver=file,node-name=f,filename={image},aio=io_uring,cache.direct=off",
        "--export",
        "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,"
        f"addr.path={sock},writable=on,num-queues={queues}",
    ]
    return Backend(argv, sock, log_dir, name, own_dir=sock_dir)


# -- /proc readings ------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid``, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    return ticks / os.sysconf("SC_CLK_TCK")


def proc_status(pid: int, key: str) -> str:
    """One field of /proc/<pid>/status ('' if absent)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return value.strip()
    return ""


def peak_rss_kib(pid: int) -> int:
    """VmHWM of ``pid`` in KiB."""
    value = proc_status(pid, "VmHWM")
    return int(value.split()[0]) if value else 0


def machine_info() -> dict[str, Any]:
    """CPU model, cores, kernel, load."""
    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_model": model,
        "cores": os.cpu_count() or 0,
        "kernel": platform.release(),
        "machine": platform.machine(),
        "load_avg_start": list(os.getloadavg()),
    }


# -- the image -----------------------------------------------------------------


def make_image(directory: str, mib: int) -> Path:
    """A ``mib`` MiB file of random bytes (no holes: reads from holes are cheaper)."""
    fd, name = tempfile.mkstemp(prefix="blkbench-", suffix=".img", dir=directory)
    with os.fdopen(fd, "wb") as f:
        for _ in range(mib * (1 << 20) // CHUNK):
            f.write(os.urandom(CHUNK))
        rest = mib * (1 << 20) % CHUNK
        if rest:
            f.write(os.urandom(rest))
    return Path(name)


# -- runs ----------------------------------------------------------------------


@dataclass
class Plan:
    """Everything fixed before the first run."""

    config: BenchConfig
    layout: Layout
    out_dir: Path
    loadgen: Path
    contenders: list[Contender]
    jobs: list[Job]
    timing: Timing
    image: Path
    image_bytes: int
    runs: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def client_prefix(self) -> list[str]:
        """argv prefix that places the load generator."""
        return ["taskset", "-c", CLIENT_CPU] if self.config.pin else []

    @property
    def placement(self) -> dict[str, Any]:
        """Where the backend and the client ran."""
        if self.config.pin:
            return {"pinned": True, "backend_cpus": BACKEND_CPU, "client_cpus": CLIENT_CPU}
        return {"pinned": False, "backend_cpus": "any", "client_cpus": "any"}


def _daemons(
    layout: Layout, config: BenchConfig, queues: dict[str, int], first_role: int
) -> list[Contender]:
    """hvisor-tool's daemon from every tree with its own pair, then from the first
    tree with each spec's pair (native x86_64 for host, qemu-aarch64 for rk3588)."""
    arch = daemon.ARCH_OF_TARGET.get(config.target)
    if arch is None:
        raise ValueError(f"--hvisor-tree: no hvisor-tool build stands for target {config.target}")
    out: list[Contender] = []
    seen: set[str] = set()

    def add(kind: Kind, name: str, built: daemon.Daemon, spec: str, nq: int | None) -> None:
        while name in seen:  # two trees at one revision
            name += "'"
        seen.add(name)
        role = chr(ord("A") + first_role + len(out))
        runner = tuple(built.arch.runner)
        binary = str(built.binary)
        out.append(Contender(name, role, kind, nq, runner, binary, (), spec, built.revision))

    first: tuple[Path, str] | None = None
    for n, raw in enumerate(config.hvisor_trees):
        tree = Path(raw).expanduser()
        try:
            rev = hvisor.check_tree(tree).revision
            root = layout.build_dir / "bench" / "hvisor-tool" / f"{n}-{rev}"
            built = daemon.build(tree, root, daemon.UPSTREAM, None, arch)
        except (hvisor.HvisorError, daemon.DaemonError) as exc:
            raise ValueError(f"--hvisor-tree {raw}: {exc}") from None
        add("upstream", f"hvisor-tool@{built.revision}", built, "", 1)
        first = first or (tree, f"{n}-{rev}")
    assert first is not None
    for spec in config.specs:
        root = layout.build_dir / "bench" / "hvisor-tool" / first[1]
        try:
            built = daemon.build(first[0], root, spec, layout.generated_for(spec), arch)
        except daemon.DaemonError as exc:
            raise ValueError(f"{spec} in hvisor-tool's daemon: {exc}") from None
        add("daemon", f"{spec}@{built.revision}", built, spec, queues[spec])
    return out


def contenders_for(layout: Layout, config: BenchConfig) -> list[Contender]:
    """Build the specs and describe every contender (roles A, B, C..., then peer)."""
    target = load_target(config.target)
    out: list[Contender] = []
    queues: dict[str, int] = {}
    for i, spec in enumerate(config.specs):
        binary = build_one(layout, spec, config.target).binary
        manifest = json.loads((layout.generated_for(spec) / "manifest.json").read_text())
        queues[spec] = int(manifest["num_queues"])
        out.append(
            Contender(
                name=spec,
                role=chr(ord("A") + i),
                kind="spec",
                num_queues=queues[spec],
                argv_prefix=tuple(target.runner),
                binary=str(binary),
                env=tuple(sorted(target.env.items())),
                spec=spec,
            )
        )
    if config.hvisor_trees:
        out += _daemons(layout, config, queues, len(out))
    if config.peer == "qsd":
        if shutil.which("qemu-storage-daemon") is None:
            raise ValueError("--peer qsd: qemu-storage-daemon is not installed")
        out.append(Contender(name="qsd", role="peer", kind="peer", num_queues=None))
    return out


def _wait_for_world(world: str, loadgen: subprocess.Popen[str], timeout: float) -> None:
    """Until the load generator listens (it writes the zone JSON after)."""
    config = os.path.join(world, "zone.json")
    deadline = time.monotonic() + timeout
    while not os.path.exists(config):
        if loadgen.poll() is not None:
            raise LoadgenError(
                f"loadgen exited {loadgen.returncode} before its world was ready: "
                f"{(loadgen.stderr.read() if loadgen.stderr else '').strip() or '(no message)'}"
            )
        if time.monotonic() > deadline:
            raise LoadgenError(f"loadgen wrote no zone JSON within {timeout:.0f}s")
        time.sleep(0.01)


def run_one(plan: Plan, who: Contender, job: Job, index: int) -> dict[str, Any]:
    """One fresh backend, one loadgen run; a record for results.json."""
    name = f"{who.name}-{job.name}-{index}"
    record: dict[str, Any] = {"backend": who.name, "job": job.name, "index": index, "ok": False}
    hv = plan.config.transport == "hvisor"
    world = tempfile.mkdtemp(prefix="hvb-") if hv else ""  # short: sun_path
    backend = who.backend(str(plan.image), plan.out_dir / "logs", name, job, plan.config.pin, world)
    loadgen: subprocess.Popen[str] | None = None
    argv = [
        *plan.client_prefix,
        str(plan.loadgen),
        *(["--hvisor", world, "--image", str(plan.image)] if hv else ["--socket", "{socket}"]),
        *job.loadgen_args(),
        *plan.timing.args(),
        "--seed",
        str(index + 1),
    ]
    try:
        if hv:  # the load generator is hvisor: it listens, the daemon attaches
            loadgen = spawn(argv)
            _wait_for_world(world, loadgen, 2 * plan.timing.timeout)
            backend.spawn()
        else:
            backend.start()
            argv = [backend.socket_path if a == "{socket}" else a for a in argv]
        pid = backend.pid
        record["backend_comm"] = Path(f"/proc/{pid}/comm").read_text().strip()
        cpu_start = proc_cpu_seconds(pid)
        record["loadgen_command"] = shlex.join(argv)
        if loadgen is not None:
            data = collect_json(loadgen, plan.timing.wall_limit)
        else:
            data = run_json(argv, plan.timing.wall_limit)
        if not backend.alive():
            raise BackendError(f"{who.name} died during the run; see {backend.log_path}")
        record["backend_cpu_s"] = proc_cpu_seconds(pid) - cpu_start
        record["peak_rss_kib"] = peak_rss_kib(pid)
        record.update(metrics_of(data, record["backend_cpu_s"]))
        record["loadgen"] = data
        record["ok"] = True
    except (BackendError, LoadgenError, OSError) as exc:
        record["error"] = str(exc)
    finally:
        if loadgen is not None and loadgen.poll() is None:
            loadgen.kill()
            loadgen.communicate()
        code = backend.stop()
        backend.cleanup()
    record["exit_code"] = code
    if code != 0 and record["ok"]:
        record["ok"] = False
        record["error"] = f"{who.name} exited {code} on SIGTERM; see {backend.log_path}"
    if record["ok"] and record["errors"]:
        record["ok"] = False
        record["error"] = f"{record['errors']} request(s) completed with a status other than OK"
    return record


def metrics_of(data: dict[str, Any], backend_cpu_s: float) -> dict[str, Any]:
    """The per-run metrics the summary is made of."""
    lat = data["latency_us"]
    total = int(data["total_ios"])
    return {
        "iops": float(data["iops"]),
        "mib_s": float(data["mib_s"]),
        "lat_p50_us": float(lat["p50"]),
        "lat_p99_us": float(lat["p99"]),
        "lat_p99_99_us": float(lat["p99_99"]),
        "lat_max_us": float(lat["max"]),
        "ios": int(data["ios"]),
        "total_ios": total,
        "errors": int(data["errors"]),
        "cpu_s_per_mreq": backend_cpu_s / total * 1e6 if total else 0.0,
        "kicks_per_io": float(data["kicks_per_io"]),
        "interrupts_per_io": float(data["interrupts_per_io"]),
        "client_cpu_s": float(data["client_cpu_s"]),
    }


def progress_line(record: dict[str, Any], n: int, total: int, runs: int) -> str:
    """One line per run for the terminal."""
    head = (
        f"[{n:>3}/{total}] {record['job']:<22} {record['backend']:<12} "
        f"run {record['index'] + 1}/{runs}  "
    )
    if not record["ok"]:
        return head + f"FAILED: {record.get('error', '?')}"
    return head + (
        f"{record['iops'] / 1000:8.1f}k IOPS {record['mib_s']:9.1f} MiB/s  "
        f"p99 {record['lat_p99_us']:8.1f} us  cpu {record['cpu_s_per_mreq']:6.2f} s/M  "
        f"rss {record['peak_rss_kib'] / 1024:6.1f} MiB"
    )


def plan_bench(layout: Layout, config: BenchConfig, progress: Progress) -> Plan:
    """Build everything, make the image; nothing has run yet."""
    config.check()
    jobs = select_jobs(list(config.jobs) or None)
    loadgen = build_loadgen(layout.build_dir).binary
    contenders = contenders_for(layout, config)
    emulated = load_target(config.target).emulated
    mib = config.image_mib or (256 if emulated else 1024)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out_dir = config.out_dir or layout.build_dir / "bench" / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    progress(f"image: {mib} MiB of random data in {config.image_dir}")
    image = make_image(config.image_dir, mib)
    timing = Timing(seconds=config.seconds, warmup=config.warmup, timeout=10 if emulated else 5)
    return Plan(config, layout, out_dir, loadgen, contenders, jobs, timing, image, mib << 20)


def execute(plan: Plan, progress: Progress) -> None:
    """Alternate contenders run by run, job by job."""
    todo: list[tuple[Job, int, Contender]] = []
    hv = plan.config.transport == "hvisor"
    for job in plan.jobs:
        runnable = []
        for who in plan.contenders:
            if hv and job.queues > 1:
                note = f"the hvisor guest drives one queue; the job needs {job.queues}"
            elif who.num_queues is not None and job.queues > who.num_queues:
                note = f"{who.name} serves {who.num_queues} queue(s); the job needs {job.queues}"
            else:
                runnable.append(who)
                continue
            plan.skipped.append({"backend": who.name, "job": job.name, "reason": note})
            progress(f"skip  {job.name:<22} {who.name:<12} ({note})")
        for i in range(plan.config.runs):
            todo += [(job, i, who) for who in runnable]
    for n, (job, i, who) in enumerate(todo, 1):
        record = run_one(plan, who, job, i)
        plan.runs.append(record)
        progress(progress_line(record, n, len(todo), plan.config.runs))


def run_bench(layout: Layout, config: BenchConfig, progress: Progress = print) -> Path:
    """The whole benchmark; returns the output directory."""
    from .report import write_outputs

    plan = plan_bench(layout, config, progress)
    if config.runs < 2:
        progress(
            "warning: one run per backend and job: the report cannot tell a difference "
            "from noise (use --runs 3 or more)"
        )
    started = time.time()
    try:
        memcpy = memcpy_bandwidth(plan.loadgen, plan.client_prefix)
        progress(f"memcpy, 1 MiB blocks, one core: {memcpy['gib_s']:.2f} GiB/s")
        machine = machine_info()
        execute(plan, progress)
        machine["load_avg_end"] = list(os.getloadavg())
    finally:
        plan.image.unlink(missing_ok=True)
    write_outputs(plan, machine, memcpy, started)
    if config.out_dir is None:  # build/bench/<timestamp>/: build/bench/latest follows it
        point_latest(plan.out_dir)
    return plan.out_dir


def point_latest(out: Path) -> None:
    """<parent>/latest -> the newest run's folder (replaced atomically)."""
    link = out.parent / "latest"
    tmp = out.parent / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(out.name)
    os.replace(tmp, link)
