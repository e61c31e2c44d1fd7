"""invoke tasks: thin wrappers that parse options and call toolchain.project.

`invoke --list` shows them; `invoke --help TASK` documents each option.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import cast

from invoke import Collection, Context, Exit

from toolchain import board, cli, flash, hvisor, project
from toolchain import fuzz as fuzzing
from toolchain import mutants as mutation
from toolchain.bench.stall import StallConfig, run_stall
from toolchain.bridge import differential
from toolchain.build import BuildError
from toolchain.cli import task
from toolchain.junit import totals, totals_of
from toolchain.render import CLANG_FORMAT_STYLE, TemplateError
from toolchain.show import describe
from toolchain.spec import SpecError
from toolchain.targets import load_target, target_names
from toolchain.tools import MissingTool, require

ROOT = Path(__file__).resolve().parent
cli.quiet_broken_pipe()  # `invoke --list | head`; tasks' own errors: cli.Executor
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
    "e2fsprogs",
    "openssh-client",
    "openssh-server",
    "make",
    "git",
    "clang-14",
    "libclang-rt-14-dev",
    "qemu-system-arm",  # invoke e2e --arch arm64 (qemu-system-aarch64)
]


def _cfg(c: Context, key: str) -> object:
    return c.config.blkgen[key]


def _fail(message: str) -> Exit:
    return Exit(f"error: {message}", code=1)


def _step(message: str) -> None:
    print(f"==> {message}", flush=True)


def _spec_names(c: Context, spec: list[str] | None) -> list[str]:
    return list(spec) if spec else [str(_cfg(c, "spec"))]


FORCE_HELP = (
    "use a spec file outside spec/ even when it is named like a shipped spec "
    "(its builds then replace that spec's in build/; generated/ is never touched)"
)


def _resolve(args: list[str], force: bool) -> tuple[project.Layout, list[str]]:
    """The one reading of --spec: names or paths -> a layout that knows them, and names."""
    try:
        return project.resolve(LAYOUT, args, force)
    except SpecError as exc:
        raise _fail(f"invalid spec:\n{exc}") from None
    except project.SpecArgumentError as exc:
        raise _fail(str(exc)) from None


def _shipped(arg: str, task_name: str) -> str:
    """The name of a spec the pytest suites know (spec/*.yaml); they take no other."""
    layout, (name,) = _resolve([arg], force=False)
    if layout.outside:
        raise _fail(
            f"{task_name} runs the test suites, which know only the specs in spec/; "
            f"copy {arg} into spec/ first"
        )
    return name


def _gen(
    layout: project.Layout, names: list[str] | None, check: bool = False, diff: bool = False
) -> None:
    """Render names (resolved by _resolve; None: every shipped spec) and report;
    with diff, print what rendering would change instead."""
    try:
        if diff:
            text = project.generate_diff(layout, names)
            sys.stdout.write(text or "no change: generated files match the specs\n")
            return
        report = project.generate(layout, names, check)
    except SpecError as exc:
        raise _fail(f"invalid spec:\n{exc}") from None
    except (MissingTool, TemplateError) as exc:
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
    if not python_only:
        from toolchain.e2e import cli as e2e_cli
        from toolchain.e2e.debian import DebianError

        try:  # the e2e guest's packages are apt-get downloaded for amd64 and arm64
            e2e_cli.prepare_host(_step)
        except DebianError as exc:
            raise _fail(str(exc)) from None
    _step("Python packages")
    c.run(f"{shlex.quote(sys.executable)} -m pip install -q -r {ROOT / 'requirements.txt'}")
    for program in ("clang-format-14", "aarch64-linux-gnu-gcc", "qemu-aarch64", "gcc"):
        require(program)
    try:
        fuzzing.require_toolchain()
    except MissingTool as exc:
        raise _fail(str(exc)) from None
    _step("setup complete")


def _is_root() -> bool:
    return os.geteuid() == 0


@task(
    iterable=["spec"],
    help={
        "spec": "spec name or path (repeatable); default: every spec in spec/",
        "check": "change nothing; fail if generated/ differs from the specs",
        "diff": "change nothing; print the unified diff a gen would apply",
        "force": FORCE_HELP,
    },
)
def gen(
    c: Context,
    spec: list[str] | None = None,
    check: bool = False,
    diff: bool = False,
    force: bool = False,
) -> None:
    """Render specs into generated/ (only changed files are written)."""
    layout, names = _resolve(list(spec), force) if spec else (LAYOUT, None)
    _gen(layout, names, check, diff)


@task(
    help={
        "spec": "spec name or path; default from invoke.yaml (virtio-blk)",
        "force": FORCE_HELP,
    }
)
def show(c: Context, spec: str = "", force: bool = False) -> None:
    """A spec with every default filled in, its features, and how it differs from the default."""
    layout, (name,) = _resolve([spec or str(_cfg(c, "spec"))], force)
    reference_name = project.DEFAULT_SPEC
    try:
        (model,) = project.specs(layout, [name])
        (reference,) = project.specs(LAYOUT, [reference_name])
    except SpecError as exc:
        raise _fail(f"invalid spec:\n{exc}") from None
    sys.stdout.write(describe(model, reference, "hvisor-tool HEAD's device"))


def _build(layout: project.Layout, spec: str, target: str) -> Path:
    start = time.monotonic()
    try:
        result = project.build_one(layout, spec, target)
    except (BuildError, MissingTool, FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None
    what = "built" if result.rebuilt else "up to date"
    rel = result.binary.relative_to(ROOT)
    print(f"{what:10} {rel}  ({time.monotonic() - start:.1f}s)", flush=True)
    return result.binary


@task(
    iterable=["spec"],
    help={
        "spec": "spec name or path to build (repeatable); default from invoke.yaml (virtio-blk)",
        "target": f"target: {', '.join(target_names())}; default from invoke.yaml (rk3588)",
        "all": "every spec for every target in invoke.yaml",
        "force": FORCE_HELP,
    },
)
def build(
    c: Context, spec: list[str] | None = None, target: str = "", all: bool = False,
    force: bool = False,
) -> None:  # fmt: skip
    """Generate, then build build/<target>/<spec>/vhost-user-blk."""
    layout, names = (LAYOUT, LAYOUT.spec_names()) if all else _resolve(_spec_names(c, spec), force)
    targets = list(_cfg(c, "targets")) if all else [target or str(_cfg(c, "target"))]
    _gen(layout, None if all else names)
    for t in targets:
        try:
            load_target(t)
        except ValueError as exc:
            raise _fail(str(exc)) from None
        for name in names:
            _build(layout, name, t)


@task(help={"fix": "reformat instead of checking"})
def fmt(c: Context, fix: bool = False) -> None:
    """clang-format 14 (hvisor-tool's style) over generated/ and the runtime; ruff for Python."""
    exe = require("clang-format-14")
    files = sorted(
        str(p)
        for d in ("generated", "toolchain/runtime", "toolchain/fuzz", "toolchain/bench")
        for p in (ROOT / d).rglob("*.[ch]")
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


@task(
    iterable=["spec"],
    help={
        "spec": "spec name or path to test (repeatable); default: every spec in spec/ "
        "(an invalid one is reported and the rest are tested)",
        "force": FORCE_HELP,
        "args": "extra pytest arguments, e.g. '-k flush -x' or test files",
        "targets": "comma-separated targets for the device tests, e.g. host-asan,host-tsan; "
        "default from invoke.yaml (rk3588,host)",
        "transports": "comma-separated transports (vhost-user, hvisor, hvisor-tool, upstream); "
        "default: vhost-user and hvisor, plus hvisor-tool with --hvisor-tree",
        "hvisor-tree": "an hvisor-tool checkout: also run the suites on its own daemon "
        "(built with the /dev/hvisor stand-in; the tree is not changed)",
    },
)
def test(
    c: Context, spec: list[str] | None = None, force: bool = False, args: str = "",
    targets: str = "", transports: str = "", hvisor_tree: str = "",
) -> None:  # fmt: skip
    """Build the specs for the targets and run the pytest suite on them."""
    chosen = targets.split(",") if targets else [str(t) for t in _cfg(c, "targets")]
    for t in chosen:
        try:
            load_target(t)
        except ValueError as exc:
            raise _fail(str(exc)) from None
    invalid: list[str] = []
    if spec:
        layout, names = _resolve(list(spec), force)
        _gen(layout, names)
    else:  # each spec on its own: an invalid one must not stop the others
        layout, names = LAYOUT, []
        for name in LAYOUT.spec_names():
            try:
                project.specs(LAYOUT, [name])
            except SpecError as exc:
                print(f"error: spec/{name}.yaml is invalid, not tested:\n{exc}", flush=True)
                invalid.append(name)
                continue
            names.append(name)
        _gen(LAYOUT, names)
    for t in chosen:
        for name in names:
            _build(layout, name, t)
    extra = args or str(_cfg(c, "pytest_args"))
    if spec:
        extra += " --specs " + shlex.quote(",".join(layout.spec_argument(n) for n in names))
    report = LAYOUT.build_dir / "junit" / f"{'-'.join(chosen)}-{time.time_ns()}.xml"
    if hvisor_tree:
        try:
            hvisor.check_tree(Path(hvisor_tree).expanduser())
        except hvisor.HvisorError as exc:
            raise _fail(str(exc)) from None
        extra += f" --hvisor-tree {shlex.quote(str(Path(hvisor_tree).expanduser().resolve()))}"
    if transports:
        extra += f" --transports {shlex.quote(transports)}"
    result = c.run(
        f"{shlex.quote(sys.executable)} -m pytest --targets {shlex.quote(','.join(chosen))} "
        f"--junitxml={shlex.quote(str(report))} {extra}",
        pty=False,
        warn=bool(invalid),
    )
    if invalid:
        ran = "passed" if result is not None and result.ok else "ran"
        raise _fail(
            f"{', '.join(f'spec/{n}.yaml' for n in invalid)} invalid (above), so not "
            f"tested; the suite {ran} on the other specs"
        )


SIM_SUITES = "tests/test_device.py tests/test_hostile_guest.py tests/test_hostile_hvisor.py"


def _differential(c: Context, tree: Path, spec: str, targets: str, args: str) -> None:
    """One suite, three daemons, one table (build/hvisor-sim/differential.md)."""
    out = LAYOUT.build_dir / "hvisor-sim" / "differential"
    out.mkdir(parents=True, exist_ok=True)
    reports = []
    for transport in ("hvisor", "hvisor-tool", "upstream"):
        report = out / f"{transport}.xml"
        _step(f"{spec} on transport {transport} ({targets})")
        c.run(
            f"{shlex.quote(sys.executable)} -m pytest -q -p no:cacheprovider "
            f"--targets {shlex.quote(targets)} --transports {transport} --specs {spec} "
            f"--hvisor-tree {shlex.quote(str(tree))} --junitxml={shlex.quote(str(report))} "
            f"{SIM_SUITES} {args}",
            pty=False,
            warn=True,
        )
        reports.append(report)
    rows = differential.collect(reports)
    columns = [
        f"{t}/{g}" for t in ("hvisor", "hvisor-tool", "upstream") for g in targets.split(",")
    ]
    text = differential.table(rows, columns)
    (out.parent / "differential.md").write_text(text)
    print(text)
    print(f"table: {(out.parent / 'differential.md').relative_to(ROOT)}")


@task(
    name="hvisor-sim",
    help={
        "tree": "root of an hvisor-tool checkout, cJSON filled in (required; never changed)",
        "spec": "run the tree's daemon with this spec's pair (default from invoke.yaml)",
        "upstream": "run the tree's daemon with its own pair (HEAD's device): record, "
        "do not require, what it passes",
        "targets": "rk3588 (arm64 under qemu-aarch64) and/or host (x86_64 native); default: both",
        "args": "extra pytest arguments, e.g. '-k queue_num'",
        "differential": "run the spec on our core (hvisor), on the real daemon with the pair "
        "(hvisor-tool) and with the tree's own pair (upstream); write the side-by-side table",
    },
)
def hvisor_sim(
    c: Context,
    tree: str = "",
    spec: str = "",
    upstream: bool = False,
    targets: str = "rk3588,host",
    args: str = "",
    differential: bool = False,
) -> None:
    """hvisor-tool's own daemon off the board: the device and hostile suites through the bridge."""
    if not tree:
        raise _fail("--tree PATH is required (the root of an hvisor-tool checkout)")
    if upstream and (spec or differential):
        raise _fail("--upstream runs the tree's own pair; it takes no --spec or --differential")
    path = Path(tree).expanduser().resolve()
    try:
        hvisor.check_tree(path)
    except hvisor.HvisorError as exc:
        raise _fail(str(exc)) from None
    name = _shipped(spec or str(_cfg(c, "spec")), "hvisor-sim")
    _gen(LAYOUT, [name])
    if differential:
        _differential(c, path, name, targets, args)
        return
    transport = "upstream" if upstream else "hvisor-tool"
    report = LAYOUT.build_dir / "hvisor-sim" / f"{'upstream' if upstream else name}.xml"
    report.parent.mkdir(parents=True, exist_ok=True)
    _step(
        f"hvisor-tool's daemon from {path} with "
        f"{'its own pair (HEAD) ' if upstream else f'the {name} pair '}on {targets}"
    )
    result = c.run(
        f"{shlex.quote(sys.executable)} -m pytest -q -p no:cacheprovider "
        f"--targets {shlex.quote(targets)} --transports {transport} "
        f"--hvisor-tree {shlex.quote(str(path))} --junitxml={shlex.quote(str(report))} "
        f"--specs {shlex.quote(name)} {SIM_SUITES} {args}",
        pty=False,
        warn=True,
    )
    passed, failed, skipped = totals_of(report)
    print(f"hvisor-sim: {passed} passed, {failed} failed, {skipped} skipped on the real daemon")
    if upstream:
        print(
            "upstream: HEAD's own device, judged by the default spec's tests; its failures "
            f"are findings (docs/hvisor-findings.md). Report: {report.relative_to(ROOT)}"
        )
        if not report.is_file() or passed == 0:
            raise _fail("the daemon did not run the suite (see the output above)")
        return
    if result is None or result.exited != 0:
        raise _fail("the real daemon failed tests with this pair (see above)")


@task(
    help={
        "spec": "spec whose device is mutated; default from invoke.yaml (virtio-blk)",
        "all": "every mutant: those of the default spec on it, each other on the "
        "first spec in spec/ it applies to",
    }
)
def mutants(c: Context, spec: str = "", all: bool = False) -> None:
    """Remove each hardening check in turn: the rule's test must then fail."""
    name = _shipped(spec or str(_cfg(c, "spec")), "mutants")
    plan = mutation.cover(ROOT, name, LAYOUT.spec_names()) if all else [(name, mutation.MUTANTS)]
    verdicts = []
    for spec_name, chosen in plan:
        if all:
            _step(f"mutants of {spec_name}: {len(chosen)}")
        _gen(LAYOUT, [spec_name])
        _build(LAYOUT, spec_name, "host")
        try:
            mine = mutation.run(ROOT, spec_name, chosen)
        except (RuntimeError, ValueError, BuildError) as exc:
            raise _fail(str(exc)) from None
        for v in mine:
            print(f"{'killed  ' if v.killed else 'SURVIVED'}  {v.mutant.name:24} {v.mutant.rule}")
        verdicts += mine
    survivors = [v.mutant.name for v in verdicts if not v.killed]
    if survivors:
        raise _fail(f"no test catches the removal of: {', '.join(survivors)}")
    print(f"mutants: {len(verdicts)} of {len(verdicts)} killed")


@task(
    iterable=["spec"],
    help={
        "spec": "spec to fuzz (repeatable); default from invoke.yaml (virtio-blk)",
        "seconds": "how long to fuzz each spec (default 60)",
        "jobs": "parallel fuzzing processes per spec (libFuzzer -fork)",
        "force": FORCE_HELP,
    },
)
def fuzz(
    c: Context, spec: list[str] | None = None, seconds: int = 60, jobs: int = 1,
    force: bool = False,
) -> None:  # fmt: skip
    """Fuzz the device's request parsing and completion (libFuzzer, ASan + UBSan)."""
    layout, names = _resolve(_spec_names(c, spec), force)
    _gen(layout, names)
    crashed = []
    for name in names:
        try:
            binary = project.build_fuzzer(layout, name).binary
        except (BuildError, MissingTool, FileNotFoundError) as exc:
            raise _fail(str(exc)) from None
        _step(f"fuzzing {name} for {seconds}s ({binary.relative_to(ROOT)})")
        run = fuzzing.run_fuzzer(binary, name, LAYOUT.fuzz_seeds, seconds, jobs)
        print(run.summary(), flush=True)
        if not run.ok:
            crashed.append(name)
            what = run.crash or f"exit status {run.returncode}, no crash file"
            print(f"CRASH in {name}: {what}\n  log: {run.log}", flush=True)
            if run.crash is not None:
                print(f"  reproduce: {binary} {run.crash}", flush=True)
    if crashed:
        raise _fail(f"the fuzzer found a problem in: {', '.join(crashed)}")


@task
def ci(c: Context) -> None:
    """What CI runs: gen --check, format, all tests, sanitizer builds, a bounded fuzz."""
    start = time.monotonic()
    _step("generated/ matches the specs")
    _gen(LAYOUT, None, check=True)
    _step("format")
    fmt(c)
    _step("build and test")
    shutil.rmtree(LAYOUT.build_dir / "junit", ignore_errors=True)
    test(c)
    sanitizer_tests = cast(Mapping[str, list[str]], _cfg(c, "sanitizer_tests"))
    for target, patterns in sanitizer_tests.items():
        paths = LAYOUT.test_files([str(p) for p in patterns])
        _step(f"on the {target} build: {' '.join(str(p.relative_to(ROOT)) for p in paths)}")
        files = " ".join(shlex.quote(str(p)) for p in paths)
        # vhost-user only: the hvisor core races with the device's threads on
        # queue fields exactly as HEAD's does, which TSan rightly reports.
        test(c, args=f"-q {files}", targets=str(target), transports="vhost-user")
    specs = LAYOUT.spec_names()
    per_spec = max(1, int(str(_cfg(c, "fuzz_seconds"))) // len(specs))
    _step(f"fuzz every spec for {per_spec}s")
    fuzz(c, spec=specs, seconds=per_spec)
    _step("every hardening rule's test catches the rule's removal")
    mutants(c, all=True)
    passed, failed, skipped = totals(LAYOUT.build_dir / "junit")
    print(f"ci: passed in {time.monotonic() - start:.0f}s")
    print(f"ci: {passed} passed, {failed} failed, {skipped} skipped")


@task(
    name="hvisor",
    help={
        "tree": "root of an hvisor-tool checkout (required)",
        "spec": "spec whose pair to install; default from invoke.yaml (virtio-blk)",
        "restore": "put the tree's original virtio_blk.{c,h} back and remove the backup",
        "jobs": "parallel make jobs (default: number of CPUs)",
        "force": FORCE_HELP,
    },
)
def hvisor_task(
    c: Context, tree: str = "", spec: str = "", restore: bool = False, jobs: int = 0,
    force: bool = False,
) -> None:  # fmt: skip
    """Install a spec's pair into an hvisor-tool tree and build its `hvisor` binary."""
    if not tree:
        raise _fail("--tree PATH is required (the root of an hvisor-tool checkout)")
    path = Path(tree).expanduser()
    if restore:
        try:
            done = hvisor.restore(path)
        except hvisor.HvisorError as exc:
            raise _fail(str(exc)) from None
        print(f"restored the original {', '.join(done.files)} in {done.tree}")
        return
    layout, (name,) = _resolve([spec or str(_cfg(c, "spec"))], force)
    _gen(layout, [name])
    _step(f"installing {name}'s pair into {path} and building hvisor")
    try:
        report = board.build_hvisor(layout, path, name, jobs or os.cpu_count() or 1)
    except (hvisor.HvisorError, SpecError, ValueError) as exc:
        raise _fail(f"{exc}\n(the tree's pair is as it was before this command)") from None
    print(board.format_build(report, ROOT))


@task(
    name="flash",
    help={
        "to": "ssh://[user@]host[:port]/path, dir:PATH or image:ROOTFS.ext4:/path (required)",
        "spec": "spec the artifact was built from; default from invoke.yaml (virtio-blk)",
        "artifact": "hvisor (built by `invoke hvisor`) or vhost-user-blk; default from invoke.yaml",
        "restart": "command to run after installing (over ssh for ssh://, else locally); "
        "on failure the previous binary is put back",
        "dry-run": "print every step without doing it",
        "status": "print the manifest at --to and whether the binary still matches it; "
        "without --artifact, of every blkgen artifact there",
        "force": FORCE_HELP,
    },
)
def flash_task(
    c: Context,
    to: str = "",
    spec: str = "",
    artifact: str = "",
    restart: str = "",
    dry_run: bool = False,
    status: bool = False,
    force: bool = False,
) -> None:
    """Deploy a built binary with a manifest: atomic, verified, with rollback."""
    if not to:
        raise _fail("--to DEST is required (ssh://..., dir:PATH or image:ROOTFS.ext4:/path)")
    settings = c.config.blkgen.get("flash", {}) or {}
    kind = artifact or str(settings.get("artifact", "hvisor"))
    if kind not in flash.ARTIFACTS:
        raise _fail(f"--artifact must be one of: {', '.join(flash.ARTIFACTS)}")
    try:
        if status:
            found = flash.survey(to, board.status_sites(to, artifact, settings))
            print(flash.format_survey(found))
            if found.problem:
                raise _fail(found.problem)
            return
        site = board.site_for(to, kind, settings)
        layout, (name,) = _resolve([spec or str(_cfg(c, "spec"))], force)
        if kind == "vhost-user-blk" and not dry_run:
            _gen(layout, [name])
            _build(layout, name, board.BOARD_TARGET)
        if kind == "vhost-user-blk" and dry_run:
            print(
                f"(would first run: invoke build --spec {shlex.quote(layout.spec_argument(name))} "
                f"--target {board.BOARD_TARGET})"
            )
            binary = layout.build_for(board.BOARD_TARGET, name) / "vhost-user-blk"
            art = flash.Artifact(binary, kind)
        elif kind == "vhost-user-blk":
            art = board.vhost_artifact(layout, name)
        else:
            art = board.hvisor_artifact(layout, name)
        flash.deploy(site, art, restart=restart, dry_run=dry_run)
    except (flash.FlashError, SpecError) as exc:
        raise _fail(str(exc)) from None


@task(
    iterable=["spec", "job", "hvisor_tree"],
    help={
        "spec": "spec to compare (repeatable; the first is A); default: procq, virtio-blk",
        "transport": "vhost-user (default) or hvisor (the guest's register accesses go "
        "through the daemon's main thread, as on the board)",
        "hvisor-tree": "an hvisor-tool checkout (repeatable; newest first, e.g. HEAD then "
        "the pre-PR e85aa70): also its daemon with its own pair and, from the first "
        "tree, with every spec's pair; needs --transport hvisor",
        "target": "host (native) or rk3588 (under qemu-aarch64); default host",
        "job": "job from toolchain/bench/jobs.yaml (repeatable); default: all",
        "runs": "runs per backend and job (alternating A B peer A B peer ...)",
        "seconds": "measured seconds per run",
        "warmup": "unmeasured seconds before each measurement",
        "peer": "reference backend to run alongside: qsd (qemu-storage-daemon)",
        "pin": "backend on CPU 0, load generator on CPU 1 (taskset)",
        "image-mib": "image size in MiB (default 1024; 256 under emulation)",
        "force": FORCE_HELP,
    },
)
def bench(
    c: Context,
    spec: list[str] | None = None,
    target: str = "host",
    job: list[str] | None = None,
    runs: int = 3,
    seconds: float = 10.0,
    warmup: float = 1.0,
    peer: str = "",
    pin: bool = False,
    image_mib: int = 0,
    force: bool = False,
    transport: str = "vhost-user",
    hvisor_tree: list[str] | None = None,
) -> None:
    """Benchmark specs side by side (and a peer); results in build/bench/<timestamp>/."""
    from toolchain.bench.runner import BenchConfig, run_bench

    layout, names = _resolve(list(spec) if spec else ["procq", "virtio-blk"], force)
    config = BenchConfig(
        specs=tuple(names),
        target=target,
        jobs=tuple(job or ()),
        runs=runs,
        seconds=seconds,
        warmup=warmup,
        peer=peer or None,
        pin=pin,
        image_mib=image_mib or None,
        command=shlex.join(["invoke", *sys.argv[1:]]),
        transport=transport,
        hvisor_trees=tuple(hvisor_tree or ()),
    )
    _gen(layout, names)
    try:
        out = run_bench(layout, config, lambda line: print(line, flush=True))
    except (ValueError, BuildError, MissingTool, SpecError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None
    print((out / "report.md").read_text())
    print(f"results: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


@task(
    help={
        "spec": "spec whose backend the guest drives; default from invoke.yaml (virtio-blk)",
        "target": "backend build: host (native) or rk3588 (under qemu-aarch64); "
        "default host for an amd64 guest, rk3588 for arm64",
        "arch": "guest: amd64 (q35 / microvm) or arm64 (virt, -cpu max); default amd64",
        "transport": "pci or mmio (virtio-mmio, as hvisor's guests use); default pci",
        "jobs": "comma-separated fio jobs: verify,randread,seqread (default all three)",
        "peer": "ours (default), qsd (qemu-storage-daemon) or builtin (QEMU's virtio-blk)",
        "matrix": "default + procq x amd64/arm64 x pci/mmio, and the peers; one table",
        "verify-mib": "MiB the verify job writes and checks (default 64)",
        "runtime": "seconds of each timed job (default 5)",
        "cpus": "guest CPUs (default 2)",
        "force": FORCE_HELP,
    }
)
def e2e(
    c: Context,
    spec: str = "",
    target: str = "",
    arch: str = "amd64",
    transport: str = "pci",
    jobs: str = "verify,randread,seqread",
    peer: str = "ours",
    matrix: bool = False,
    verify_mib: int = 64,
    runtime: int = 5,
    cpus: int = 2,
    force: bool = False,
) -> None:
    """Boot a Linux guest (virtio_blk + fio) against the backend; build/e2e/<timestamp>/."""
    from toolchain.e2e import cli as e2e_cli
    from toolchain.e2e.debian import DebianError
    from toolchain.e2e.image import ImageError

    layout, (name,) = _resolve([spec or str(_cfg(c, "spec"))], force)
    _gen(layout, None if matrix else [name])
    try:
        result = e2e_cli.run(
            layout,
            spec=name,
            target=target,
            arch=arch,
            transport=transport,
            jobs=jobs,
            peer=peer,
            matrix=matrix,
            verify_mib=verify_mib,
            runtime=runtime,
            cpus=cpus,
            command=shlex.join(["invoke", *sys.argv[1:]]),
            progress=lambda line: print(line, flush=True),
        )
    except (ValueError, BuildError, MissingTool, SpecError, DebianError, ImageError) as exc:
        raise _fail(str(exc)) from None
    print((result.out / "report.md").read_text())
    print(f"results: {result.out.relative_to(ROOT)}")
    if not result.ok:
        raise _fail("e2e failed (see Failures above)")


_STALL = StallConfig()  # the defaults, stated once


@task(
    help={
        "spec": f"spec to measure (repeatable; default {', '.join(_STALL.specs)})",
        "target": f"host or rk3588 (under qemu-aarch64); default {_STALL.target}",
        "rounds": f"rounds; each runs every spec once, in turn (default {_STALL.rounds})",
        "seconds": f"seconds of full-ring load per run (default {_STALL.seconds:g})",
        "resets": f"resets (STATUS = 0) with the ring full, per run (default {_STALL.resets})",
        "request-kib": f"size of each request, a multiple of 64 KiB (default {_STALL.request_kib})",
        "force": FORCE_HELP,
    },
    iterable=["spec"],
)
def stall(
    c: Context,
    spec: list[str] | None = None,
    target: str = _STALL.target,
    rounds: int = _STALL.rounds,
    seconds: float = _STALL.seconds,
    resets: int = _STALL.resets,
    request_kib: int = _STALL.request_kib,
    force: bool = False,
) -> None:
    """How long one guest access holds hvisor's main thread, per spec; build/stall/<timestamp>/."""
    layout, names = _resolve(list(spec) if spec else list(_STALL.specs), force)
    config = replace(
        _STALL,
        specs=tuple(names),
        target=target,
        rounds=rounds,
        seconds=seconds,
        resets=resets,
        request_kib=request_kib,
        command=shlex.join(["invoke", *sys.argv[1:]]),
    )
    _gen(layout, names)
    try:
        load_target(target)
        out = run_stall(layout, config, lambda line: print(line, flush=True))
    except (ValueError, BuildError, MissingTool, SpecError, RuntimeError) as exc:
        raise _fail(str(exc)) from None
    print((out / "report.md").read_text())
    print(f"results: {out.relative_to(ROOT)}")


@task
def clean(c: Context) -> None:
    """Remove build/ (generated/ is committed and stays)."""
    shutil.rmtree(LAYOUT.build_dir, ignore_errors=True)
    print("removed build/")


ns = Collection(setup, gen, show, build, test, fuzz, mutants, fmt, ci, clean)
ns.add_task(hvisor_task)
ns.add_task(hvisor_sim)
ns.add_task(flash_task)
ns.add_task(bench)
ns.add_task(e2e)
ns.add_task(stall)
ns.configure(
    {
        "blkgen": {
            "spec": project.DEFAULT_SPEC,
            "target": project.DEFAULT_TARGET,
            "targets": [t for t in target_names() if not load_target(t).sanitizer],
            # invoke.yaml narrows this (TSan skips the hostile-guest suite).
            "sanitizer_tests": {
                t: ["tests/test_device.py", "tests/test_hostile_guest.py"]
                for t in target_names()
                if load_target(t).sanitizer
            },
            "fuzz_seconds": 60,
            "pytest_args": "",
        },
        "run": {"echo": False},
    }
)
