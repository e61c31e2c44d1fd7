"""`--spec PATH`: a spec file anywhere is generated and built like a shipped spec.

Its output goes to build/generated/<stem>/, never into the committed generated/.

Each test runs `python3 -m invoke` in a scratch copy of the project, so the
checkout's generated/ and build/ are never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from toolchain import project
from toolchain.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("spec", "templates", "generated", "docs", "toolchain", "tasks.py", "invoke.yaml")


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A copy of the project at tmp_path/repo (tmp_path/elsewhere is outside it)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, repo / name)
    (tmp_path / "elsewhere").mkdir()
    return repo


def _invoke(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=repo, env=env, capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip


def _outside_spec(repo: Path, name: str, serial: str = "elsewhere-blk") -> Path:
    path = repo.parent / "elsewhere" / f"{name}.yaml"
    text = (repo / "spec" / "procq.yaml").read_text()
    path.write_text(text.replace("serial: hvisor-virblk", f"serial: {serial}"))
    assert path.read_text() != text
    return path


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _banners(generated: Path) -> list[str]:
    return [(generated / n).read_text().split("*/", 1)[0] for n in ("virtio_blk.c", "virtio_blk.h")]


def test_build_of_a_spec_outside_the_repository_generates_and_builds_under_its_stem(
    scratch: Path,
) -> None:
    spec = _outside_spec(scratch, "path-only-spec")
    shipped = _snapshot(scratch / "generated")
    proc = _invoke(scratch, "build", "--spec", str(spec), "--target", "host")
    assert proc.returncode == 0, proc.stderr
    assert "build/host/path-only-spec/vhost-user-blk" in proc.stdout
    assert (scratch / "build" / "host" / "path-only-spec" / "vhost-user-blk").is_file()
    generated = scratch / "build" / "generated" / "path-only-spec"
    manifest = json.loads((generated / "manifest.json").read_text())
    assert (manifest["spec"], manifest["serial"]) == ("path-only-spec", "elsewhere-blk")
    assert manifest["source"] == "../elsewhere/path-only-spec.yaml"
    for banner in _banners(generated):
        assert " * Spec: ../elsewhere/path-only-spec.yaml (sha256 " in banner
        assert " * Regenerate: invoke gen --spec ../elsewhere/path-only-spec.yaml" in banner
        assert str(scratch.parent) not in banner
    assert _snapshot(scratch / "generated") == shipped
    check = _invoke(scratch, "gen", "--check")  # the committed tree still matches its specs
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("task", [["gen"], ["build", "--target", "host"]], ids=lambda t: t[0])
def test_a_spec_outside_spec_named_like_a_shipped_one_is_refused_and_generated_is_untouched(
    scratch: Path, task: list[str]
) -> None:
    spec = _outside_spec(scratch, "virtio-blk")
    before = _snapshot(scratch / "generated")
    proc = _invoke(scratch, *task, "--spec", str(spec))
    assert proc.returncode == 1
    assert proc.stderr == (
        f"error: {spec} is named like the shipped spec/virtio-blk.yaml and would replace "
        "its builds in build/; rename the file, or pass --force to replace them\n"
    )
    assert _snapshot(scratch / "generated") == before
    assert not (scratch / "build" / "host" / "virtio-blk").exists()


def test_force_generates_beside_the_shipped_output_and_records_the_path_relative_to_the_root(
    scratch: Path,
) -> None:
    spec = _outside_spec(scratch, "virtio-blk")
    shipped = _snapshot(scratch / "generated")
    proc = _invoke(scratch, "gen", "--spec", str(spec), "--force")
    assert proc.returncode == 0, proc.stderr
    assert _snapshot(scratch / "generated") == shipped
    generated = scratch / "build" / "generated" / "virtio-blk"
    manifest = json.loads((generated / "manifest.json").read_text())
    assert (manifest["serial"], manifest["source"]) == (
        "elsewhere-blk",
        "../elsewhere/virtio-blk.yaml",
    )
    for banner in _banners(generated):
        assert " * Regenerate: invoke gen --spec ../elsewhere/virtio-blk.yaml" in banner
        assert str(scratch.parent) not in banner


def test_a_path_into_spec_is_the_shipped_spec_and_keeps_its_banner(scratch: Path) -> None:
    layout, names = project.resolve(project.Layout(scratch), [str(scratch / "spec/procq.yaml")])
    assert (names, layout.outside) == (["procq"], ())
    (spec,) = project.specs(layout, names)
    assert (spec.source, spec.gen_argument) == ("spec/procq.yaml", "procq")


def test_a_relative_path_outside_the_root_is_recorded_as_spelled_from_the_root(
    scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _outside_spec(scratch, "relative-spec")
    monkeypatch.chdir(scratch)
    spec = load_spec(Path("../elsewhere/relative-spec.yaml"), scratch)
    assert spec.source == "../elsewhere/relative-spec.yaml"
    monkeypatch.chdir(scratch.parent)
    spec = load_spec(Path("elsewhere/relative-spec.yaml"), scratch)
    assert spec.source == "../elsewhere/relative-spec.yaml"


def test_two_outside_specs_with_one_stem_are_refused(scratch: Path) -> None:
    first = _outside_spec(scratch, "twin")
    second = scratch.parent / "twin.yaml"
    shutil.copy(first, second)
    with pytest.raises(project.SpecArgumentError, match="are both named 'twin'"):
        project.resolve(project.Layout(scratch), [str(first), str(second)])


def _with_tests(repo: Path) -> Path:
    shutil.copytree(ROOT / "tests", repo / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    return repo


def test_invoke_test_with_a_spec_path_runs_the_device_suite_on_that_spec_alone(
    scratch: Path,
) -> None:
    spec = _outside_spec(_with_tests(scratch), "tested-elsewhere")
    proc = _invoke(
        scratch, "test", "--spec", str(spec), "--targets", "host", "--transports", "vhost-user",
        "--args", "-q -p no:cacheprovider tests/test_device.py -k get_id_returns",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert "1 passed" in proc.stdout, proc.stdout[-2000:]
    assert "device tests passed: vhost-user x host: 1" in proc.stdout
    assert "built      build/host/tested-elsewhere/vhost-user-blk" in proc.stdout
    assert not (scratch / "build" / "host" / "virtio-blk").exists()  # the others untouched
    assert not (scratch / "generated" / "tested-elsewhere").exists()
    assert (scratch / "build" / "generated" / "tested-elsewhere" / "virtio_blk.c").is_file()


def test_an_invalid_spec_in_spec_is_reported_and_the_others_are_still_tested(
    scratch: Path,
) -> None:
    _with_tests(scratch)
    for name in ("direct", "discard", "inline", "per-queue", "procq", "read-only"):
        (scratch / "spec" / f"{name}.yaml").unlink()  # keep the run short
        shutil.rmtree(scratch / "generated" / name)
    (scratch / "spec" / "scratch.yaml").write_text("device:\n  queue_size: 100\n")
    proc = _invoke(
        scratch, "test", "--targets", "host", "--transports", "vhost-user",
        "--args", "-q -p no:cacheprovider tests/test_device.py -k get_id_returns",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr
    assert "error: spec/scratch.yaml is invalid, not tested:" in proc.stdout
    assert "device.queue_size: 100 is not a power of two" in proc.stdout
    assert "1 passed" in proc.stdout, proc.stdout[-2000:]  # virtio-blk, the valid one
    assert "spec/scratch.yaml is invalid, so the device suite left it out" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: spec/scratch.yaml invalid (above), so not tested; "
        "the suite passed on the other specs"
    )
