"""Build and run the libFuzzer harness (toolchain/fuzz/fuzz_blk.c) for a spec.

The harness includes the spec's generated virtio_blk.c and links the
runtime's framework side (everything in toolchain/runtime/ except the
vhost-user transport and the command line), all under ASan + UBSan. It is
built into build/fuzz/<spec>/fuzz_blk; runs keep their corpus, artifacts and
log beside it, and read the committed seeds in tests/fuzz/corpus/ without
writing there.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .build import RUNTIME_DIR, BuildResult, compile_cached
from .targets import WARNINGS
from .tools import MissingTool, require

HARNESS = Path(__file__).parent / "fuzz" / "fuzz_blk.c"
BINARY = "fuzz_blk"
CC = "clang-14"
RUNTIME_PACKAGE = "libclang-rt-14-dev"
# The transport and the command line: the harness stands in for them.
NOT_LINKED = {"vhost_user.c", "main.c", "hvisor.c", "hvisor_dev.c"}
CFLAGS = [
    "-std=gnu17",
    "-O1",
    "-g",
    "-fno-omit-frame-pointer",
    "-fsanitize=fuzzer,address,undefined",
    "-fno-sanitize-recover=undefined",
]
# After the project's WARNINGS (which would turn it back on): clang only, and
# `a | b` on two bools is a deliberate "evaluate both" in device code.
NO_WARNINGS = ["-Wno-bitwise-instead-of-logical"]
# Per-input timeout (a hang is a finding), memory cap, input size cap.
RUN_FLAGS = ["-timeout=10", "-rss_limit_mb=2048", "-max_len=16384", "-print_final_stats=1"]


@dataclass(frozen=True)
class FuzzRun:
    """What one fuzzing run did."""

    spec: str
    returncode: int
    executions: int
    cov: int | None
    ft: int | None
    corpus: Path
    corpus_files: int
    crash: Path | None
    log: Path

    @property
    def ok(self) -> bool:
        """No crash, no invariant violation, no sanitizer report."""
        return self.returncode == 0 and self.crash is None

    def summary(self) -> str:
        """One line for the console."""
        cov = "?" if self.cov is None else self.cov
        ft = "?" if self.ft is None else self.ft
        return (
            f"fuzz {self.spec}: {self.executions} executions, cov: {cov} ft: {ft}, "
            f"corpus {self.corpus_files} inputs ({self.corpus})"
        )


def runtime_sources() -> list[Path]:
    """Runtime files the harness links (the framework side of runtime.h)."""
    return [p for p in sorted(RUNTIME_DIR.glob("*.c")) if p.name not in NOT_LINKED]


def require_toolchain() -> str:
    """clang-14 and its libFuzzer runtime, or MissingTool naming the packages."""
    cc = require(CC)
    proc = subprocess.run(
        [cc, "-print-file-name=libclang_rt.fuzzer-x86_64.a"],
        capture_output=True,
        text=True,
        check=False,
    )
    if not Path(proc.stdout.strip()).is_file():
        raise MissingTool(
            f"libFuzzer's runtime is not installed; install it with: "
            f"sudo apt-get install -y {RUNTIME_PACKAGE}   (or run: invoke setup)"
        )
    return cc


def build_fuzzer(generated: Path, out_dir: Path) -> BuildResult:
    """Build out_dir/fuzz_blk for the pair in generated (skipped if up to date)."""
    cc = require_toolchain()
    binary = out_dir / BINARY
    cmd = [
        cc,
        *CFLAGS,
        *WARNINGS,
        *NO_WARNINGS,
        f"-I{generated}",
        f"-I{RUNTIME_DIR}",
        str(HARNESS),
        *(str(p) for p in runtime_sources()),
        "-o",
        str(binary),
    ]
    inputs = [
        HARNESS,
        generated / "virtio_blk.c",
        generated / "virtio_blk.h",
        *runtime_sources(),
        *sorted(RUNTIME_DIR.glob("*.h")),
    ]
    return compile_cached(cmd, inputs, binary)


_STATS = re.compile(r"cov: (\d+) ft: (\d+)")
_EXECS = re.compile(r"stat::number_of_executed_units: (\d+)")
_PROGRESS = re.compile(r"^#(\d+)", re.MULTILINE)
_CRASH = re.compile(r"Test unit written to (\S+)")


def parse_output(text: str) -> tuple[int, int | None, int | None, str | None]:
    """(executions, cov, ft, crash file) from libFuzzer's output.

    Executions come from -print_final_stats (summed over fork-mode jobs) or,
    failing that, the last progress line; cov and ft from the last line that
    has them.
    """
    execs = [int(n) for n in _EXECS.findall(text)]
    progress = [int(n) for n in _PROGRESS.findall(text)]
    executions = sum(execs) if execs else max(progress, default=0)
    stats = _STATS.findall(text)
    cov, ft = (int(stats[-1][0]), int(stats[-1][1])) if stats else (None, None)
    crash = _CRASH.findall(text)
    return executions, cov, ft, crash[-1] if crash else None


def run_fuzzer(
    binary: Path,
    spec: str,
    seeds: Path,
    seconds: int,
    jobs: int = 1,
    extra: list[str] | None = None,
) -> FuzzRun:
    """Fuzz for `seconds` with seeds as a read-only corpus; everything written
    (corpus, crash files, log) stays in binary's directory."""
    out_dir = binary.parent
    corpus = out_dir / "corpus"
    artifacts = out_dir / "artifacts"
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    log = out_dir / "fuzz.log"
    argv = [
        str(binary),
        f"-max_total_time={seconds}",
        f"-artifact_prefix={artifacts}/",
        *RUN_FLAGS,
        *([f"-fork={jobs}"] if jobs > 1 else []),
        *(extra or []),
        # libFuzzer writes new inputs only into the first directory.
        str(corpus),
        str(seeds),
    ]
    (out_dir / "fuzz.cmd").write_text(" ".join(argv) + "\n")
    with log.open("w") as out:
        proc = subprocess.run(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=seconds + 300,
            check=False,
            cwd=out_dir,
        )
    executions, cov, ft, crash = parse_output(log.read_text(errors="replace"))
    crash_path = None
    if crash is not None:
        crash_path = Path(crash) if Path(crash).is_absolute() else out_dir / crash
    return FuzzRun(
        spec=spec,
        returncode=proc.returncode,
        executions=executions,
        cov=cov,
        ft=ft,
        corpus=corpus,
        corpus_files=sum(1 for p in corpus.iterdir() if p.is_file()),
        crash=crash_path,
        log=log,
    )


def replay(binary: Path, corpus: Path) -> subprocess.CompletedProcess[str]:
    """Run every input in corpus once (-runs=0), printing libFuzzer's INITED line."""
    return subprocess.run(
        [str(binary), "-runs=0", *RUN_FLAGS, str(corpus)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )
