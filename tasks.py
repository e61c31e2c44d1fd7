"""invoke tasks: thin wrappers that parse options and call toolchain.project.

`invoke --list` shows them; `invoke --help TASK` documents each option.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from invoke import Collection, Context, Exit, task

from toolchain import project
from toolchain.build import BuildError
from toolchain.render import CLANG_FORMAT_STYLE
from toolchain.spec import SpecError
from toolchain.targets import load_target, target_names
from toolchain.tools import MissingTool, require

ROOT = Path(__file__).resolve().parent
LAYOUT = project.Layout(ROOT)

APT_PACKAGES = [
    "gcc",
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "linux-libc-dev-arm64-cross",
    "qemu-user",
    "clang-format-14",
    "qemu-system-x86",
    "qemu-system-common",
]


def _cfg(c: Context, key: str) -> object:
    return c.config.blkgen[key]


def _fail(message: str) -> Exit:
    return Exit(f"error: {message}", code=1)


def _step(message: str) -> None:
    print(f"==> {message}", flush=True)


def _spec_names(c: Context, spec: list[str] | None) -> list[str]:
    return list(spec) if spec else [str(_cfg(c, "spec"))]


@task(help={"python-only": "install only the Python packages"})
def setup(c: Context, python_only: bool = False) -> None:
    """Install everything the toolkit needs (Debian packages, Python packages)."""
    if not python_only:
        missing = [
            p
            for p in APT_PACKAGES
            if subprocess.run(
                ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True
            ).stdout.strip()
            != "install ok installed"
        ]
        if missing:
            sudo = "" if _is_root() else "sudo "
            _step(f"installing Debian packages: {' '.join(missing)}")
            c.run(f"{sudo}apt-get update -qq", pty=False)
            c.run(
                f"{sudo}env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                f"{' '.join(missing)}",
                pty=False,
            )
        else:
            _step("Debian packages: all present")
    _step("Python packages")
    c.run(f"{shlex.quote(sys.executable)} -m pip install -q -r {ROOT / 'requirements.txt'}")
    for program in ("clang-format-14", "aarch64-linux-gnu-gcc", "qemu-aarch64", "gcc"):
        require(program)
    _step("setup complete")


def _is_root() -> bool:
    import os

    return os.geteuid() == 0


@task(
    iterable=["spec"],
    help={
        "spec": "spec name or path (repeatable); default: every spec in spec/",
        "check": "change nothing; fail if generated/ differs from the specs",
    },
)
def gen(c: Context, spec: list[str] | None = None, check: bool = False) -> None:
    """Render specs into generated/ (only changed files are written)."""
    try:
        report = project.generate(LAYOUT, list(spec) if spec else None, check)
    except SpecError as exc:
        raise _fail(f"invalid spec:\n{exc}") from None
    except MissingTool as exc:
        raise _fail(str(exc)) from None
    if check:
        drift = report.stale + report.extra
        if drift:
            lines = "\n".join(f"  {p}" for p in drift)
            raise _fail(f"generated files are stale or hand-edited:\n{lines}\nrun: invoke gen")
        print(f"generated/ is up to date ({len(report.unchanged)} files)")
        return
    for rel in report.written:
        print(f"wrote   {rel}")
    for rel in report.extra:
        print(f"removed {rel}")
    print(f"{len(report.written)} written, {len(report.unchanged)} unchanged")


def _build(spec: str, target: str) -> Path:
    start = time.monotonic()
    try:
        result = project.build_one(LAYOUT, spec, target)
    except (BuildError, MissingTool, FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None
    what = "built" if result.rebuilt else "up to date"
    rel = result.binary.relative_to(ROOT)
    print(f"{what:10} {rel}  ({time.monotonic() - start:.1f}s)", flush=True)
    return result.binary


@task(
    iterable=["spec"],
    help={
        "spec": "spec to build (repeatable); default from invoke.yaml (virtio-blk)",
        "target": f"target: {', '.join(target_names())}; default from invoke.yaml (rk3588)",
        "all": "every spec for every target in invoke.yaml",
    },
)
def build(c: Context, spec: list[str] | None = None, target: str = "", all: bool = False) -> None:
    """Generate, then build build/<target>/<spec>/vhost-user-blk."""
    names = (
        [p.stem for p in sorted(LAYOUT.spec_dir.glob("*.yaml"))] if all else _spec_names(c, spec)
    )
    targets = list(_cfg(c, "targets")) if all else [target or str(_cfg(c, "target"))]
    gen(c, spec=None if all else names)
    for t in targets:
        try:
            load_target(t)
        except ValueError as exc:
            raise _fail(str(exc)) from None
        for name in names:
            _build(name, t)


@task(help={"fix": "reformat instead of checking"})
def fmt(c: Context, fix: bool = False) -> None:
    """clang-format 14 (hvisor-tool's style) over generated/ and the runtime; ruff for Python."""
    exe = require("clang-format-14")
    files = sorted(
        str(p) for d in ("generated", "toolchain/runtime") for p in (ROOT / d).rglob("*.[ch]")
    )
    mode = "-i" if fix else "-n --Werror"
    c.run(f"{exe} --style={shlex.quote(CLANG_FORMAT_STYLE)} {mode} {' '.join(files)}")
    ruff = [sys.executable, "-m", "ruff"]
    c.run(
        shlex.join(
            [*ruff, "format", *([] if fix else ["--check"]), "toolchain", "tests", "tasks.py"]
        )
    )
    c.run(
        shlex.join([*ruff, "check", *(["--fix"] if fix else []), "toolchain", "tests", "tasks.py"])
    )
    print("format: clean" if not fix else "format: fixed")


@task(help={"args": "extra pytest arguments, e.g. '-k flush -x'"})
def test(c: Context, args: str = "") -> None:
    """Build every spec for every target and run the pytest suite."""
    build(c, all=True)
    extra = args or str(_cfg(c, "pytest_args"))
    c.run(f"{shlex.quote(sys.executable)} -m pytest {extra}", pty=False)


@task
def ci(c: Context) -> None:
    """What CI runs: gen --check, format check, every spec x target, all tests."""
    start = time.monotonic()
    _step("generated/ matches the specs")
    gen(c, check=True)
    _step("format")
    fmt(c)
    _step("build and test")
    test(c)
    print(f"ci: passed in {time.monotonic() - start:.0f}s")


@task
def clean(c: Context) -> None:
    """Remove build/ (generated/ is committed and stays)."""
    shutil.rmtree(LAYOUT.build_dir, ignore_errors=True)
    print("removed build/")


ns = Collection(setup, gen, build, test, fmt, ci, clean)
ns.configure(
    {
        "blkgen": {
            "spec": project.DEFAULT_SPEC,
            "target": project.DEFAULT_TARGET,
            "targets": target_names(),
            "pytest_args": "",
        },
        "run": {"echo": False},
    }
)
