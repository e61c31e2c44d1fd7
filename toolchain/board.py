"""The board workflow: spec -> hvisor-tool build -> deployed binary (called by tasks.py).

Glue between the project layout, `toolchain.hvisor` (installing the pair
into an hvisor-tool tree and building `hvisor`) and `toolchain.flash`
(deploying a binary with a manifest).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from . import flash, hvisor
from .proc import first_line, sha256_file
from .project import Layout
from .spec import load_spec
from .spec.validate import source_path
from .targets import load_target

BOARD_TARGET = "rk3588"


def hvisor_dir(layout: Layout, spec: str) -> Path:
    """build/hvisor/<spec>/: the built hvisor binary, make.log, hvisor.json."""
    return layout.build_dir / "hvisor" / spec


def spec_file(layout: Layout, spec: str) -> Path:
    """The YAML file of a spec name (or path)."""
    return layout.spec_files([spec])[0]


def spec_sha256(layout: Layout, spec: str) -> str:
    """The hash recorded for a spec (its banner's, Spec.sha256); SpecError if it is invalid."""
    return load_spec(spec_file(layout, spec), layout.root).sha256


def make_settings(jobs: int, timeout: float = 900.0, log: str = "LOG_INFO") -> hvisor.MakeSettings:
    """hvisor-tool make settings with the board target's cross compiler."""
    return hvisor.MakeSettings(cc=load_target(BOARD_TARGET).cc, jobs=jobs, timeout=timeout, log=log)


def build_hvisor(
    layout: Layout, tree: Path, spec: str, jobs: int, timeout: float = 900.0
) -> hvisor.BuildReport:
    """Install generated/<spec>/'s pair into tree and build hvisor into build/hvisor/<spec>/."""
    path = spec_file(layout, spec)
    name = path.stem
    return hvisor.install_and_build(
        tree,
        layout.generated_for(name),
        name,
        spec_sha256(layout, spec),
        hvisor_dir(layout, name),
        make_settings(jobs, timeout),
    )


def facts(layout: Layout, spec: str, compiler: str) -> dict[str, object]:
    """Manifest fields common to every artifact."""
    path = spec_file(layout, spec)
    return {
        "spec": path.stem,
        "spec_sha256": spec_sha256(layout, spec),
        "toolkit_revision": flash.git_revision(layout.root),
        "target": BOARD_TARGET,
        "compiler": compiler,
    }


def hvisor_artifact(layout: Layout, spec: str) -> flash.Artifact:
    """build/hvisor/<spec>/hvisor, which `invoke hvisor` made; FlashError if missing or stale."""
    name = spec_file(layout, spec).stem
    out = hvisor_dir(layout, name)
    binary = out / "hvisor"
    record = hvisor.load_build_record(out)
    if not binary.is_file() or record is None:
        raise flash.FlashError(
            f"{binary} does not exist; build it first: "
            f"invoke hvisor --tree PATH/TO/hvisor-tool --spec {layout.spec_argument(name)}"
        )
    if record.get("spec_sha256") != spec_sha256(layout, spec):
        raise flash.FlashError(
            f"{binary} was built from an older "
            f"{source_path(spec_file(layout, spec), layout.root)}; rebuild it: "
            f"invoke hvisor --tree {record.get('tree')} --spec {layout.spec_argument(name)}"
        )
    if record.get("sha256") != sha256_file(binary):
        raise flash.FlashError(f"{binary} does not match {out / 'hvisor.json'}; rebuild it")
    info = facts(layout, name, str(record.get("compiler", "")))
    info["hvisor_tool"] = {
        "tree": record.get("tree"),
        "revision": record.get("tree_revision") or "not a git checkout",
        "make": record.get("command"),
    }
    return flash.Artifact(binary, "hvisor", info)


def vhost_artifact(layout: Layout, spec: str) -> flash.Artifact:
    """build/rk3588/<spec>/vhost-user-blk (the caller builds it first if missing)."""
    name = spec_file(layout, spec).stem
    binary = layout.build_for(BOARD_TARGET, name) / "vhost-user-blk"
    if not binary.is_file():
        raise flash.FlashError(
            f"{binary} does not exist; run: invoke build --spec {layout.spec_argument(name)}"
        )
    compiler = first_line([load_target(BOARD_TARGET).cc, "--version"])
    return flash.Artifact(binary, "vhost-user-blk", facts(layout, name, compiler))


def site_for(dest: str, artifact: str, config: Mapping[str, object]) -> flash.Site:
    """A deployment site for DEST, with ssh options and timeouts from invoke config."""
    return flash.make_site(flash.parse_dest(dest, artifact), *_site_options(config))


def status_sites(dest: str, artifact: str, config: Mapping[str, object]) -> list[flash.Site]:
    """The sites `flash --status` reads: DEST's artifact, or with artifact '' every one there."""
    if artifact:
        return [site_for(dest, artifact, config)]
    timeouts, ssh = _site_options(config)
    return [flash.make_site(d, timeouts, ssh) for d in flash.artifact_dests(dest)]


def _site_options(config: Mapping[str, object]) -> tuple[flash.Timeouts, flash.SshOptions]:
    """Timeouts and ssh options from invoke config (blkgen.flash.*)."""

    def get(key: str, default: object) -> object:
        value = config.get(key, default)
        return default if value is None else value

    def number(key: str, default: float, low: float, high: float, what: str) -> float:
        raw = get(key, default)
        try:
            value = float(str(raw))
        except ValueError:
            value = float("nan")
        if not low <= value <= high or (isinstance(default, int) and not value.is_integer()):
            raise flash.FlashError(f"blkgen.flash.{key}: '{raw}' is not {what}")
        return value

    identity = str(get("ssh_identity_file", ""))
    if identity:
        identity = str(Path(identity).expanduser())
        if not Path(identity).is_file():
            raise flash.FlashError(
                f"blkgen.flash.ssh_identity_file: '{identity}' does not exist "
                "(the private key to log in to the board with)"
            )
    raw = get("ssh_options", [])
    ssh = flash.SshOptions(
        identity_file=identity,
        port=int(number("ssh_port", 0, 0, 65535, "a port (1-65535, or 0 for ssh's default)")),
        strict_host_key_checking=str(get("ssh_strict_host_key_checking", "accept-new")),
        known_hosts_file=str(get("ssh_known_hosts_file", "")),
        connect_timeout=int(
            number("ssh_connect_timeout", 10, 1, 3600, "a whole number of seconds")
        ),
        options=tuple(str(o) for o in raw) if isinstance(raw, list | tuple) else (),
    )
    seconds = "a number of seconds"
    timeouts = flash.Timeouts(
        command=number("command_timeout", 120.0, 0.001, 1e6, seconds),
        transfer=number("transfer_timeout", 600.0, 0.001, 1e6, seconds),
        restart=number("restart_timeout", 120.0, 0.001, 1e6, seconds),
    )
    return timeouts, ssh


def format_build(report: hvisor.BuildReport, root: Path) -> str:
    """What `invoke hvisor` prints after a successful build."""

    def rel(p: str) -> str:
        path = Path(p)
        return str(path.relative_to(root)) if path.is_relative_to(root) else p

    if not report.git:
        checked = "not a git checkout: the uncommitted-changes check did not apply"
    elif report.reinstalled:
        checked = f"git checkout at {report.tree_revision}: its pair changes were blkgen's own"
    else:
        checked = f"git checkout at {report.tree_revision}: the pair had no uncommitted changes"
    ours = "none" if not report.pair_warnings else "\n    ".join(report.pair_warnings)
    return "\n".join(
        [
            f"tree:      {report.tree} ({checked})",
            f"installed: {rel(report.pair)}/virtio_blk.{{c,h}} -> "
            f"{hvisor.TREE_C}, {hvisor.TREE_H}"
            + (" (replacing an earlier blkgen install)" if report.reinstalled else ""),
            f"originals: kept in {report.tree}/{hvisor.STATE_DIR}/ "
            "(invoke hvisor --tree PATH --restore puts them back)",
            f"command:   {report.command}",
            f"compiler:  {report.compiler}",
            f"binary:    {rel(report.binary)} (from {report.tree_binary})",
            f"size:      {report.size} bytes",
            f"sha256:    {report.sha256}",
            f"warnings in the pair: {ours}",
            f"warnings elsewhere in hvisor-tool: {report.other_warnings} (upstream's own)",
            f"log:       {rel(report.log)}",
            f"time:      {report.seconds:.1f}s",
        ]
    )
