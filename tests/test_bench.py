"""Smoke test of the benchmark tooling: the load generator and `invoke bench`'s library.

Tiny settings (one job, one run of one second, a 32 MiB image); it checks the
shape of what is written, never a speed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest

from toolchain import project
from toolchain.bench.loadgen import build_loadgen
from toolchain.bench.runner import BenchConfig, run_bench
from toolchain.bench.schema import RESULTS_SCHEMA
from toolchain.spec.model import ThreadingModel

from .conftest import hvisor_tree

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = project.Layout(ROOT)
HAVE_QSD = shutil.which("qemu-storage-daemon") is not None


def test_loadgen_builds_and_measures_memcpy() -> None:
    binary = build_loadgen(LAYOUT.build_dir).binary
    out = subprocess.run(
        [str(binary), "--memcpy-bench", "--seconds", "0.05"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    data = json.loads(out.stdout)["memcpy"]
    assert data["block_bytes"] == 1 << 20
    assert data["bytes"] > 0


def test_loadgen_rejects_bad_usage_and_absent_backend(tmp_path: Path) -> None:
    binary = str(build_loadgen(LAYOUT.build_dir).binary)
    bad = subprocess.run([binary, "--qd", "0"], capture_output=True, text=True, timeout=10)
    assert bad.returncode == 2
    absent = subprocess.run(
        [binary, "--socket", str(tmp_path / "none.sock"), "--timeout", "0.2"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert absent.returncode == 1
    assert "no backend" in absent.stderr


def test_bench_writes_valid_results(tmp_path: Path) -> None:
    config = BenchConfig(
        specs=("procq", "virtio-blk"),
        target="host",
        jobs=("4k-randread-qd64",),
        runs=1,
        seconds=1.0,
        warmup=0.2,
        peer="qsd" if HAVE_QSD else None,
        image_mib=32,
        out_dir=tmp_path,
        command="pytest tests/test_bench.py",
    )
    lines: list[str] = []
    out = run_bench(LAYOUT, config, lines.append)
    doc = json.loads((out / "results.json").read_text())
    jsonschema.validate(doc, RESULTS_SCHEMA)
    names = {b["name"] for b in doc["backends"]}
    assert names == {"procq", "virtio-blk"} | ({"qsd"} if HAVE_QSD else set())
    failed = [r for r in doc["runs"] if not r["ok"]]
    assert not failed, failed
    assert len(doc["runs"]) == len(names)
    assert all(r["exit_code"] == 0 and r["ios"] > 0 for r in doc["runs"])
    assert {c["other"] for c in doc["comparisons"]} == names - {"procq"}
    report = (out / "report.md").read_text()
    assert "| Metric | procq (A) | Spread A | virtio-blk (B) |" in report
    assert (out / "iops.png").stat().st_size > 0
    assert (out / "latency-cdf-4k-randread-qd64.png").stat().st_size > 0
    assert sum("run 1/1" in line for line in lines) == len(names)
    # one run: said at the start and in the report
    assert any(line.startswith("warning: one run per backend") for line in lines)
    assert "no run-to-run spread is known" in report


def test_within_noise_needs_overlapping_ranges_of_two_or_more_runs() -> None:
    from toolchain.bench.report import spread, within_noise

    def entry(lo: float, med: float, hi: float, runs: int = 3) -> dict[str, object]:
        return {"ok_runs": runs, "min": {"iops": lo}, "median": {"iops": med}, "max": {"iops": hi}}

    a, b = entry(90, 100, 110), entry(105, 108, 120)
    assert within_noise(a, b, "iops") and within_noise(b, a, "iops")
    assert not within_noise(a, entry(111, 115, 130), "iops")  # apart: a real difference
    assert not within_noise(entry(100, 100, 100, 1), entry(100, 100, 100, 1), "iops")
    assert spread(a, "iops") == 0.2 and spread(entry(1, 1, 1, 1), "iops") is None


def test_latest_points_at_the_newest_report(tmp_path: Path) -> None:
    from toolchain.bench.runner import point_latest

    for name in ("20260101T000000Z", "20260102T000000Z"):
        (tmp_path / name).mkdir()
        point_latest(tmp_path / name)
    assert (tmp_path / "latest").resolve() == (tmp_path / "20260102T000000Z").resolve()
    assert os.readlink(tmp_path / "latest") == "20260102T000000Z"  # relative: movable


def test_bench_skips_multiqueue_job_for_single_queue_specs(tmp_path: Path) -> None:
    config = BenchConfig(
        specs=("virtio-blk",),
        jobs=("4k-randread-qd32-mq4",),
        runs=1,
        seconds=0.3,
        warmup=0.0,
        image_mib=16,
        out_dir=tmp_path,
    )
    out = run_bench(LAYOUT, config, lambda _line: None)
    doc = json.loads((out / "results.json").read_text())
    jsonschema.validate(doc, RESULTS_SCHEMA)
    assert doc["runs"] == []
    assert doc["skipped"][0]["backend"] == "virtio-blk"


def test_loadgen_hvisor_transport_rejects_bad_usage_and_no_daemon(tmp_path: Path) -> None:
    binary = str(build_loadgen(LAYOUT.build_dir).binary)

    def loadgen(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([binary, *args], capture_output=True, text=True, timeout=20)

    no_image = loadgen("--hvisor", str(tmp_path))
    assert no_image.returncode == 2 and "--image" in no_image.stderr
    both = loadgen("--hvisor", str(tmp_path), "--image", "x", "--socket", "s")
    assert both.returncode == 2 and "one of --socket" in both.stderr
    mq = loadgen("--hvisor", str(tmp_path), "--image", "x", "--queues", "2")
    assert mq.returncode == 2 and "one queue" in mq.stderr
    # No daemon attaches: bounded, status 1, says what it waited for, and the
    # zone JSON names the image for the daemon that never came.
    alone = loadgen("--hvisor", str(tmp_path), "--image", "/dev/null", "--timeout", "0.2")
    assert alone.returncode == 1 and "no daemon connected" in alone.stderr
    zone = json.loads((tmp_path / "zone.json").read_text())
    assert zone["zones"][0]["devices"][0]["img"] == "/dev/null"


def test_bench_over_the_hvisor_transport(tmp_path: Path) -> None:
    """Our runtime's --hvisor transport under the load generator playing hvisor:
    every run completes, and completions arrive as injected interrupts that the
    guest acknowledges through the bridge."""
    config = BenchConfig(
        specs=("procq", "virtio-blk"),
        jobs=("4k-randread-qd64", "4k-randread-qd32-mq4"),
        runs=2,
        seconds=0.5,
        warmup=0.1,
        image_mib=16,
        out_dir=tmp_path,
        transport="hvisor",
    )
    out = run_bench(LAYOUT, config, lambda _line: None)
    doc = json.loads((out / "results.json").read_text())
    jsonschema.validate(doc, RESULTS_SCHEMA)
    assert doc["settings"]["transport"] == "hvisor"
    runs = [r for r in doc["runs"] if r["job"] == "4k-randread-qd64"]
    assert len(runs) == 4 and all(r["ok"] and r["ios"] > 0 for r in runs), runs
    assert all(0 < r["interrupts_per_io"] <= 1 for r in runs)
    assert all("--hvisor" in r["loadgen_command"] for r in runs)
    # one vCPU, one queue: the multiqueue job is skipped for every backend, with the reason
    assert {(k["backend"], k["job"]) for k in doc["skipped"]} == {
        ("procq", "4k-randread-qd32-mq4"),
        ("virtio-blk", "4k-randread-qd32-mq4"),
    }
    assert all("one queue" in k["reason"] for k in doc["skipped"])
    (seed,) = doc["seed_comparisons"]
    assert (seed["baseline"], seed["other"], seed["job"]) == (
        "procq",
        "virtio-blk",
        "4k-randread-qd64",
    )
    assert set(seed["ratios"]) == {"iops", "lat_p99_us", "lat_p99_99_us"}
    assert all(r["low"] <= r["median"] <= r["high"] for r in seed["ratios"].values())
    report = (out / "report.md").read_text()
    assert "transport: hvisor" in report and "## The seed's comparisons" in report
    log = (out / "logs" / "virtio-blk-4k-randread-qd64-0.log").read_text()
    assert "through the hvisor bridge" in log


def test_seed_pairs_follow_the_backends_present() -> None:
    from toolchain.bench.report import seed_pairs

    def b(name: str, kind: str, spec: str = "", rev: str = "") -> dict[str, str]:
        return {"name": name, "kind": kind, "spec": spec, "hvisor_tool_revision": rev}

    ours = [b("procq", "spec", "procq"), b("virtio-blk", "spec", "virtio-blk")]
    assert [p[1:] for p in seed_pairs(ours)] == [("procq", "virtio-blk")]
    assert seed_pairs([b("virtio-blk", "spec", "virtio-blk"), b("qsd", "peer")]) == []
    trees = [
        b("hvisor-tool@new", "upstream", rev="new"),
        b("hvisor-tool@old", "upstream", rev="old"),
    ]
    daemon = [
        b("procq@new", "daemon", "procq", "new"),
        b("virtio-blk@new", "daemon", "virtio-blk", "new"),
    ]
    pairs = [p[1:] for p in seed_pairs(ours + trees + daemon)]
    assert pairs == [
        ("hvisor-tool@old", "hvisor-tool@new"),  # first tree over second
        ("procq", "virtio-blk"),
        ("procq@new", "virtio-blk@new"),
        ("hvisor-tool@new", "procq@new"),  # ours over upstream, in the same daemon
        ("hvisor-tool@new", "virtio-blk@new"),
    ]


def test_bench_with_an_hvisor_tool_tree(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """--hvisor-tree: hvisor-tool's daemon with its own pair and with a spec's, in one run."""
    tree = hvisor_tree(request.config)
    if tree is None:
        pytest.skip("needs an hvisor-tool checkout: pytest --hvisor-tree PATH")
    config = BenchConfig(
        specs=("virtio-blk",),
        jobs=("4k-randread-qd64",),
        runs=1,
        seconds=0.5,
        warmup=0.1,
        image_mib=16,
        out_dir=tmp_path,
        transport="hvisor",
        hvisor_trees=(str(tree),),
    )
    out = run_bench(LAYOUT, config, lambda _line: None)
    doc = json.loads((out / "results.json").read_text())
    jsonschema.validate(doc, RESULTS_SCHEMA)
    kinds = {b["name"]: b["kind"] for b in doc["backends"]}
    rev = next(b["hvisor_tool_revision"] for b in doc["backends"] if b["kind"] == "upstream")
    assert kinds == {
        "virtio-blk": "spec",
        f"hvisor-tool@{rev}": "upstream",
        f"virtio-blk@{rev}": "daemon",
    }
    assert all(r["ok"] and r["ios"] > 0 for r in doc["runs"]), doc["runs"]
    assert [(c["baseline"], c["other"]) for c in doc["seed_comparisons"]] == [
        (f"hvisor-tool@{rev}", f"virtio-blk@{rev}")
    ]


@pytest.mark.parametrize(
    "bad",
    [
        {"specs": ()},
        {"specs": ("a", "a")},
        {"peer": "spdk"},
        {"transport": "pci"},
        {"hvisor_trees": ("somewhere",)},  # a tree needs the hvisor transport
        {"peer": "qsd", "transport": "hvisor"},  # qsd serves vhost-user only
    ],
)
def test_bench_config_rejects(bad: dict[str, object]) -> None:
    settings: dict[str, object] = {"specs": ("virtio-blk",), **bad}
    with pytest.raises(ValueError):
        BenchConfig(**settings).check()  # type: ignore[arg-type]


# ---- invoke stall --------------------------------------------------------------------


def test_stall_measures_every_spec_and_reports_each(tmp_path: Path) -> None:
    """Two specs, one short round: the core's figures are read back for each run,
    and the report has one row per spec (its shape, never a speed)."""
    from toolchain.bench.stall import StallConfig, run_stall

    config = StallConfig(
        specs=("inline", "virtio-blk"), rounds=1, seconds=0.3, resets=1, out_dir=tmp_path / "out"
    )
    out = run_stall(LAYOUT, config, lambda line: None)
    assert out == tmp_path / "out"
    runs = json.loads((out / "runs.json").read_text())
    assert [r["spec"] for r in runs] == ["inline", "virtio-blk"]
    for r in runs:
        assert r["resets"] == 1 and r["requests"] > 0
        assert r["notify_ns"] > 0 and r["status_ns"] > 0 and r["accesses"] > 0
    inline = runs[0]
    budget = ThreadingModel.INLINE.main_budget  # its own pass, and a helper pass it waited for
    assert 1 <= inline["completions"] <= 2 * budget
    report = (out / "report.md").read_text()
    assert "| inline | inline |" in report and "| virtio-blk | worker-drain |" in report


@pytest.mark.parametrize(
    "bad", [{"specs": ()}, {"specs": ("a", "a")}, {"rounds": 0}, {"seconds": 0}]
)
def test_stall_config_rejects(bad: dict[str, object]) -> None:
    from toolchain.bench.stall import StallConfig

    with pytest.raises(ValueError):
        StallConfig(**bad).check()  # type: ignore[arg-type]
