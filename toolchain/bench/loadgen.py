"""Build and run the C load generator (toolchain/bench/loadgen.c)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..build import BuildResult, compile_cached
from ..targets import WARNINGS
from ..tools import require

SOURCE_DIR = Path(__file__).parent
RUNTIME_DIR = SOURCE_DIR.parent / "runtime"  # hvisor_dev.h: the bridge page's layout
CFLAGS = ["-std=gnu17", "-O2", "-g", "-pthread", f"-I{RUNTIME_DIR}"]


class LoadgenError(RuntimeError):
    """The load generator failed; the message carries its stderr."""


def sources() -> list[Path]:
    """Every .c of the load generator."""
    return sorted(SOURCE_DIR.glob("*.c"))


def build_loadgen(build_dir: Path) -> BuildResult:
    """Compile build/bench/loadgen natively (skipped when up to date)."""
    binary = build_dir / "bench" / "loadgen"
    cmd = [
        require("gcc"),
        *CFLAGS,
        *WARNINGS,
        *(str(s) for s in sources()),
        "-o",
        str(binary),
        "-pthread",
    ]
    headers = [*sorted(SOURCE_DIR.glob("*.h")), RUNTIME_DIR / "hvisor_dev.h"]
    return compile_cached(cmd, sources() + headers, binary)


@dataclass(frozen=True)
class Timing:
    """How long a loadgen run lasts."""

    seconds: float
    warmup: float = 1.0
    ramp: float = 0.0
    timeout: float = 5.0

    def args(self) -> list[str]:
        """The loadgen options."""
        return [
            "--seconds",
            str(self.seconds),
            "--warmup",
            str(self.warmup),
            "--ramp",
            str(self.ramp),
            "--timeout",
            str(self.timeout),
        ]

    @property
    def wall_limit(self) -> float:
        """Seconds after which the harness gives up on loadgen itself."""
        return self.seconds + self.warmup + self.ramp + 4 * self.timeout + 30


def spawn(argv: Sequence[str]) -> subprocess.Popen[str]:
    """Start a loadgen command line (see :func:`collect_json`)."""
    return subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def collect_json(proc: subprocess.Popen[str], limit: float) -> dict[str, Any]:
    """Wait (at most ``limit`` s) for a started loadgen; its stdout must be one JSON object."""
    try:
        stdout, stderr = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise LoadgenError(f"loadgen did not finish within {limit:.0f}s") from None
    if proc.returncode != 0:
        raise LoadgenError(f"loadgen exited {proc.returncode}: {stderr.strip() or '(no message)'}")
    try:
        data = json.loads(stdout)
    except json.JSONDecodeError as exc:
        raise LoadgenError(f"loadgen printed no JSON object: {exc}") from None
    if not isinstance(data, dict):
        raise LoadgenError("loadgen printed JSON that is not an object")
    return data


def run_json(argv: Sequence[str], limit: float) -> dict[str, Any]:
    """Run a loadgen command line; its stdout must be one JSON object."""
    return collect_json(spawn(argv), limit)


def memcpy_bandwidth(
    binary: Path, prefix: Sequence[str] = (), block: int = 1 << 20, repeats: int = 3
) -> dict[str, float]:
    """Single-core memcpy of ``block``-byte blocks: the median of ``repeats`` 0.5 s runs."""
    runs = [
        run_json(
            [*prefix, str(binary), "--memcpy-bench", "--bs", str(block), "--seconds", "0.5"], 30
        )["memcpy"]
        for _ in range(repeats)
    ]
    runs.sort(key=lambda r: float(r["mib_s"]))
    mid = runs[len(runs) // 2]
    return {
        "block_bytes": int(mid["block_bytes"]),
        "mib_s": float(mid["mib_s"]),
        "gib_s": float(mid["gib_s"]),
    }
