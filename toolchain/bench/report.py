"""results.json, report.md and plots from a finished benchmark."""

from __future__ import annotations

import json
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runner import Plan

SCHEMA_VERSION = 1

#: metric key -> (label for the report, unit, higher is better)
METRICS: dict[str, tuple[str, str, bool]] = {
    "iops": ("IOPS", "", True),
    "mib_s": ("MiB/s", "", True),
    "lat_p50_us": ("p50 latency", "µs", False),
    "lat_p99_us": ("p99 latency", "µs", False),
    "lat_p99_99_us": ("p99.99 latency", "µs", False),
    "cpu_s_per_mreq": ("backend CPU per 1M requests", "s", False),
    "peak_rss_mib": ("backend peak RSS", "MiB", False),
    "kicks_per_io": ("kicks per I/O", "", False),
    "interrupts_per_io": ("interrupts per I/O", "", False),
}


def _value(run: dict[str, Any], metric: str) -> float:
    if metric == "peak_rss_mib":
        return float(run["peak_rss_kib"]) / 1024
    return float(run[metric])


def summarize(plan: Plan, memcpy: dict[str, float]) -> list[dict[str, Any]]:
    """Median / min / max of every metric per (job, backend), over the runs that passed."""
    out: list[dict[str, Any]] = []
    for job in plan.jobs:
        for who in plan.contenders:
            runs = [r for r in plan.runs if r["job"] == job.name and r["backend"] == who.name]
            good = [r for r in runs if r["ok"]]
            if not runs:
                continue
            entry: dict[str, Any] = {
                "job": job.name,
                "backend": who.name,
                "runs": len(runs),
                "ok_runs": len(good),
                "median": {},
                "min": {},
                "max": {},
                "memcpy_fraction": None,
            }
            for metric in METRICS:
                values = [_value(r, metric) for r in good]
                if values:
                    entry["median"][metric] = statistics.median(values)
                    entry["min"][metric] = min(values)
                    entry["max"][metric] = max(values)
            if job.sequential_read and good and memcpy["mib_s"] > 0:
                entry["memcpy_fraction"] = entry["median"]["mib_s"] / memcpy["mib_s"]
            out.append(entry)
    return out


def compare(plan: Plan, summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ratio of medians, every other contender over A, per job."""
    base = plan.contenders[0].name
    index = {(s["job"], s["backend"]): s for s in summary}
    out: list[dict[str, Any]] = []
    for job in plan.jobs:
        a = index.get((job.name, base))
        for who in plan.contenders[1:]:
            other = index.get((job.name, who.name))
            if a is None or other is None:
                continue
            ratios = {
                m: other["median"][m] / a["median"][m]
                for m in METRICS
                if m in a["median"] and m in other["median"] and a["median"][m]
            }
            out.append({"job": job.name, "baseline": base, "other": who.name, "ratios": ratios})
    return out


#: The seed's two devices as shipped specs: the pre-PR model and HEAD's.
SEED_BEFORE, SEED_AFTER = "procq", "virtio-blk"
#: What the seed's table reports, per job: throughput, then the tail.
SEED_TAIL = ("lat_p99_us", "lat_p99_99_us")


def seed_pairs(backends: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """The seed's comparisons these backends allow, as (what, baseline, other):
    hvisor-tool's first tree over its second (HEAD over pre-PR, given in that
    order), our worker-drain spec over our procq spec (in our runtime, and in
    hvisor-tool's daemon), and each of our specs over upstream's own pair in
    the same daemon."""
    ups = [b for b in backends if b["kind"] == "upstream"]
    out: list[tuple[str, str, str]] = []
    if len(ups) >= 2:
        out.append(
            (
                f"hvisor-tool {ups[0]['hvisor_tool_revision']} over "
                f"{ups[1]['hvisor_tool_revision']}, each with its own pair",
                ups[1]["name"],
                ups[0]["name"],
            )
        )
    for kind, where in (("spec", "our runtime"), ("daemon", "hvisor-tool's daemon")):
        pick = {b["spec"]: b["name"] for b in backends if b["kind"] == kind}
        if SEED_BEFORE in pick and SEED_AFTER in pick:
            out.append(
                (
                    f"ours, {SEED_AFTER} (worker-drain) over {SEED_BEFORE}, in {where}",
                    pick[SEED_BEFORE],
                    pick[SEED_AFTER],
                )
            )
    if ups:
        for b in backends:
            if b["kind"] == "daemon":
                what = (
                    f"ours over upstream: {b['spec']} over hvisor-tool "
                    f"{ups[0]['hvisor_tool_revision']}'s own pair, in its daemon"
                )
                out.append((what, ups[0]["name"], b["name"]))
    return out


def _ratio_range(base: dict[str, Any], other: dict[str, Any], metric: str) -> dict[str, Any] | None:
    """other/base: the ratio of medians, the extremes the runs allow, and whether
    the two backends' ranges overlap."""
    try:
        b, o = base["median"][metric], other["median"][metric]
        if not b or not base["min"][metric] or not base["max"][metric]:
            return None
        return {
            "median": o / b,
            "low": other["min"][metric] / base["max"][metric],
            "high": other["max"][metric] / base["min"][metric],
            "within_noise": within_noise(base, other, metric),
        }
    except KeyError:
        return None


def seed_comparisons(
    plan: Plan, backends: list[dict[str, Any]], summary: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The seed's table: for each pair and job, throughput, p99 and p99.99 as ratios."""
    index = {(s["job"], s["backend"]): s for s in summary}
    out: list[dict[str, Any]] = []
    for what, base, other in seed_pairs(backends):
        for job in plan.jobs:
            a, b = index.get((job.name, base)), index.get((job.name, other))
            if a is None or b is None:
                continue
            head = "mib_s" if job.sequential_read else "iops"
            ratios = {m: _ratio_range(a, b, m) for m in (head, *SEED_TAIL)}
            out.append(
                {
                    "what": what,
                    "baseline": base,
                    "other": other,
                    "job": job.name,
                    "ratios": {m: r for m, r in ratios.items() if r is not None},
                }
            )
    return out


def _median_run(plan: Plan, job: str, backend: str) -> dict[str, Any] | None:
    good = [r for r in plan.runs if r["job"] == job and r["backend"] == backend and r["ok"]]
    if not good:
        return None
    good.sort(key=lambda r: r["iops"])
    return good[len(good) // 2]


def results_document(
    plan: Plan, machine: dict[str, Any], memcpy: dict[str, float], started: float
) -> dict[str, Any]:
    """The results.json object (schema in docs/bench.md)."""
    summary = summarize(plan, memcpy)
    cfg = plan.config
    backends = [c.describe() for c in plan.contenders]
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "command": cfg.command,
        "machine": machine,
        "settings": {
            "target": cfg.target,
            "transport": cfg.transport,
            "runs": cfg.runs,
            "seconds": cfg.seconds,
            "warmup_s": cfg.warmup,
            "image_bytes": plan.image_bytes,
            "image_dir": cfg.image_dir,
            "placement": plan.placement,
            "order": "alternating: for each job, run i of every backend before run i+1",
        },
        "memcpy": memcpy,
        "backends": backends,
        "jobs": [j.model_dump() for j in plan.jobs],
        "runs": [{k: v for k, v in r.items() if k != "loadgen"} | _slim(r) for r in plan.runs],
        "skipped": plan.skipped,
        "summary": summary,
        "comparisons": compare(plan, summary),
        "seed_comparisons": seed_comparisons(plan, backends, summary),
    }


def _slim(run: dict[str, Any]) -> dict[str, Any]:
    """The loadgen output without its CDF (kept only for the median run's plot)."""
    if "loadgen" not in run:
        return {}
    data = dict(run["loadgen"])
    data["latency_us"] = {k: v for k, v in data["latency_us"].items() if k != "cdf"}
    return {"loadgen": data}


# -- report.md -----------------------------------------------------------------


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "—"
    if metric in ("kicks_per_io", "interrupts_per_io"):
        return f"{value:.3f}"
    if metric == "iops":
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def _ratio(value: float | None, noise: bool = False) -> str:
    if value is None:
        return "—"
    return f"x{value:.2f} ({(value - 1) * 100:+.0f}%)" + (", within noise" if noise else "")


def within_noise(a: dict[str, Any] | None, b: dict[str, Any] | None, metric: str) -> bool:
    """Whether two backends' run-to-run ranges (min-max) of a metric overlap: then the
    difference of their medians is not evidence of one being faster. Needs two or
    more runs each (one run has no range)."""
    if a is None or b is None or min(a["ok_runs"], b["ok_runs"]) < 2:
        return False
    try:
        return a["min"][metric] <= b["max"][metric] and b["min"][metric] <= a["max"][metric]
    except KeyError:
        return False


def spread(entry: dict[str, Any] | None, metric: str) -> float | None:
    """(max - min) / median over the runs, or None with fewer than two runs."""
    if entry is None or entry["ok_runs"] < 2 or not entry["median"].get(metric):
        return None
    return (entry["max"][metric] - entry["min"][metric]) / entry["median"][metric]


def report_markdown(doc: dict[str, Any]) -> str:
    """The human report: machine, settings, one table per job."""
    backends = doc["backends"]
    base = backends[0]["name"]
    others = backends[1:]
    m = doc["machine"]
    s = doc["settings"]
    place = s["placement"]
    where = (
        f"backend on CPU {place['backend_cpus']}, client on CPU {place['client_cpus']}"
        if place["pinned"]
        else "unpinned"
    )
    lines = [
        "# Benchmark report",
        "",
        f"- date: {doc['created']}",
        f"- command: `{doc['command']}`",
        f"- machine: {m['cpu_model']}, {m['cores']} cores, kernel {m['kernel']}; "
        f"load average at start {m['load_avg_start'][0]:.2f}, "
        f"at end {m.get('load_avg_end', [0.0])[0]:.2f}",
        f"- target: {s['target']}; transport: {s['transport']}; placement: {where}; "
        f"{s['runs']} run(s) x {s['seconds']} s "
        f"(+{s['warmup_s']} s warm-up) per backend and job, alternating",
        f"- image: {s['image_bytes'] >> 20} MiB of random data in {s['image_dir']}",
        f"- memcpy, 1 MiB blocks, one core: {doc['memcpy']['gib_s']:.2f} GiB/s",
        "- medians over the runs; Change = ratio of medians over "
        f'{base} (A), "within noise" where the two backends\' min-max ranges over the '
        "runs overlap; Spread = (max - min) / median of A's runs; CPU is the backend's "
        "utime+stime over the whole run",
        "",
    ]
    if s["runs"] < 2:
        lines += [
            "**One run per backend and job: no run-to-run spread is known, so no "
            "difference below can be told from noise. Use --runs 3 or more.**",
            "",
        ]
    lines += _seed_table(doc)
    index = {(x["job"], x["backend"]): x for x in doc["summary"]}
    for job in doc["jobs"]:
        name = job["name"]
        head = ["Metric", f"{base} (A)", "Spread A"]
        for o in others:
            head += [
                o["name"] + (" (peer)" if o["kind"] == "peer" else f" ({o['role']})"),
                f"Change {o['role'] if o['kind'] != 'peer' else 'peer'}/A",
            ]
        lines += [f"## {name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        a = index.get((name, base))
        for metric, (label, unit, _) in METRICS.items():
            row = [label + (f" ({unit})" if unit else "")]
            av = a["median"].get(metric) if a else None
            sp = spread(a, metric)
            row += [_fmt(metric, av), "—" if sp is None else f"{sp * 100:.0f}%"]
            for o in others:
                ov = index.get((name, o["name"]))
                v = ov["median"].get(metric) if ov else None
                row += [
                    _fmt(metric, v),
                    _ratio(v / av if v is not None and av else None, within_noise(a, ov, metric)),
                ]
            lines.append("| " + " | ".join(row) + " |")
        fractions = [
            f"{x['backend']} {x['memcpy_fraction'] * 100:.0f}%"
            for x in doc["summary"]
            if x["job"] == name and x["memcpy_fraction"] is not None
        ]
        if fractions:
            lines += ["", "MiB/s as a fraction of single-core memcpy: " + ", ".join(fractions)]
        notes = [f"{k['backend']}: {k['reason']}" for k in doc["skipped"] if k["job"] == name]
        failed = [
            f"{r['backend']} run {r['index'] + 1}: {r.get('error', '?')}"
            for r in doc["runs"]
            if r["job"] == name and not r["ok"]
        ]
        for note in notes:
            lines.append(f"\nSkipped — {note}")
        for fail in failed:
            lines.append(f"\nFailed — {fail}")
        lines += ["", f"![latency tail](latency-cdf-{name}.png)", ""]
    lines += ["![IOPS](iops.png)", ""]
    return "\n".join(lines)


def _seed_cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "—"
    text = f"x{r['median']:.2f} ({r['low']:.2f} to {r['high']:.2f})"
    return text + (", within noise" if r["within_noise"] else "")


def _seed_table(doc: dict[str, Any]) -> list[str]:
    """The seed's comparisons, first in the report."""
    rows = doc["seed_comparisons"]
    if not rows:
        return []
    lines = [
        "## The seed's comparisons",
        "",
        "Other over baseline: the ratio of medians, then (in brackets) the lowest and "
        "highest ratio the runs allow (other's min over baseline's max, other's max over "
        "baseline's min). Above 1 is better for IOPS and MiB/s, worse for latency.",
        "",
        "| Comparison | job | baseline → other | IOPS or MiB/s | p99 | p99.99 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = r["ratios"].get("mib_s") or r["ratios"].get("iops")
        unit = "MiB/s" if "mib_s" in r["ratios"] else "IOPS"
        lines.append(
            f"| {r['what']} | {r['job']} | {r['baseline']} → {r['other']} | "
            f"{unit} {_seed_cell(head)} | {_seed_cell(r['ratios'].get('lat_p99_us'))} | "
            f"{_seed_cell(r['ratios'].get('lat_p99_99_us'))} |"
        )
    return [*lines, ""]


# -- plots -----------------------------------------------------------------------


def write_plots(plan: Plan, doc: dict[str, Any]) -> list[Path]:
    """latency-cdf-<job>.png (the tail, 1 - CDF, of the median-IOPS run per backend)
    and iops.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    for job in plan.jobs:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for n, who in enumerate(plan.contenders):
            run = _median_run(plan, job.name, who.name)
            if run is None:
                continue
            cdf = run["loadgen"]["latency_us"]["cdf"]
            # The tail is what matters: the fraction of requests slower than x, on
            # a log axis, so p99 (1e-2) and p99.99 (1e-4) are as visible as the body.
            tail = [(p[0], 1.0 - p[1]) for p in cdf if p[1] < 1.0]
            ax.step(
                [p[0] for p in tail],
                [p[1] for p in tail],
                where="post",
                label=who.name,
                color=f"C{n}",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("latency (µs)")
        ax.set_ylabel("fraction of requests slower")
        ax.set_title(f"{job.name}: latency tail, 1 - CDF (median-IOPS run)")
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no completed runs", ha="center", transform=ax.transAxes)
        path = plan.out_dir / f"latency-cdf-{job.name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    index = {(x["job"], x["backend"]): x for x in doc["summary"]}
    fig, axes = plt.subplots(
        1, len(plan.jobs), figsize=(3.2 * len(plan.jobs) + 1, 4), squeeze=False
    )
    for ax, job in zip(axes[0], plan.jobs, strict=True):
        names, med, lo, hi, colors = [], [], [], [], []
        for n, who in enumerate(plan.contenders):
            entry = index.get((job.name, who.name))
            if not entry or "iops" not in entry["median"]:
                continue
            names.append(who.name)
            colors.append(f"C{n}")
            med.append(entry["median"]["iops"])
            lo.append(entry["median"]["iops"] - entry["min"]["iops"])
            hi.append(entry["max"]["iops"] - entry["median"]["iops"])
        ax.bar(names, med, yerr=[lo, hi], capsize=5, color=colors)
        ax.set_title(job.name, fontsize=9)
        ax.set_ylabel("IOPS (median, min-max)")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    path = plan.out_dir / "iops.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def write_outputs(
    plan: Plan, machine: dict[str, Any], memcpy: dict[str, float], started: float
) -> dict[str, Any]:
    """results.json, report.md, the plots."""
    doc = results_document(plan, machine, memcpy, started)
    (plan.out_dir / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    (plan.out_dir / "report.md").write_text(report_markdown(doc))
    write_plots(plan, doc)
    return doc
