"""`invoke hvisor`: installing a generated pair into an hvisor-tool tree and building it.

Runs against a fake tree written by the test (tests/fake_hvisor_tree.py):
hvisor-tool's layout and make variables, the project's own runtime headers,
stub framework functions. The fake `hvisor` prints the device's registration
(features, queues), run under qemu-aarch64 to show the pair was linked in.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_hvisor_tree import make_fake_tree
from toolchain import board, hvisor, project
from toolchain.flash import FlashError
from toolchain.proc import sha256_file
from toolchain.targets import load_target

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = project.Layout(ROOT)
CC = load_target("rk3588").cc
TIMEOUT = 120

pytestmark = pytest.mark.skipif(shutil.which(CC) is None, reason=f"{CC} not installed")


def settings() -> hvisor.MakeSettings:
    """Make settings as `invoke hvisor` uses them, with a test-sized timeout."""
    return board.make_settings(jobs=2, timeout=TIMEOUT)


def pair_of(tree: Path) -> dict[str, bytes]:
    """The two pair files' bytes in a tree."""
    return {rel: (tree / rel).read_bytes() for rel in (hvisor.TREE_C, hvisor.TREE_H)}


def install(
    tree: Path, out: Path, spec: str = "virtio-blk", pair: Path | None = None
) -> hvisor.BuildReport:
    """install_and_build with a shipped spec's pair (or another pair directory)."""
    return hvisor.install_and_build(
        tree,
        pair or LAYOUT.generated_for(spec),
        spec,
        board.spec_sha256(LAYOUT, spec),
        out,
        settings(),
    )


def generated_spec_sha256(spec: str) -> str:
    """The spec hash generated/<spec>/ was rendered with (its manifest.json, like its banner)."""
    return json.loads((LAYOUT.generated_for(spec) / "manifest.json").read_text())["sha256"]


def git(tree: Path, *args: str) -> str:
    """Run git in tree (bounded), return stdout."""
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    proc = subprocess.run(
        ["git", "-C", str(tree), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env=env,
    )
    return proc.stdout


def run_fake_hvisor(binary: Path) -> str:
    """Run the fake tree's static AArch64 hvisor under qemu-aarch64."""
    proc = subprocess.run(
        ["qemu-aarch64", str(binary)], capture_output=True, text=True, timeout=30, check=True
    )
    return proc.stdout.strip()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A fresh fake hvisor-tool tree (not a git checkout)."""
    return make_fake_tree(tmp_path / "hvisor-tool")


@pytest.fixture
def git_tree(tree: Path) -> Path:
    """The fake tree as a clean git checkout."""
    git(tree, "init", "-q")
    git(tree, "add", "-A")
    git(tree, "commit", "-q", "-m", "fake hvisor-tool")
    return tree


@pytest.mark.parametrize("spec", project.Layout(ROOT).spec_names())
def test_install_build_restore(tree: Path, tmp_path: Path, spec: str) -> None:
    """Every shipped spec installs, builds warning-free, links, and restores byte for byte."""
    original = pair_of(tree)
    report = install(tree, tmp_path / "out", spec)

    assert report.pair_warnings == []
    binary = Path(report.binary)
    assert binary.read_bytes()[:4] == b"\x7fELF"
    assert int.from_bytes(binary.read_bytes()[18:20], "little") == 183  # EM_AARCH64
    assert report.sha256 == sha256_file(binary) == sha256_file(tree / hvisor.BINARY)
    assert report.size == binary.stat().st_size
    assert "ARCH=arm64" in report.command
    assert f"CC={CC}" in report.command
    assert "LOG=LOG_INFO" in report.command
    assert report.command.endswith(" all")
    assert Path(report.log).read_text().startswith("$ make -C")
    assert report.git is False
    assert (tree / hvisor.TREE_C).read_bytes() == (
        LAYOUT.generated_for(spec) / "virtio_blk.c"
    ).read_bytes()

    manifest = json.loads((LAYOUT.generated_for(spec) / "manifest.json").read_text())
    out = run_fake_hvisor(binary)
    assert out == (
        f"features={manifest['feature_mask']} queues={manifest['num_queues']} "
        f"queue_max={manifest['queue_size']}"
    )
    record = hvisor.load_build_record(tmp_path / "out")
    assert record is not None and record["sha256"] == report.sha256

    restored = hvisor.restore(tree)
    assert pair_of(tree) == original
    assert not (tree / hvisor.STATE_DIR).exists()
    assert set(restored.files) == {hvisor.TREE_C, hvisor.TREE_H}


def test_reinstall_other_spec_keeps_first_originals(tree: Path, tmp_path: Path) -> None:
    """Installing over our own install replaces it; restore still yields the originals."""
    original = pair_of(tree)
    install(tree, tmp_path / "a", "virtio-blk")
    second = install(tree, tmp_path / "b", "procq")
    assert second.reinstalled
    assert (tree / hvisor.TREE_C).read_bytes() == (
        LAYOUT.generated_for("procq") / "virtio_blk.c"
    ).read_bytes()
    hvisor.restore(tree)
    assert pair_of(tree) == original


def test_refuses_non_tree(tmp_path: Path) -> None:
    """A directory without hvisor-tool's layout is refused, naming what is missing."""
    (tmp_path / "tools").mkdir()
    with pytest.raises(
        hvisor.HvisorError, match=r"not an hvisor-tool tree: missing tools/Makefile"
    ):
        install(tmp_path, tmp_path / "out")
    with pytest.raises(hvisor.HvisorError, match="no such directory"):
        install(tmp_path / "absent", tmp_path / "out")


def test_refuses_empty_cjson_submodule(tree: Path, tmp_path: Path) -> None:
    """An extracted tree without the cJSON submodule gets the exact remedy."""
    shutil.rmtree(tree / "cJSON")
    (tree / "cJSON").mkdir()
    with pytest.raises(hvisor.HvisorError, match="git submodule update --init"):
        install(tree, tmp_path / "out")


def test_refuses_dirty_git_tree(git_tree: Path, tmp_path: Path) -> None:
    """Uncommitted changes to the pair are never overwritten."""
    edited = git_tree / hvisor.TREE_C
    edited.write_text(edited.read_text() + "/* local edit */\n")
    before = pair_of(git_tree)
    with pytest.raises(hvisor.HvisorError, match="uncommitted changes"):
        install(git_tree, tmp_path / "out")
    assert pair_of(git_tree) == before
    assert not (git_tree / hvisor.STATE_DIR).exists()


def test_git_tree_own_install_is_not_dirty(git_tree: Path, tmp_path: Path) -> None:
    """Our own installed pair may be replaced; restore leaves `git status` clean."""
    first = install(git_tree, tmp_path / "a", "virtio-blk")
    assert first.git and first.tree_revision
    changed = git(git_tree, "status", "--porcelain").split("\n")
    assert sorted(line[3:] for line in changed if line) == sorted([hvisor.TREE_C, hvisor.TREE_H])
    second = install(git_tree, tmp_path / "b", "inline")
    assert second.reinstalled
    hvisor.restore(git_tree)
    assert git(git_tree, "status", "--porcelain") == ""


def test_failed_build_restores(tree: Path, tmp_path: Path) -> None:
    """A pair that does not compile leaves the tree (sources and old binary) as it was."""
    subprocess.run(
        ["make", "-C", str(tree / "tools"), *settings().argv(tree)[3:]],
        capture_output=True,
        timeout=TIMEOUT,
        check=True,
    )
    old_binary = (tree / hvisor.BINARY).read_bytes()
    original = pair_of(tree)
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(LAYOUT.generated_for("virtio-blk") / "virtio_blk.h", broken)
    (broken / "virtio_blk.c").write_text('#error "deliberately broken"\n')

    with pytest.raises(hvisor.HvisorError, match="deliberately broken"):
        install(tree, tmp_path / "out", pair=broken)
    assert pair_of(tree) == original
    assert (tree / hvisor.BINARY).read_bytes() == old_binary
    assert not (tree / hvisor.STATE_DIR).exists()
    assert "deliberately broken" in (tmp_path / "out" / "make.log").read_text()


def test_warning_in_pair_fails_and_restores(tree: Path, tmp_path: Path) -> None:
    """A warning from one of our two files is a failure, and the tree is put back."""
    original = pair_of(tree)
    noisy = tmp_path / "noisy"
    noisy.mkdir()
    shutil.copy(LAYOUT.generated_for("virtio-blk") / "virtio_blk.h", noisy)
    text = (LAYOUT.generated_for("virtio-blk") / "virtio_blk.c").read_text()
    (noisy / "virtio_blk.c").write_text(text + "\nstatic int unused_helper(void) { return 1; }\n")
    with pytest.raises(hvisor.HvisorError, match=r"virtio_blk\.c:\d+:\d+: warning: .*unused"):
        install(tree, tmp_path / "out", pair=noisy)
    assert pair_of(tree) == original
    assert not (tree / hvisor.STATE_DIR).exists()


def test_failed_reinstall_keeps_previous_install(tree: Path, tmp_path: Path) -> None:
    """A failing build over our own install puts our previous pair and its record back."""
    original = pair_of(tree)
    install(tree, tmp_path / "a", "virtio-blk")
    good = pair_of(tree)
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(LAYOUT.generated_for("virtio-blk") / "virtio_blk.h", broken)
    (broken / "virtio_blk.c").write_text("this is not C\n")
    with pytest.raises(hvisor.HvisorError, match="build failed"):
        install(tree, tmp_path / "b", "procq", pair=broken)
    assert pair_of(tree) == good
    state = hvisor.read_state(tree)
    assert state is not None and state["spec"] == "virtio-blk"
    hvisor.restore(tree)
    assert pair_of(tree) == original


def test_edits_after_install_are_protected(tree: Path, tmp_path: Path) -> None:
    """Hand edits to an installed pair block both reinstall and restore."""
    install(tree, tmp_path / "a")
    edited = tree / hvisor.TREE_H
    edited.write_text(edited.read_text() + "/* hand edit */\n")
    with pytest.raises(hvisor.HvisorError, match="changed since blkgen installed"):
        install(tree, tmp_path / "b")
    with pytest.raises(hvisor.HvisorError, match="changed since blkgen installed"):
        hvisor.restore(tree)
    assert edited.read_text().endswith("/* hand edit */\n")


def test_restore_without_install(tree: Path) -> None:
    """--restore on an untouched tree says there is nothing to restore."""
    with pytest.raises(hvisor.HvisorError, match="nothing to restore"):
        hvisor.restore(tree)


def test_board_glue_records_artifact(tree: Path, tmp_path: Path) -> None:
    """board.build_hvisor writes build/hvisor/<spec>/, which flash picks up with its facts."""
    root = tmp_path / "proj"
    root.mkdir()
    for d in ("spec", "generated"):
        (root / d).symlink_to(ROOT / d)
    layout = project.Layout(root)
    with pytest.raises(FlashError, match="invoke hvisor --tree"):
        board.hvisor_artifact(layout, "virtio-blk")
    report = board.build_hvisor(layout, tree, "virtio-blk", jobs=2, timeout=TIMEOUT)
    text = board.format_build(report, root)
    assert "not a git checkout: the uncommitted-changes check did not apply" in text
    assert "warnings in the pair: none" in text
    artifact = board.hvisor_artifact(layout, "virtio-blk")
    assert artifact.path == root / "build/hvisor/virtio-blk/hvisor"
    assert artifact.facts["spec_sha256"] == generated_spec_sha256("virtio-blk")
    assert str(artifact.facts["compiler"]).startswith(CC)
    assert artifact.facts["target"] == "rk3588"


def test_flash_takes_a_build_after_a_comment_edit_and_refuses_it_after_a_real_change(
    tree: Path, tmp_path: Path
) -> None:
    """hvisor_artifact compares the build's spec hash with the spec's: comments are no change."""
    root = tmp_path / "proj"
    root.mkdir()
    shutil.copytree(ROOT / "spec", root / "spec")
    (root / "generated").symlink_to(ROOT / "generated")
    layout = project.Layout(root)
    board.build_hvisor(layout, tree, "virtio-blk", jobs=2, timeout=TIMEOUT)
    spec = root / "spec/virtio-blk.yaml"
    text = spec.read_text()
    commented = text.replace("queue_size: 512\n", "queue_size: 512  # unchanged\n")
    spec.write_text("# a comment-only edit, after the build\n" + commented)
    artifact = board.hvisor_artifact(layout, "virtio-blk")
    assert artifact.facts["spec_sha256"] == generated_spec_sha256("virtio-blk")
    spec.write_text(text.replace("queue_size: 512", "queue_size: 1024"))
    with pytest.raises(FlashError, match=r"built from an older spec/virtio-blk\.yaml; rebuild it"):
        board.hvisor_artifact(layout, "virtio-blk")


def test_cli_refuses_non_tree(tmp_path: Path) -> None:
    """`invoke hvisor` on a non-tree exits 1 with the reason."""
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "hvisor", "--tree", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "is not an hvisor-tool tree" in proc.stderr
