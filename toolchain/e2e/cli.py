"""What `invoke e2e` and `invoke setup` call: options in, runs out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from ..project import Layout
from . import debian, fio
from .runner import E2EConfig, RunSet, matrix_configs, run_many

Progress = Callable[[str], None]
GUEST_ARCHES = ("amd64", "arm64")


def prepare_host(progress: Progress) -> None:
    """Let apt fetch every guest architecture's packages (dpkg --add-architecture)."""
    for name in GUEST_ARCHES:
        debian.ensure_architecture(debian.arch(name), progress)


def run(
    layout: Layout,
    *,
    spec: str,
    target: str,
    arch: str,
    transport: str,
    jobs: str,
    peer: str,
    matrix: bool,
    verify_mib: int,
    runtime: int,
    cpus: int,
    command: str,
    progress: Progress,
) -> RunSet:
    """One e2e run (or the matrix); ValueError for options that cannot run."""
    base = E2EConfig(
        spec=spec,
        target=target or ("rk3588" if arch == "arm64" else "host"),
        arch=arch,
        transport=transport,
        peer=peer,
        jobs=fio.parse_jobs(jobs),
        settings=fio.JobSettings(verify_mib=verify_mib, runtime_s=runtime),
        cpus=cpus,
    )
    configs = matrix_configs(base) if matrix else [base]
    if matrix:
        configs = [replace(c, jobs=base.jobs) for c in configs]
    return run_many(layout, configs, progress, command)
