"""The same commit, built with the same compiler in two folders, gives the same bytes.

Flash manifests compare binaries by sha256; a binary that embedded the
folder it was built in (``__FILE__`` in log lines, the compile directory in
debug info) would differ between two clones of one commit.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("target", ["rk3588", "host"])
def test_two_clones_of_one_commit_build_byte_identical_binaries(
    tmp_path: Path, target: str
) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout of the project")
    digests = []
    for name in ("first-clone", "a/much/deeper/second-clone"):
        clone = tmp_path / name
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        build = subprocess.run(
            [sys.executable, "-m", "invoke", "build", "--spec", "virtio-blk", "--target", target],
            cwd=clone,
            capture_output=True,
            text=True,
            check=False,
        )
        assert build.returncode == 0, build.stdout + build.stderr
        binary = clone / "build" / target / "virtio-blk" / "vhost-user-blk"
        digests.append(hashlib.sha256(binary.read_bytes()).hexdigest())
        assert str(clone).encode() not in binary.read_bytes()
    assert digests[0] == digests[1]
