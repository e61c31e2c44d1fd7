"""Benchmark jobs are data: toolchain/bench/jobs.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

JOBS_FILE = Path(__file__).parent / "jobs.yaml"


class Job(BaseModel):
    """One load shape for the load generator."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    rw: Literal["read", "write", "randread", "randwrite", "randrw"]
    bs: Annotated[int, Field(gt=0, multiple_of=512)]
    qd: Annotated[int, Field(ge=1, le=4096)]
    queues: Annotated[int, Field(ge=1, le=16)] = 1
    rwmixread: Annotated[int, Field(ge=0, le=100)] = 50
    mode: Literal["interrupt", "poll"] = "interrupt"
    event_idx: bool = False

    @property
    def sequential_read(self) -> bool:
        """Sequential reads: the job whose MiB/s is compared with memcpy."""
        return self.rw == "read"

    def loadgen_args(self) -> list[str]:
        """The loadgen options for this job (without timing and socket)."""
        args = ["--rw", self.rw, "--bs", str(self.bs), "--qd", str(self.qd)]
        args += ["--queues", str(self.queues), "--rwmixread", str(self.rwmixread)]
        if self.mode == "poll":
            args.append("--poll")
        if self.event_idx:
            args.append("--event-idx")
        return args


def load_jobs(path: Path = JOBS_FILE) -> dict[str, Job]:
    """Every job in the file, by name, in file order; ValueError if invalid."""
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of job name to settings")
    jobs: dict[str, Job] = {}
    for name, settings in raw.items():
        try:
            jobs[str(name)] = Job(name=str(name), **(settings or {}))
        except (ValidationError, TypeError) as exc:
            raise ValueError(f"{path}: job {name}: {exc}") from None
    return jobs


def select_jobs(names: list[str] | None, path: Path = JOBS_FILE) -> list[Job]:
    """The named jobs (default: all); ValueError naming the known ones."""
    jobs = load_jobs(path)
    if not names:
        return list(jobs.values())
    unknown = [n for n in names if n not in jobs]
    if unknown:
        raise ValueError(f"unknown job(s) {', '.join(unknown)}; known: {', '.join(jobs)}")
    return [jobs[n] for n in names]
