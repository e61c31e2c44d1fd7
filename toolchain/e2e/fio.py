"""The fio jobs the guest runs, and what their JSON output says.

Every job reads or writes /dev/vda with the io_uring engine and O_DIRECT.
`verify` writes a region with crc32c checksums and reads it all back
(fio counts a bad block as an error); `randread` and `seqread` are timed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

JOB_NAMES = ("verify", "randread", "seqread")
DEVICE = "/dev/vda"


@dataclass(frozen=True)
class JobSettings:
    """Sizes and times of the jobs (kept small enough for a TCG guest)."""

    verify_mib: int = 64
    runtime_s: int = 5
    read_span_mib: int = 0  # 0: the whole device


def job_file(name: str, settings: JobSettings) -> str:
    """The fio job file for a job name (ValueError if unknown)."""
    common = [
        "[global]",
        f"filename={DEVICE}",
        "ioengine=io_uring",
        "direct=1",
        "numjobs=1",
        "group_reporting=1",
        "percentile_list=50:99:99.99",
    ]
    span = [f"size={settings.read_span_mib}m"] if settings.read_span_mib else []
    timed = ["time_based=1", f"runtime={settings.runtime_s}"]
    jobs = {
        "verify": [
            "[verify]",
            "rw=randwrite",
            "bs=16k",
            "iodepth=16",
            f"size={settings.verify_mib}m",
            "verify=crc32c",
            "do_verify=1",
            "verify_fatal=1",
            "verify_dump=0",
        ],
        "randread": ["[randread]", "rw=randread", "bs=4k", "iodepth=64", *span, *timed],
        "seqread": ["[seqread]", "rw=read", "bs=1m", "iodepth=16", *span, *timed],
    }
    if name not in jobs:
        raise ValueError(f"unknown job '{name}'; known: {', '.join(JOB_NAMES)}")
    return "\n".join([*common, "", *jobs[name], ""])


def parse_jobs(names: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'verify,randread' -> ('verify', 'randread'), checked and in the given order."""
    items = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    items = [n for n in items if n]
    unknown = [n for n in items if n not in JOB_NAMES]
    if unknown or not items:
        raise ValueError(
            f"unknown job(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(JOB_NAMES)}"
        )
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True)
class Direction:
    """One direction (read or write) of a finished fio job."""

    rw: str
    ios: int
    iops: float
    mib_s: float
    clat_p50_us: float | None
    clat_p99_us: float | None
    clat_p9999_us: float | None

    def as_dict(self) -> dict[str, Any]:
        """For results.json."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class JobResult:
    """What fio reported for one job."""

    name: str
    exit_code: int
    error: int  # fio's error number (0: none)
    directions: tuple[Direction, ...]
    verify_ran: bool  # fio read back and checked what it wrote
    raw: dict[str, Any]

    @property
    def ok(self) -> bool:
        """fio exited 0 and reported no error."""
        return self.exit_code == 0 and self.error == 0

    def as_dict(self) -> dict[str, Any]:
        """For results.json (without fio's raw output, which is kept beside it)."""
        return {
            "name": self.name,
            "exit_code": self.exit_code,
            "error": self.error,
            "ok": self.ok,
            "verify_ran": self.verify_ran,
            "directions": [d.as_dict() for d in self.directions],
        }


def _percentile(clat: dict[str, Any], key: str) -> float | None:
    value = (clat.get("percentile") or {}).get(key)
    return None if value is None else float(value) / 1000.0


def parse_output(name: str, text: str, exit_code: int) -> JobResult:
    """Read fio's --output-format=json for one job (ValueError if it is not fio JSON)."""
    start = text.find("{")
    if start < 0:
        raise ValueError(f"{name}: no JSON in fio's output")
    raw = json.loads(text[start:])
    jobs = raw.get("jobs") or []
    if not jobs:
        raise ValueError(f"{name}: fio's JSON has no jobs")
    job = jobs[0]
    directions = []
    for rw in ("read", "write"):
        d = job.get(rw) or {}
        ios = int(d.get("total_ios", 0))
        if not ios:
            continue
        clat = d.get("clat_ns") or {}
        directions.append(
            Direction(
                rw=rw,
                ios=ios,
                iops=float(d.get("iops", 0.0)),
                mib_s=float(d.get("bw_bytes", 0)) / (1 << 20),
                clat_p50_us=_percentile(clat, "50.000000"),
                clat_p99_us=_percentile(clat, "99.000000"),
                clat_p9999_us=_percentile(clat, "99.990000"),
            )
        )
    verify_ran = name == "verify" and any(d.rw == "read" and d.ios > 0 for d in directions)
    return JobResult(
        name=name,
        exit_code=exit_code,
        error=int(job.get("error", 0)),
        directions=tuple(directions),
        verify_ran=verify_ran,
        raw=raw,
    )
