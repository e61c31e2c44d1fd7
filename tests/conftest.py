"""Shared pytest options and fixtures.

The device suite runs once per (spec, target) for the targets named by
--targets (default: the rk3588 build under qemu-aarch64 and the host build
natively; `--targets host-asan,host-tsan` runs the sanitizer builds). Logs and
command lines of each test are kept under build/test-logs/ for debugging.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from toolchain import project
from toolchain.bridge import daemon
from toolchain.bridge.backend import HvisorBackend
from toolchain.guest import Backend, BlkDevice, ShadowDisk
from toolchain.render import TemplateError
from toolchain.spec import Spec, SpecError
from toolchain.targets import Target, load_target, sanitizer_reports, target_names

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = project.Layout(ROOT)
IMAGE_SIZE = 8 * 1024 * 1024


def in_flight(queue_size: int, per_chain: int = 3) -> int:
    """Requests the in-flight tests queue at once: 64, or as many chains of
    ``per_chain`` descriptors as a smaller ring holds (any valid spec passes)."""
    return min(64, queue_size // per_chain)


def require_segments(dut: DeviceUnderTest, dev: BlkDevice, segments: int) -> None:
    """Skip, saying why, when one request of ``segments`` data segments is more
    than this spec's device takes: its ring (header and status beside them)
    or its negotiated seg_max."""
    size = dev.queues[0].size
    if segments + 2 > size:
        pytest.skip(f"a {size}-entry ring cannot carry {segments} data segments")
    if dut.spec.features.seg_max and segments > dut.spec.device.seg_max:
        pytest.skip(f"seg_max {dut.spec.device.seg_max} is below {segments} data segments")


# qemu-user translates the backend, sanitizers slow it down; give it room,
# but never hang a test.
TIMEOUT = {True: 10.0, False: 5.0}
SANITIZER_TIMEOUT = 15.0
DEFAULT_TARGETS = "rk3588,host"
#: How the guest reaches the device: vhost-user (QEMU's way) or hvisor's
#: MMIO bridge (the board's way, through the bridge world) served by our
#: runtime's core ("hvisor"), by hvisor-tool's own daemon with the spec's
#: pair ("hvisor-tool"), or by that daemon with the tree's own pair
#: ("upstream": HEAD's device; the spec stands for what it should be).
TRANSPORTS = ("vhost-user", "hvisor")
DAEMON_TRANSPORTS = ("hvisor-tool", "upstream")
FAMILY = {
    "vhost-user": "vhost-user",
    "hvisor": "hvisor",
    "hvisor-tool": "hvisor",
    "upstream": "hvisor",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite the expected .err files of golden tests (review the diff!)",
    )
    parser.addoption(
        "--targets",
        default=DEFAULT_TARGETS,
        help=(
            "comma-separated build targets the device suite runs on "
            f"(default {DEFAULT_TARGETS}; known: {', '.join(target_names())})"
        ),
    )
    parser.addoption(
        "--transports",
        default="",
        help=f"comma-separated transports the device suite runs over (default: "
        f"{', '.join(TRANSPORTS)}, plus hvisor-tool with --hvisor-tree; known: "
        f"{', '.join(FAMILY)})",
    )
    parser.addoption(
        "--specs",
        default="",
        help="comma-separated spec names or .yaml paths the device suite runs (default: "
        "every spec in spec/ that is valid; an invalid one is reported and left out)",
    )
    parser.addoption(
        "--hvisor-tree",
        default="",
        help="an hvisor-tool checkout: also run the suites on its own daemon, built with "
        "the /dev/hvisor stand-in (transport hvisor-tool; 'upstream' for its own pair)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "vhost_user_only(reason): the test needs a vhost-user operation; on other "
        "transports it is skipped with the reason",
    )
    config.addinivalue_line(
        "markers",
        "only_transport(name): the test is about one transport (QEMU as a vhost-user "
        "frontend; what only hvisor's MMIO lets a guest do); it runs on that one alone",
    )


_WHERE_OF_ITEM: dict[str, tuple[str, str]] = {}  # nodeid -> (transport, target)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Remember where each device test runs; skip vhost-user-only tests elsewhere."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or not isinstance(callspec.params.get("dut"), tuple):
            continue
        _, target, transport = callspec.params["dut"]
        _WHERE_OF_ITEM[item.nodeid] = (transport, target)
        marker = item.get_closest_marker("vhost_user_only")
        if marker is not None and transport != "vhost-user":
            reason = marker.args[0] if marker.args else "needs vhost-user"
            item.add_marker(pytest.mark.skip(reason=f"vhost-user only: {reason}"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how many device tests passed per transport x target (rk3588 = qemu-aarch64)."""
    config = terminalreporter.config
    counts = {(tr, tg): 0 for tr in selected_transports(config) for tg in selected_targets(config)}
    for report in terminalreporter.stats.get("passed", []):
        where = _WHERE_OF_ITEM.get(report.nodeid)
        if where in counts:
            counts[where] += 1
    if any(counts.values()):
        name = {"rk3588": "rk3588 (qemu-aarch64)"}
        parts = [f"{tr} x {name.get(tg, tg)}: {n}" for (tr, tg), n in counts.items()]
        terminalreporter.write_line(f"device tests passed: {', '.join(parts)}")
    for spec, error in INVALID_SPECS.items():
        terminalreporter.write_line(
            f"spec/{spec}.yaml is invalid, so the device suite left it out:\n{error}", red=True
        )


@pytest.fixture(scope="session")
def root() -> Path:
    """The project root."""
    return ROOT


@pytest.fixture(scope="session")
def update_golden(request: pytest.FixtureRequest) -> bool:
    """Whether golden files are to be rewritten rather than compared."""
    return bool(request.config.getoption("--update-golden"))


@dataclass(frozen=True)
class DeviceUnderTest:
    """One spec built for one target."""

    spec: Spec
    target: Target
    binary: Path
    manifest: dict[str, Any]
    transport: str = "vhost-user"

    @property
    def prefix(self) -> list[str]:
        """argv prefix that runs the binary (qemu-aarch64 for rk3588)."""
        return self.target.runner

    @property
    def timeout(self) -> float:
        """Per-request completion timeout."""
        if self.target.sanitizer:
            return SANITIZER_TIMEOUT
        return TIMEOUT[self.target.emulated]

    @property
    def env(self) -> dict[str, str]:
        """Environment additions for the backend process (sanitizer options)."""
        return dict(self.target.env)

    def driver(self, **kwargs: Any) -> BlkDevice:
        """A guest driver suited to this device (timeouts, I/O alignment; rings
        of 128 entries, or the spec's queue_size when that is smaller)."""
        kwargs.setdefault("queue_size", min(128, self.spec.device.queue_size))
        d = BlkDevice(timeout=self.timeout, **kwargs)
        if self.spec.backend.direct:  # O_DIRECT: block-aligned buffers and lengths
            d.memory.io_align = self.spec.device.block_size
        return d


def selected_targets(config: pytest.Config) -> list[str]:
    """The targets named by --targets, checked against toolchain/targets/."""
    names = [t.strip() for t in str(config.getoption("--targets")).split(",") if t.strip()]
    unknown = [t for t in names if t not in target_names()]
    if unknown or not names:
        raise pytest.UsageError(
            f"--targets: unknown target(s) {', '.join(unknown) or '(none given)'}; "
            f"known: {', '.join(target_names())}"
        )
    return names


def hvisor_tree(config: pytest.Config) -> Path | None:
    """The --hvisor-tree checkout, or None."""
    tree = str(config.getoption("--hvisor-tree"))
    return Path(tree).expanduser().resolve() if tree else None


def selected_transports(config: pytest.Config) -> list[str]:
    """The transports named by --transports (default: ours, and hvisor-tool with a tree)."""
    given = str(config.getoption("--transports"))
    default = [*TRANSPORTS, *(["hvisor-tool"] if hvisor_tree(config) else [])]
    names = [t.strip() for t in given.split(",") if t.strip()] if given else default
    unknown = [t for t in names if t not in FAMILY]
    if unknown or not names:
        raise pytest.UsageError(
            f"--transports: unknown transport(s) {', '.join(unknown) or '(none given)'}; "
            f"known: {', '.join(FAMILY)}"
        )
    if hvisor_tree(config) is None and any(t in DAEMON_TRANSPORTS for t in names):
        raise pytest.UsageError("--transports hvisor-tool/upstream need --hvisor-tree PATH")
    return names


#: Specs in spec/ left out of the device suite because they do not load:
#: name -> the error (test_generation fails on them; the summary names them).
INVALID_SPECS: dict[str, str] = {}
_CHOSEN_KEY = pytest.StashKey[list[str]]()


def chosen_specs(config: pytest.Config) -> list[str]:
    """The specs the device suite runs, by name, resolved once per session.

    --specs takes names and .yaml paths (a path outside spec/ is generated into
    build/generated/<stem>/ first, as `invoke gen --spec PATH` would; LAYOUT then
    knows it). Without --specs: every spec in spec/ that loads; one that does
    not is recorded in INVALID_SPECS and left out, so it cannot stop the rest.
    """
    global LAYOUT
    if _CHOSEN_KEY in config.stash:
        return config.stash[_CHOSEN_KEY]
    wanted = [n.strip() for n in str(config.getoption("--specs")).split(",") if n.strip()]
    names: list[str] = []
    if wanted:
        try:
            LAYOUT, names = project.resolve(LAYOUT, wanted)
            project.specs(LAYOUT, names)
            outside = [n for n in names if n in LAYOUT.outside_by_name]
            if outside:
                project.generate(LAYOUT, outside, check=False)
        except (SpecError, project.SpecArgumentError, TemplateError) as exc:
            raise pytest.UsageError(f"--specs: {exc}") from None
    else:
        for name in LAYOUT.spec_names():
            try:
                project.specs(LAYOUT, [name])
            except SpecError as exc:
                INVALID_SPECS[name] = str(exc)
                continue
            names.append(name)
    config.stash[_CHOSEN_KEY] = names
    return names


def configurations(config: pytest.Config) -> list[tuple[str, str, str]]:
    """(spec, target, transport) for every chosen spec, selected target and transport.

    The real daemon builds for rk3588 (arm64) and host (x86_64) only; its own
    device ("upstream") stands beside the default spec, which describes it.
    """
    specs = chosen_specs(config)
    out = []
    for tr in selected_transports(config):
        for t in selected_targets(config):
            if tr in DAEMON_TRANSPORTS and t not in daemon.ARCH_OF_TARGET:
                continue
            for s in [project.DEFAULT_SPEC] if tr == "upstream" else specs:
                out.append((s, t, tr))
    return out


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that needs a device under test once per configuration."""
    if "dut" in metafunc.fixturenames:
        configs = configurations(metafunc.config)
        only = metafunc.definition.get_closest_marker("only_transport")
        if only is not None:  # the test is about one transport (family)
            configs = [c for c in configs if FAMILY[c[2]] == only.args[0]]
            if not configs:
                reason = f"runs on the {only.args[0]} transport, which --transports left out"
                metafunc.parametrize("dut", [pytest.param(None, marks=pytest.mark.skip(reason))])
                return
        metafunc.parametrize(
            "dut",
            configs,
            indirect=True,
            scope="session",
            ids=lambda c: f"{c[0]}@{c[1]}@{c[2]}",
        )


@pytest.fixture(scope="session")
def dut(request: pytest.FixtureRequest) -> DeviceUnderTest:
    """The device under test; built once per session."""
    spec_name, target_name, transport = request.param
    target = load_target(target_name)
    for tool in (target.cc, *target.runner):
        if shutil.which(tool) is None:
            pytest.fail(f"'{tool}' is missing; run: invoke setup")
    (spec,) = project.specs(LAYOUT, [spec_name])
    manifest = json.loads((LAYOUT.generated_for(spec_name) / "manifest.json").read_text())
    mutant = os.environ.get("BLKGEN_MUTANT_BINARY")  # set by `invoke mutants` only
    if mutant and os.environ.get("BLKGEN_MUTANT_SPEC") == spec_name and target_name == "host":
        return DeviceUnderTest(spec, target, Path(mutant), manifest, transport)
    if transport in DAEMON_TRANSPORTS:
        tree = hvisor_tree(request.config)
        assert tree is not None
        pair = None if transport == "upstream" else LAYOUT.generated_for(spec_name)
        try:
            built = daemon.build(
                tree, LAYOUT.build_dir / "hvisor-sim", "upstream" if pair is None else spec_name,
                pair, daemon.ARCH_OF_TARGET[target_name],
            )  # fmt: skip
        except daemon.DaemonError as e:
            pytest.fail(f"hvisor-tool daemon: {e}")
        return DeviceUnderTest(spec, target, built.binary, manifest, transport)
    result = project.build_one(LAYOUT, spec_name, target_name)
    return DeviceUnderTest(spec, target, result.binary, manifest, transport)


@pytest.fixture
def log_dir(request: pytest.FixtureRequest) -> Path:
    """build/test-logs/<test id>/, emptied at the start of the test."""
    name = re.sub(r"[^A-Za-z0-9_.@-]+", "_", request.node.nodeid)[-150:]
    path = LAYOUT.build_dir / "test-logs" / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """An 8 MiB image of random bytes (every sector distinct)."""
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(IMAGE_SIZE))
    return path


def assert_image_holds(image: Path, shadow: ShadowDisk) -> None:
    """The image kept its size and holds exactly what the shadow says."""
    assert image.stat().st_size == IMAGE_SIZE, "the image changed size"
    assert image.read_bytes() == bytes(shadow.data), "the image differs from the shadow"


@pytest.fixture
def shadow(image: Path) -> ShadowDisk:
    """What the image is expected to hold."""
    return ShadowDisk.from_file(str(image))


@pytest.fixture
def start_backend(
    dut: DeviceUnderTest, image: Path, log_dir: Path
) -> Iterator[Callable[..., Backend]]:
    """Factory starting the device's backend; each must exit 0 at teardown."""
    started: list[Backend] = []

    def start(**kwargs: Any) -> Backend:
        env = {**dut.env, **kwargs.pop("env", {})}  # a test's additions on top
        make = {
            "vhost-user": Backend.vhost_user_blk,
            "hvisor": HvisorBackend.runtime,
        }.get(dut.transport, HvisorBackend.daemon)
        be = make(
            str(dut.binary),
            str(image),
            log_dir,
            prefix=dut.prefix,
            name=f"backend{len(started)}",
            env=env,
            **kwargs,
        )
        started.append(be)
        be.start()
        return be

    yield start
    codes = []
    for be in started:
        if be.proc is None:  # an hvisor backend no driver ever attached to
            codes.append(0)
        elif be.alive() or be.returncode is None:  # running, or died and never reaped
            codes.append(be.stop())
        else:  # stopped by the test (a deliberate kill records 0)
            codes.append(be.returncode)
        if isinstance(be, HvisorBackend):
            assert not be.neighbour_changes(), f"{be.name} wrote another zone's RAM"
        be.cleanup()
    for be, code in zip(started, codes, strict=True):
        assert code == 0, f"{be.name} exited with {code}:\n{be.log_text()}"
        # Sanitizers also exit non-zero, but a report is a failure even if
        # the exit status was lost (e.g. the test stopped the backend itself).
        reports = sanitizer_reports(be.log_text())
        assert not reports, f"{be.name}: sanitizer report(s) {reports}:\n{be.log_text()}"


@pytest.fixture
def backend(start_backend: Callable[..., Backend]) -> Backend:
    """A running backend serving the image read-write."""
    return start_backend()


@pytest.fixture
def dev(dut: DeviceUnderTest, backend: Backend) -> Iterator[BlkDevice]:
    """A guest driver connected to the backend; queues as large as the spec allows."""
    d = dut.driver(queue_size=dut.spec.device.queue_size)
    backend.attach(d)
    yield d
    d.close()


# ---- hypothesis profiles (tests/test_properties.py) --------------------------------
# ci: bounded, per spec x target; long: HYPOTHESIS_PROFILE=long for a soak run. The
# examples share one backend per test function (function-scoped fixtures on purpose).
from hypothesis import HealthCheck, settings  # noqa: E402

_HYPOTHESIS_COMMON: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    "print_blob": True,
}
settings.register_profile("ci", max_examples=50, **_HYPOTHESIS_COMMON)
settings.register_profile("long", max_examples=5000, **_HYPOTHESIS_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
