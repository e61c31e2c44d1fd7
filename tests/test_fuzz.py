"""The libFuzzer harness builds for every spec and passes its seed corpus.

`invoke fuzz` does the actual fuzzing; these keep the harness compiled and
its invariants checked on every run, and the committed seeds in step with
tests/fuzz/make_corpus.py.
"""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from toolchain import fuzz, project
from toolchain.tools import MissingTool

from .conftest import LAYOUT, ROOT

MAKE_CORPUS = ROOT / "tests" / "fuzz" / "make_corpus.py"


def test_committed_seed_corpus_is_what_make_corpus_writes(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(MAKE_CORPUS), str(tmp_path)], check=True)
    seeds = LAYOUT.fuzz_seeds
    written = sorted(p.name for p in tmp_path.iterdir())
    committed = sorted(p.name for p in seeds.iterdir())
    assert written == committed, "run: python3 tests/fuzz/make_corpus.py"
    _, mismatch, errors = filecmp.cmpfiles(seeds, tmp_path, written, shallow=False)
    assert mismatch == [] and errors == [], "run: python3 tests/fuzz/make_corpus.py"


def test_libfuzzer_output_is_parsed() -> None:
    text = (
        "#2\tINITED cov: 90 ft: 162 corp: 24/6349b exec/s: 0 rss: 32Mb\n"
        "#4096\tpulse  cov: 101 ft: 470 corp: 150/19Kb lim: 1220\n"
        "#5000\tDONE   cov: 101 ft: 479 corp: 157/20Kb lim: 1220\n"
        "stat::number_of_executed_units: 5000\n"
    )
    assert fuzz.parse_output(text) == (5000, 101, 479, None)
    crash = "==1== ERROR: libFuzzer: deadly signal\nTest unit written to ./a/crash-0123\n"
    assert fuzz.parse_output(crash) == (0, None, None, "./a/crash-0123")


@pytest.mark.parametrize("spec", LAYOUT.spec_names())
def test_harness_replays_the_seed_corpus_without_a_finding(spec: str, tmp_path: Path) -> None:
    try:
        binary = project.build_fuzzer(LAYOUT, spec).binary
    except MissingTool as exc:
        pytest.skip(f"fuzzer toolchain missing ({exc})")
    # A copy: libFuzzer must never write into the committed seed directory.
    corpus = tmp_path / "corpus"
    shutil.copytree(LAYOUT.fuzz_seeds, corpus)
    proc = fuzz.replay(binary, corpus)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "INITED" in output, output
    _, cov, _, crash = fuzz.parse_output(output)
    assert crash is None, output
    assert cov is not None and cov > 0, output
