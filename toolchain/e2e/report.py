"""The e2e results as Markdown tables: one row per run and job direction,
and for the matrix, the peers' numbers beside ours."""

from __future__ import annotations

from typing import Any


def _num(v: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def _get(d: dict[str, Any] | None, key: str) -> float | None:
    return None if d is None or d.get(key) is None else float(d[key])


Row = tuple[str, str, dict[str, Any] | None, int]


def _rows(record: dict[str, Any]) -> list[Row]:
    """(job, rw, direction or None, errors) for a run."""
    rows: list[Row] = []
    for job, res in (record.get("jobs") or {}).items():
        errors = 0 if res.get("ok") else max(1, int(res.get("error", 0) or 0))
        dirs = res.get("directions") or []
        if not dirs:
            rows.append((job, "-", None, errors))
        for d in dirs:
            rw = "verify-read" if job == "verify" and d["rw"] == "read" else d["rw"]
            rows.append((job, rw, d, errors))
    return rows


def runs_table(records: list[dict[str, Any]]) -> str:
    """Every run, every job direction."""
    head = (
        "| run | boot s | job | rw | IOPS | MiB/s | p99 us | p99.99 us | errors |\n"
        "|---|---:|---|---|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for r in records:
        label = r["config"]["label"]
        boot = _num(r.get("boot_s"), "{:.1f}")
        rows: list[Row] = _rows(r) or [("-", "-", None, 1)]
        for job, rw, d, errors in rows:
            lines.append(
                f"| {label} | {boot} | {job} | {rw} | {_num(_get(d, 'iops'))} | "
                f"{_num(_get(d, 'mib_s'), '{:.1f}')} | {_num(_get(d, 'clat_p99_us'))} | "
                f"{_num(_get(d, 'clat_p9999_us'))} | {errors} |"
            )
    return head + "\n".join(lines) + "\n"


def matrix_table(records: list[dict[str, Any]]) -> str:
    """spec x arch x transport x job: ours, with the peers' IOPS / MiB/s on the same machine."""
    peers: dict[tuple[str, str, str, str, str], dict[str, Any]] = {}
    for r in records:
        c = r["config"]
        if c["peer"] != "ours":
            for job, rw, d, _ in _rows(r):
                if d is not None:
                    peers[(c["peer"], c["arch"], c["transport"], job, rw)] = d
    head = (
        "| spec | arch | transport | job | rw | IOPS | MiB/s | p99 us | p99.99 us | errors "
        "| qsd IOPS | qsd MiB/s | builtin IOPS | builtin MiB/s |\n"
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for r in records:
        c = r["config"]
        if c["peer"] != "ours":
            continue
        for job, rw, d, errors in _rows(r) or [("-", "-", None, 1)]:
            q = peers.get(("qsd", c["arch"], c["transport"], job, rw))
            b = peers.get(("builtin", c["arch"], c["transport"], job, rw))
            lines.append(
                f"| {c['spec']} | {c['arch']} | {c['transport']} | {job} | {rw} | "
                f"{_num(_get(d, 'iops'))} | {_num(_get(d, 'mib_s'), '{:.1f}')} | "
                f"{_num(_get(d, 'clat_p99_us'))} | {_num(_get(d, 'clat_p9999_us'))} | {errors} | "
                f"{_num(_get(q, 'iops'))} | {_num(_get(q, 'mib_s'), '{:.1f}')} | "
                f"{_num(_get(b, 'iops'))} | {_num(_get(b, 'mib_s'), '{:.1f}')} |"
            )
    return head + "\n".join(lines) + "\n"


def report_markdown(records: list[dict[str, Any]], command: str) -> str:
    """The whole report: command, runs, failures, and the matrix table if peers ran."""
    parts = ["# e2e: a Linux guest (virtio_blk + fio) over QEMU TCG\n"]
    if command:
        parts.append(f"`{command}`\n")
    parts.append("## Runs\n\n" + runs_table(records))
    boots = [
        f"- {r['config']['label']}: boot {_num(r.get('boot_s'), '{:.1f}')} s "
        f"(QEMU start to the init's disk marker), wall {_num(r.get('wall_s'), '{:.1f}')} s, "
        f"guest queues {r.get('guest_queues', '-')}"
        for r in records
    ]
    parts.append("## Boot\n\n" + "\n".join(boots) + "\n")
    if any(r["config"]["peer"] != "ours" for r in records) and any(
        r["config"]["peer"] == "ours" for r in records
    ):
        parts.append("## Ours beside the peers\n\n" + matrix_table(records))
    failed = [r for r in records if not r["ok"]]
    if failed:
        parts.append(
            "## Failures\n\n"
            + "\n".join(f"- {r['config']['label']}: {'; '.join(r['failures'])}" for r in failed)
            + "\n"
        )
    parts.append(
        "Numbers are from a TCG-emulated guest on this machine: they show that the path "
        "works and how the backends compare under the same guest, not board timing.\n"
    )
    return "\n".join(parts)
