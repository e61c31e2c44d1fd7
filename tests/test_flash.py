"""`invoke flash`: atomic, verified deployment to a directory, an ext4 image, and over ssh.

Destinations are real: temporary directories; ext4 images made with
mkfs.ext4 and changed only through debugfs (checked with e2fsck
afterwards); a real OpenSSH server on 127.0.0.1 with throwaway keys,
started and stopped (by its PID) by a fixture.
"""

from __future__ import annotations

import dataclasses
import errno
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from toolchain import flash
from toolchain.board import facts
from toolchain.proc import sha256_file, stop
from toolchain.project import Layout

ROOT = Path(__file__).resolve().parent.parent
SSHD = Path("/usr/sbin/sshd")
DEBUGFS = shutil.which("debugfs") or "/usr/sbin/debugfs"
MKFS = shutil.which("mkfs.ext4") or "/usr/sbin/mkfs.ext4"
E2FSCK = shutil.which("e2fsck") or "/usr/sbin/e2fsck"
TIMEOUTS = flash.Timeouts(command=30, transfer=60, restart=30)
CHUNK = 1 << 16

needs_e2fsprogs = pytest.mark.skipif(
    not Path(DEBUGFS).exists() or not Path(MKFS).exists(),
    reason="e2fsprogs not installed (invoke setup installs it)",
)


def blob(tmp_path: Path, name: str, size: int, seed: int) -> Path:
    """A file of deterministic pseudo-random bytes standing in for a binary."""
    data = bytes((i * 131 + seed * 7 + (i >> 8)) & 0xFF for i in range(size))
    path = tmp_path / name
    path.write_bytes(data)
    return path


def artifact(path: Path, spec: str = "virtio-blk") -> flash.Artifact:
    """An Artifact with the manifest facts `invoke flash` records."""
    return flash.Artifact(
        path,
        "hvisor",
        {
            "spec": spec,
            "spec_sha256": "0" * 64,
            "toolkit_revision": "test",
            "target": "rk3588",
            "compiler": "test-cc 1.0",
        },
    )


def quiet(_: str) -> None:
    """Discard progress output."""


# ---------------------------------------------------------------- dir:


def dir_site(final: Path) -> flash.Site:
    """A dir: site for the binary path final."""
    return flash.make_site(flash.parse_dest(f"dir:{final}", "hvisor"), TIMEOUTS, flash.SshOptions())


def test_dir_deploy_keeps_prev_and_writes_manifest(tmp_path: Path) -> None:
    """First deploy: no .prev; second: the first becomes .prev; manifest describes the new one."""
    board = tmp_path / "sd" / "usr" / "bin"
    board.mkdir(parents=True)
    one, two = blob(tmp_path, "one", 300_000, 1), blob(tmp_path, "two", 200_000, 2)
    site = dir_site(board)  # an existing directory: the binary keeps its name
    assert site.dest.path == str(board / "hvisor")

    first = flash.deploy(site, artifact(one), say=quiet)
    assert first is not None and first.previous_sha256 is None
    assert not (board / "hvisor.prev").exists()
    second = flash.deploy(site, artifact(two, "procq"), say=quiet)
    assert second is not None

    assert (board / "hvisor").read_bytes() == two.read_bytes()
    assert (board / "hvisor.prev").read_bytes() == one.read_bytes()
    assert (board / "hvisor").stat().st_mode & 0o777 == 0o755
    assert not (board / ".hvisor.blkgen-tmp").exists()
    manifest = json.loads((board / "hvisor.manifest.json").read_text())
    assert manifest["sha256"] == sha256_file(two)
    assert manifest["previous_sha256"] == sha256_file(one)
    assert manifest["spec"] == "procq"
    for key in ("spec_sha256", "toolkit_revision", "target", "compiler", "deployed_at", "size"):
        assert key in manifest

    st = flash.status(site)
    assert st.matches and st.prev_sha256 == sha256_file(one)
    assert "matches the manifest" in flash.format_status(st)


def test_dir_redeploying_the_same_binary_keeps_the_real_prev(tmp_path: Path) -> None:
    """Deploying the bytes already there leaves .prev (and the manifest's previous) alone."""
    site = dir_site(tmp_path / "hvisor")
    one, two = blob(tmp_path, "one", 3000, 21), blob(tmp_path, "two", 4000, 22)
    flash.deploy(site, artifact(one), say=quiet)
    flash.deploy(site, artifact(two), say=quiet)

    again = flash.deploy(site, artifact(two), say=quiet)
    assert again is not None and again.redeployed
    assert (tmp_path / "hvisor").read_bytes() == two.read_bytes()
    assert (tmp_path / "hvisor.prev").read_bytes() == one.read_bytes()
    manifest = json.loads((tmp_path / "hvisor.manifest.json").read_text())
    assert manifest["sha256"] == sha256_file(two)
    assert manifest["previous_sha256"] == sha256_file(one)
    st = flash.status(site)
    assert st.matches and st.prev_sha256 == sha256_file(one)


def test_dir_redeploy_with_failing_restart_keeps_binary_prev_and_manifest(tmp_path: Path) -> None:
    """A redeployment whose restart fails puts the manifest back; binary and .prev stay."""
    site = dir_site(tmp_path / "hvisor")
    one, two = blob(tmp_path, "one", 3000, 23), blob(tmp_path, "two", 4000, 24)
    flash.deploy(site, artifact(one), say=quiet)
    flash.deploy(site, artifact(two), say=quiet)
    manifest = (tmp_path / "hvisor.manifest.json").read_bytes()

    with pytest.raises(flash.FlashError, match=r"restart command failed \(exit 5\)"):
        flash.deploy(site, artifact(two, "procq"), restart="exit 5", say=quiet)
    assert (tmp_path / "hvisor").read_bytes() == two.read_bytes()
    assert (tmp_path / "hvisor.prev").read_bytes() == one.read_bytes()
    assert (tmp_path / "hvisor.manifest.json").read_bytes() == manifest


def test_dir_status_detects_changed_binary(tmp_path: Path) -> None:
    """--status notices a binary that is no longer what was deployed."""
    site = dir_site(tmp_path / "hvisor")
    flash.deploy(site, artifact(blob(tmp_path, "a", 1000, 3)), say=quiet)
    (tmp_path / "hvisor").write_bytes(b"tampered")
    st = flash.status(site)
    assert not st.matches
    assert "DIFFERS from the manifest" in flash.format_status(st)


def survey_sites(dest: str, server: SshServer | None = None) -> list[flash.Site]:
    """One site per artifact DEST can hold (what `flash --status` without --artifact reads)."""
    options = server.options if server else flash.SshOptions()
    return [flash.make_site(d, TIMEOUTS, options) for d in flash.artifact_dests(dest)]


def test_status_of_a_directory_reports_every_blkgen_artifact(tmp_path: Path) -> None:
    """Status of a directory lists each artifact there; one deployed artifact is enough."""
    vhost = blob(tmp_path, "vhost", 2000, 29)
    flash.deploy(dir_site(tmp_path / "vhost-user-blk"), artifact(vhost), say=quiet)

    sv = flash.survey(f"dir:{tmp_path}", survey_sites(f"dir:{tmp_path}"))
    assert [st.final for st in sv.found] == [str(tmp_path / n) for n in flash.ARTIFACTS]
    assert sv.problem is None
    text = flash.format_survey(sv)
    assert f"absent:    {tmp_path / 'hvisor'} (no binary, no manifest)" in text
    assert f"binary:    {tmp_path / 'vhost-user-blk'}" in text
    assert f"{sha256_file(vhost)} (matches the manifest)" in text

    flash.deploy(dir_site(tmp_path / "hvisor"), artifact(blob(tmp_path, "hv", 900, 30)), say=quiet)
    (tmp_path / "vhost-user-blk").write_bytes(b"changed")
    sv = flash.survey(f"dir:{tmp_path}", survey_sites(f"dir:{tmp_path}"))
    assert sv.problem == f"{tmp_path / 'vhost-user-blk'}: not what the manifest says was deployed"
    assert "absent" not in flash.format_survey(sv)


def test_status_of_a_directory_without_blkgen_artifacts_fails(tmp_path: Path) -> None:
    """A directory with no blkgen manifest fails the status check, even with a binary in it."""
    (tmp_path / "hvisor").write_bytes(b"installed by hand")
    sv = flash.survey(f"dir:{tmp_path}", survey_sites(f"dir:{tmp_path}"))
    assert sv.problem is not None and sv.problem.startswith(f"no blkgen artifact at dir:{tmp_path}")
    assert "manifest:  none (not deployed by blkgen)" in flash.format_survey(sv)


def test_status_of_a_file_path_reads_that_binary_only(tmp_path: Path) -> None:
    """A destination naming a file holds one binary: status reads just it, as before."""
    dest = f"dir:{tmp_path / 'hvisor'}"
    assert [d.path for d in flash.artifact_dests(dest)] == [str(tmp_path / "hvisor")]
    sv = flash.survey(dest, survey_sites(dest))
    assert sv.problem == f"{tmp_path / 'hvisor'} does not match a blkgen manifest"
    assert "sha256:    binary missing" in flash.format_survey(sv)


def test_dir_rollback_on_failed_restart(tmp_path: Path) -> None:
    """A failing restart puts the previous binary and manifest back and fails."""
    site = dir_site(tmp_path / "hvisor")
    old, new = blob(tmp_path, "old", 5000, 4), blob(tmp_path, "new", 7000, 5)
    flash.deploy(site, artifact(old), say=quiet)
    old_manifest = (tmp_path / "hvisor.manifest.json").read_bytes()
    with pytest.raises(flash.FlashError, match=r"restart command failed \(exit 7\)"):
        flash.deploy(site, artifact(new), restart="exit 7", say=quiet)
    assert (tmp_path / "hvisor").read_bytes() == old.read_bytes()
    assert (tmp_path / "hvisor.manifest.json").read_bytes() == old_manifest
    assert flash.status(site).matches


def test_dir_rollback_leaves_prev_a_separate_copy_of_the_live_binary(tmp_path: Path) -> None:
    """After a rollback .prev is its own file: changing the live binary in place spares it."""
    site = dir_site(tmp_path / "hvisor")
    old, new = blob(tmp_path, "old", 5000, 27), blob(tmp_path, "new", 7000, 28)
    flash.deploy(site, artifact(old), say=quiet)
    with pytest.raises(flash.FlashError, match="restart command failed"):
        flash.deploy(site, artifact(new), restart="false", say=quiet)

    live, prev = tmp_path / "hvisor", tmp_path / "hvisor.prev"
    assert live.read_bytes() == prev.read_bytes() == old.read_bytes()
    assert live.stat().st_ino != prev.stat().st_ino
    assert live.stat().st_nlink == prev.stat().st_nlink == 1
    assert live.stat().st_mode & 0o777 == 0o755
    with live.open("r+b") as f:  # e.g. `cp other hvisor`, which writes in place
        f.write(b"scribbled")
    assert prev.read_bytes() == old.read_bytes()


def test_dir_rollback_without_previous_removes(tmp_path: Path) -> None:
    """With nothing to roll back to, a failed restart removes the new binary."""
    site = dir_site(tmp_path / "hvisor")
    with pytest.raises(flash.FlashError, match="restart command failed"):
        flash.deploy(site, artifact(blob(tmp_path, "a", 100, 6)), restart="false", say=quiet)
    assert not (tmp_path / "hvisor").exists()
    assert not (tmp_path / "hvisor.manifest.json").exists()


def test_dir_restart_success(tmp_path: Path) -> None:
    """A succeeding restart command runs once, after the binary is in place."""
    site = dir_site(tmp_path / "hvisor")
    marker = tmp_path / "restarted"
    new = blob(tmp_path, "n", 100, 7)
    out = flash.deploy(
        site, artifact(new), restart=f"sha256sum {tmp_path / 'hvisor'} > {marker}", say=quiet
    )
    assert out is not None and out.restarted
    assert marker.read_text().split()[0] == sha256_file(new)


def test_dir_dry_run_changes_nothing(tmp_path: Path) -> None:
    """--dry-run lists every step and touches nothing."""
    lines: list[str] = []
    site = dir_site(tmp_path / "hvisor")
    result = flash.deploy(
        site, artifact(blob(tmp_path, "a", 10, 8)), restart="x", dry_run=True, say=lines.append
    )
    assert result is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    text = "\n".join(lines)
    for step in ("stage", "verify", "keep the old binary", "manifest", "restart"):
        assert step in text


def test_dir_missing_directory(tmp_path: Path) -> None:
    """A destination directory that does not exist is a clear error."""
    site = dir_site(tmp_path / "not-mounted" / "hvisor")
    with pytest.raises(flash.FlashError, match="no such directory"):
        flash.deploy(site, artifact(blob(tmp_path, "a", 10, 9)), say=quiet)


def test_parse_dest() -> None:
    """The three destination forms, and a clear error for anything else."""
    d = flash.parse_dest("ssh://root@board:2222/usr/local/bin/hvisor", "hvisor")
    assert (d.kind, d.user, d.host, d.port, d.path) == (
        "ssh",
        "root",
        "board",
        2222,
        "/usr/local/bin/hvisor",
    )
    d = flash.parse_dest("ssh://board/usr/local/bin/", "vhost-user-blk")
    assert (d.user, d.port, d.path) == ("", None, "/usr/local/bin/vhost-user-blk")
    d = flash.parse_dest("image:/tmp/r.ext4:/usr/bin/hvisor", "hvisor")
    assert (d.kind, d.image, d.path) == ("image", "/tmp/r.ext4", "/usr/bin/hvisor")
    for bad in ("ftp://x/y", "ssh://host", "image:r.ext4", "image:r.ext4:/a b"):
        with pytest.raises(flash.FlashError):
            flash.parse_dest(bad, "hvisor")


@pytest.mark.parametrize("port", ["0", "65536", "99999999999999999999"])
def test_ssh_port_outside_1_65535_is_refused_before_ssh_runs(port: str) -> None:
    """A port ssh would reject (or, for 0, silently replace by 22) is a local error."""
    dest = f"ssh://root@board:{port}/usr/local/bin/hvisor"
    with pytest.raises(flash.FlashError) as err:
        flash.parse_dest(dest, "hvisor")
    assert str(err.value) == f"bad ssh destination '{dest}': port {port} is not in 1-65535"


# ---------------------------------------------------------------- interrupted copy


def _deploy_script(dest: str, source: Path, ssh: flash.SshOptions) -> str:
    """Python for a child process that deploys source (a FIFO) to dest."""
    return (
        "from pathlib import Path\n"
        "from toolchain import flash\n"
        f"ssh = flash.SshOptions(identity_file={ssh.identity_file!r}, "
        f"known_hosts_file={ssh.known_hosts_file!r}, "
        f"strict_host_key_checking={ssh.strict_host_key_checking!r})\n"
        f"site = flash.make_site(flash.parse_dest({dest!r}, 'hvisor'), "
        "flash.Timeouts(command=30, transfer=60, restart=30), ssh)\n"
        f"flash.deploy(site, flash.Artifact(Path({str(source)!r}), 'hvisor'))\n"
    )


def _open_fifo_writer(fifo: Path, proc: subprocess.Popen[bytes], deadline: float) -> int:
    """Open the FIFO for writing once the deploying child opened it for reading."""
    while time.monotonic() < deadline:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            assert proc.poll() is None, "the deploying process exited before reading"
            time.sleep(0.05)
            continue
        os.set_blocking(fd, True)
        return fd
    raise AssertionError("the deploying process never started the copy")


def interrupt_copy(
    tmp_path: Path, dest: str, staged: Path, sig: signal.Signals, ssh: flash.SshOptions
) -> subprocess.Popen[bytes]:
    """Start a deployment fed from a FIFO, feed half, wait until it reached staged, signal it."""
    fifo = tmp_path / "feed.fifo"
    os.mkfifo(fifo)
    log = (tmp_path / "child.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", _deploy_script(dest, fifo, ssh)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    fd = -1
    try:
        deadline = time.monotonic() + 30
        fd = _open_fifo_writer(fifo, proc, deadline)
        half = bytes(range(256)) * (4 * CHUNK // 256)
        os.write(fd, half)
        while not (staged.exists() and staged.stat().st_size >= len(half)):
            assert time.monotonic() < deadline, "the staged copy never grew"
            assert proc.poll() is None, "the deploying process exited mid-copy"
            time.sleep(0.05)
        os.kill(proc.pid, sig)  # the copy stops here: the feeder never writes the rest
        proc.wait(timeout=30)
    finally:
        if fd >= 0:
            os.close(fd)
        stop(proc)
        log.close()
    return proc


def test_dir_interrupted_copy_keeps_old_binary(tmp_path: Path) -> None:
    """A copy killed mid-transfer (SIGKILL) leaves the old binary and manifest in place."""
    board = tmp_path / "board"
    board.mkdir()
    site = dir_site(board / "hvisor")
    old = blob(tmp_path, "old", 50_000, 10)
    flash.deploy(site, artifact(old), say=quiet)
    manifest = (board / "hvisor.manifest.json").read_bytes()

    proc = interrupt_copy(
        tmp_path,
        f"dir:{board / 'hvisor'}",
        board / ".hvisor.blkgen-tmp",
        signal.SIGKILL,
        flash.SshOptions(),
    )
    assert proc.returncode == -signal.SIGKILL
    assert (board / "hvisor").read_bytes() == old.read_bytes()
    assert (board / "hvisor.manifest.json").read_bytes() == manifest
    assert not (board / "hvisor.prev").exists()
    assert flash.status(site).matches
    # The next deployment simply replaces the leftover staging file.
    new = blob(tmp_path, "new", 60_000, 11)
    flash.deploy(site, artifact(new), say=quiet)
    assert (board / "hvisor").read_bytes() == new.read_bytes()
    assert not (board / ".hvisor.blkgen-tmp").exists()


# ---------------------------------------------------------------- image:


def make_image(tmp_path: Path) -> Path:
    """A 16 MiB ext4 image with /usr/local/bin, made by mkfs.ext4 -d."""
    content = tmp_path / "rootfs"
    (content / "usr" / "local" / "bin").mkdir(parents=True)
    image = tmp_path / "rootfs.ext4"
    subprocess.run(
        [MKFS, "-q", "-F", "-d", str(content), str(image), "16M"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return image


def image_file(image: Path, path: str, tmp_path: Path) -> bytes | None:
    """A file's bytes from the image (debugfs dump), or None."""
    out = tmp_path / f"dump-{time.monotonic_ns()}"
    subprocess.run(
        [DEBUGFS, "-R", f"dump {path} {out}", str(image)],
        capture_output=True,
        timeout=30,
        check=True,
    )
    return out.read_bytes() if out.exists() else None


def fsck_clean(image: Path) -> None:
    """e2fsck -fn finds nothing to fix (link counts, bitmaps) in the image."""
    proc = subprocess.run([E2FSCK, "-fn", str(image)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_e2fsprogs
def test_image_deploy_rollback_status(tmp_path: Path) -> None:
    """Deploy twice into an ext4 image, roll back a third, read the status; fsck stays clean."""
    image = make_image(tmp_path)
    dest = flash.parse_dest(f"image:{image}:/usr/local/bin/hvisor", "hvisor")
    site = flash.make_site(dest, TIMEOUTS, flash.SshOptions())
    one, two, three = (
        blob(tmp_path, n, s, i)
        for i, (n, s) in enumerate([("1", 90_000), ("2", 120_000), ("3", 70_000)])
    )

    flash.deploy(site, artifact(one), say=quiet)
    flash.deploy(site, artifact(two), say=quiet)
    fsck_clean(image)
    assert image_file(image, "/usr/local/bin/hvisor", tmp_path) == two.read_bytes()
    assert image_file(image, "/usr/local/bin/hvisor.prev", tmp_path) == one.read_bytes()
    # Deploying the same bytes again leaves .prev holding the real previous binary.
    flash.deploy(site, artifact(two), say=quiet)
    fsck_clean(image)
    assert image_file(image, "/usr/local/bin/hvisor", tmp_path) == two.read_bytes()
    assert image_file(image, "/usr/local/bin/hvisor.prev", tmp_path) == one.read_bytes()
    assert image_file(image, "/usr/local/bin/.hvisor.blkgen-tmp", tmp_path) is None
    stat = subprocess.run(
        [DEBUGFS, "-R", "stat /usr/local/bin/hvisor", str(image)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "DEBUGFS_PAGER": "__none__"},
    ).stdout
    assert "Mode:  0755" in stat and "Type: regular" in stat

    with pytest.raises(flash.FlashError, match="restart command failed"):
        flash.deploy(site, artifact(three), restart="exit 1", say=quiet)
    fsck_clean(image)
    assert image_file(image, "/usr/local/bin/hvisor", tmp_path) == two.read_bytes()
    st = flash.status(site)
    assert st.matches and st.manifest is not None
    assert st.manifest["sha256"] == sha256_file(two)
    # The rolled-back deployment had made the running binary its .prev.
    assert st.prev_sha256 == sha256_file(two)


@needs_e2fsprogs
def test_image_missing_directory(tmp_path: Path) -> None:
    """A path whose directory is not in the image is refused before anything is written."""
    image = make_image(tmp_path)
    before = sha256_file(image)
    site = flash.make_site(
        flash.parse_dest(f"image:{image}:/opt/hvisor", "hvisor"), TIMEOUTS, flash.SshOptions()
    )
    with pytest.raises(flash.FlashError, match="/opt is not a directory in the image"):
        flash.deploy(site, artifact(blob(tmp_path, "a", 10, 1)), say=quiet)
    assert sha256_file(image) == before


# ---------------------------------------------------------------- ssh://


@dataclass(frozen=True)
class SshServer:
    """A running throwaway sshd and how to reach it."""

    port: int
    user: str
    options: flash.SshOptions
    config: Path
    root: Path

    def url(self, path: Path) -> str:
        """ssh:// destination for a local path (the server is this machine)."""
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "blkgen-test", "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """OpenSSH's sshd on 127.0.0.1:<free port>, own config and keys; stopped by its PID."""
    if not SSHD.exists() or shutil.which("ssh") is None:
        pytest.skip("openssh-server/openssh-client not installed (invoke setup installs them)")
    root = tmp_path_factory.mktemp("sshd")
    _keygen(root / "host_key")
    _keygen(root / "client_key")
    shutil.copy(root / "client_key.pub", root / "authorized_keys")
    port = _free_port()
    user = getpass.getuser()
    config = root / "sshd_config"
    lines = [
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {root / 'host_key'}",
        f"PidFile {root / 'sshd.pid'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}",
        "UsePAM no",
        "StrictModes no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        f"AllowUsers {user}",
        "LogLevel VERBOSE",
    ]
    if os.geteuid() == 0:
        lines.append("PermitRootLogin prohibit-password")
        # sshd's privilege-separation directory (systemd creates it for the service).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    elif not Path("/run/sshd").is_dir():
        pytest.skip("sshd needs /run/sshd, which only root can create")
    config.write_text("\n".join(lines) + "\n")
    check = subprocess.run(
        [str(SSHD), "-t", "-f", str(config)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stderr
    log = (root / "sshd.log").open("wb")
    proc = subprocess.Popen(
        [str(SSHD), "-D", "-e", "-f", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, (root / "sshd.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "sshd did not start listening"
                time.sleep(0.05)
        host_key = (root / "host_key.pub").read_text().split()
        (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
        options = flash.SshOptions(
            identity_file=str(root / "client_key"),
            strict_host_key_checking="yes",
            known_hosts_file=str(root / "known_hosts"),
            connect_timeout=5,
        )
        yield SshServer(port, user, options, config, root)
    finally:
        stop(proc)
        log.close()


def ssh_site(server: SshServer, final: Path) -> flash.Site:
    """An ssh:// site for a path on the test server."""
    return flash.make_site(flash.parse_dest(server.url(final), "hvisor"), TIMEOUTS, server.options)


def test_ssh_deploy_status_and_rollback(sshd: SshServer, tmp_path: Path) -> None:
    """Over real ssh: deploy twice, .prev, manifest, status; a failing restart rolls back."""
    board = tmp_path / "usr-local-bin"
    board.mkdir()
    final = board / "hvisor"
    site = ssh_site(sshd, final)
    one, two, three = (blob(tmp_path, str(i), 150_000 + i, i) for i in range(3))

    flash.deploy(site, artifact(one), say=quiet)
    marker = tmp_path / "restarted"
    out = flash.deploy(site, artifact(two), restart=f"touch {marker}", say=quiet)
    assert out is not None and out.restarted and marker.exists()
    assert final.read_bytes() == two.read_bytes()
    assert (board / "hvisor.prev").read_bytes() == one.read_bytes()
    assert final.stat().st_mode & 0o777 == 0o755
    manifest = json.loads((board / "hvisor.manifest.json").read_text())
    assert manifest["sha256"] == sha256_file(two)
    assert manifest["destination"] == sshd.url(final)

    st = flash.status(site)
    assert st.matches and st.sha256 == sha256_file(two)

    lines: list[str] = []
    with pytest.raises(flash.FlashError, match=r"restart command failed \(exit 3\)"):
        flash.deploy(site, artifact(three), restart="echo going down; exit 3", say=lines.append)
    assert "going down" in "\n".join(lines)
    assert final.read_bytes() == two.read_bytes()
    prev = board / "hvisor.prev"
    assert prev.read_bytes() == two.read_bytes()
    assert final.stat().st_ino != prev.stat().st_ino, ".prev is a hard link to the live binary"
    assert json.loads((board / "hvisor.manifest.json").read_text()) == manifest
    assert flash.status(site).matches


def test_ssh_redeploying_the_same_binary_keeps_the_real_prev(
    sshd: SshServer, tmp_path: Path
) -> None:
    """Over ssh, deploying the bytes already there leaves .prev holding the real previous."""
    final = tmp_path / "hvisor"
    site = ssh_site(sshd, final)
    one, two = blob(tmp_path, "one", 5000, 25), blob(tmp_path, "two", 6000, 26)
    flash.deploy(site, artifact(one), say=quiet)
    flash.deploy(site, artifact(two), say=quiet)

    again = flash.deploy(site, artifact(two), say=quiet)
    assert again is not None and again.redeployed
    assert final.read_bytes() == two.read_bytes()
    assert final.stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "hvisor.prev").read_bytes() == one.read_bytes()
    manifest = json.loads((tmp_path / "hvisor.manifest.json").read_text())
    assert manifest["previous_sha256"] == sha256_file(one)
    assert not (tmp_path / ".hvisor.blkgen-tmp").exists()


def test_ssh_status_of_a_directory_reports_every_blkgen_artifact(
    sshd: SshServer, tmp_path: Path
) -> None:
    """Over ssh, status of ssh://.../dir/ finds the vhost-user-blk deployed there."""
    vhost = blob(tmp_path, "vhost", 3000, 31)
    flash.deploy(ssh_site(sshd, tmp_path / "vhost-user-blk"), artifact(vhost), say=quiet)
    dest = sshd.url(tmp_path) + "/"
    sv = flash.survey(dest, survey_sites(dest, sshd))
    assert sv.problem is None
    vhost_status = sv.found[flash.ARTIFACTS.index("vhost-user-blk")]
    assert vhost_status.matches and vhost_status.sha256 == sha256_file(vhost)
    assert f"absent:    {tmp_path / 'hvisor'}" in flash.format_survey(sv)


def test_ssh_interrupted_copy(sshd: SshServer, tmp_path: Path) -> None:
    """Ctrl-C mid-transfer over ssh: the old binary stays, the staging file is removed."""
    board = tmp_path / "b"
    board.mkdir()
    site = ssh_site(sshd, board / "hvisor")
    old = blob(tmp_path, "old", 40_000, 12)
    flash.deploy(site, artifact(old), say=quiet)
    manifest = (board / "hvisor.manifest.json").read_bytes()

    proc = interrupt_copy(
        tmp_path,
        sshd.url(board / "hvisor"),
        board / ".hvisor.blkgen-tmp",
        signal.SIGINT,
        sshd.options,
    )
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in (tmp_path / "child.log").read_text()
    assert (board / "hvisor").read_bytes() == old.read_bytes()
    assert (board / "hvisor.manifest.json").read_bytes() == manifest
    assert not (board / ".hvisor.blkgen-tmp").exists()
    assert flash.status(site).matches


def test_ssh_unreachable_is_bounded(sshd: SshServer, tmp_path: Path) -> None:
    """A port nobody listens on fails fast with ssh's reason, nothing deployed."""
    dest = f"ssh://{sshd.user}@127.0.0.1:{_free_port()}{tmp_path / 'hvisor'}"
    site = flash.make_site(flash.parse_dest(dest, "hvisor"), TIMEOUTS, sshd.options)
    start = time.monotonic()
    with pytest.raises(flash.FlashError, match="Connection refused"):
        flash.deploy(site, artifact(blob(tmp_path, "a", 10, 1)), say=quiet)
    assert time.monotonic() - start < 30
    assert not (tmp_path / "hvisor").exists()


def test_ssh_failure_is_one_line_leading_with_ssh_reason(sshd: SshServer, tmp_path: Path) -> None:
    """A refused connection reads as ssh's own reason and where, not the remote script."""
    port = _free_port()
    dest = f"ssh://{sshd.user}@127.0.0.1:{port}{tmp_path}/"
    site = flash.make_site(flash.parse_dest(dest, "hvisor"), TIMEOUTS, sshd.options)
    with pytest.raises(flash.FlashError) as err:
        flash.deploy(site, artifact(blob(tmp_path, "a", 10, 1)), say=quiet)
    assert str(err.value) == (
        f"ssh: connect to host 127.0.0.1 port {port}: Connection refused "
        f"(ssh to {sshd.user}@127.0.0.1:{port}, checking the destination)"
    )


def test_ssh_login_refused_says_a_key_is_needed(sshd: SshServer, tmp_path: Path) -> None:
    """A key the board does not accept: ssh's reason, then how to point flash at a key."""
    _keygen(tmp_path / "stranger")
    options = dataclasses.replace(sshd.options, identity_file=str(tmp_path / "stranger"))
    site = flash.make_site(
        flash.parse_dest(sshd.url(tmp_path / "hvisor"), "hvisor"), TIMEOUTS, options
    )
    with pytest.raises(flash.FlashError) as err:
        flash.status(site)
    message = str(err.value)
    assert message.startswith(f"{sshd.user}@127.0.0.1: Permission denied (publickey")
    assert "\n" not in message
    assert "key only" in message and "blkgen.flash.ssh_identity_file" in message


def test_ssh_board_side_failure_leads_with_the_board_reason(
    sshd: SshServer, tmp_path: Path
) -> None:
    """A remote step that fails (no such directory) says so first, with its exit status."""
    site = ssh_site(sshd, tmp_path / "absent" / "hvisor")
    with pytest.raises(flash.FlashError) as err:
        flash.deploy(site, artifact(blob(tmp_path, "a", 10, 1)), say=quiet)
    assert str(err.value) == (
        f"no such directory: {tmp_path / 'absent'} "
        f"(on {sshd.user}@127.0.0.1:{sshd.port}, checking the destination: exit 1)"
    )


def test_ssh_dry_run_shows_commands(sshd: SshServer, tmp_path: Path) -> None:
    """--dry-run over ssh prints the ssh commands (BatchMode, timeout, key) and runs none."""
    lines: list[str] = []
    site = ssh_site(sshd, tmp_path / "hvisor")
    flash.deploy(
        site, artifact(blob(tmp_path, "a", 10, 1)), restart="true", dry_run=True, say=lines.append
    )
    text = "\n".join(lines)
    assert "BatchMode=yes" in text and "ConnectTimeout=5" in text
    assert str(sshd.options.identity_file) in text
    assert "sha256sum" in text and "mv -f" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


# ---------------------------------------------------------------- the invoke task


def invoke(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m invoke [-f config] ARGS` in the project (bounded)."""
    extra = ["-f", str(config)] if config else []
    return subprocess.run(
        [sys.executable, "-m", "invoke", *extra, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_flash_dir_status_and_dry_run(tmp_path: Path) -> None:
    """`invoke flash --artifact vhost-user-blk` to a dir, then --status; --dry-run writes none."""
    dry = invoke("flash", "--to", f"dir:{tmp_path}", "--artifact", "vhost-user-blk", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run" in dry.stdout
    assert list(tmp_path.iterdir()) == []

    done = invoke("flash", "--to", f"dir:{tmp_path}", "--artifact", "vhost-user-blk")
    assert done.returncode == 0, done.stderr
    binary = ROOT / "build/rk3588/virtio-blk/vhost-user-blk"
    assert (tmp_path / "vhost-user-blk").read_bytes() == binary.read_bytes()
    manifest = json.loads((tmp_path / "vhost-user-blk.manifest.json").read_text())
    assert manifest["artifact"] == "vhost-user-blk"
    assert manifest["spec"] == "virtio-blk"
    generated = json.loads((ROOT / "generated/virtio-blk/manifest.json").read_text())
    assert manifest["spec_sha256"] == generated["sha256"]
    assert manifest["target"] == "rk3588"
    assert str(manifest["compiler"]).startswith("aarch64-linux-gnu-gcc")
    assert manifest["toolkit_revision"] == flash.git_revision(ROOT)

    st = invoke("flash", "--status", "--to", f"dir:{tmp_path}", "--artifact", "vhost-user-blk")
    assert st.returncode == 0, st.stderr
    assert "matches the manifest" in st.stdout
    # Without --artifact: every blkgen artifact there (not just the default, hvisor).
    every = invoke("flash", "--status", "--to", f"dir:{tmp_path}")
    assert every.returncode == 0, every.stdout + every.stderr
    assert f"binary:    {tmp_path / 'vhost-user-blk'}" in every.stdout
    assert "matches the manifest" in every.stdout
    assert f"absent:    {tmp_path / 'hvisor'}" in every.stdout
    (tmp_path / "vhost-user-blk").write_bytes(b"changed")
    st = invoke("flash", "--status", "--to", f"dir:{tmp_path}", "--artifact", "vhost-user-blk")
    assert st.returncode == 1 and "DIFFERS" in st.stdout


def test_manifest_spec_hash_ignores_a_comment_edit_and_follows_a_real_change(
    tmp_path: Path,
) -> None:
    """The spec_sha256 flash records is the spec's model hash, the one generated/ carries."""
    shutil.copytree(ROOT / "spec", tmp_path / "spec")
    layout = Layout(tmp_path)
    generated = json.loads((ROOT / "generated/virtio-blk/manifest.json").read_text())
    assert facts(layout, "virtio-blk", "cc")["spec_sha256"] == generated["sha256"]
    spec = tmp_path / "spec/virtio-blk.yaml"
    text = spec.read_text()
    spec.write_text("# reworded, not changed\n\n" + text.replace("\n", "\n\n"))
    assert facts(layout, "virtio-blk", "cc")["spec_sha256"] == generated["sha256"]
    spec.write_text(text.replace("queue_size: 512", "queue_size: 1024"))
    assert facts(layout, "virtio-blk", "cc")["spec_sha256"] != generated["sha256"]


def test_cli_flash_ssh_rollback_exit_status(sshd: SshServer, tmp_path: Path) -> None:
    """Over ssh, options from an invoke config file: a failing --restart exits 1, rolled back."""
    config = tmp_path / "invoke.yaml"
    config.write_text(
        "blkgen:\n  flash:\n"
        f"    ssh_identity_file: {sshd.options.identity_file}\n"
        f"    ssh_known_hosts_file: {sshd.options.known_hosts_file}\n"
        "    ssh_strict_host_key_checking: 'yes'\n"
        "    ssh_connect_timeout: 5\n"
    )
    board = tmp_path / "bin"
    board.mkdir()
    old = blob(tmp_path, "old", 1000, 2)
    shutil.copy(old, board / "vhost-user-blk")
    dest = sshd.url(board / "vhost-user-blk")
    proc = invoke(
        "flash", "--to", dest, "--artifact", "vhost-user-blk", "--restart", "exit 9", config=config
    )
    assert proc.returncode == 1
    assert "restart command failed (exit 9)" in proc.stderr
    assert (board / "vhost-user-blk").read_bytes() == old.read_bytes()
    assert (board / "vhost-user-blk.prev").read_bytes() == old.read_bytes()
    assert not (board / "vhost-user-blk.manifest.json").exists()


def test_cli_ssh_failure_is_one_error_line(sshd: SshServer, tmp_path: Path) -> None:
    """`invoke flash` to an ssh port nobody listens on: one `error:` line, ssh's reason first."""
    port = _free_port()
    dest = f"ssh://{sshd.user}@127.0.0.1:{port}{tmp_path}/"
    proc = invoke("flash", "--to", dest, "--artifact", "vhost-user-blk")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"error: ssh: connect to host 127.0.0.1 port {port}: Connection refused "
        f"(ssh to {sshd.user}@127.0.0.1:{port}, checking the destination)"
    ]


@pytest.mark.parametrize(
    ("dest", "config", "message"),
    [
        (
            "ssh://board:70000/usr/bin/",
            "",
            "error: bad ssh destination 'ssh://board:70000/usr/bin/': port 70000 is not in 1-65535",
        ),
        (
            "ssh://board/usr/bin/",
            "ssh_port: abc",
            "error: blkgen.flash.ssh_port: 'abc' is not a port (1-65535, or 0 for ssh's default)",
        ),
        (
            "ssh://board/usr/bin/",
            "ssh_port: 65536",
            "error: blkgen.flash.ssh_port: '65536' is not a port (1-65535, or 0 for ssh's default)",
        ),
        (
            "ssh://board/usr/bin/",
            "ssh_identity_file: KEYDIR/no-such-key",
            "error: blkgen.flash.ssh_identity_file: 'KEYDIR/no-such-key' does not exist "
            "(the private key to log in to the board with)",
        ),
    ],
    ids=["url-port", "config-port-text", "config-port-range", "missing-key"],
)
def test_cli_bad_ssh_settings_are_one_error_line(
    tmp_path: Path, dest: str, config: str, message: str
) -> None:
    """A bad port or missing key, in the URL or invoke config: one line, no traceback, no ssh."""
    path = tmp_path / "invoke.yaml"
    path.write_text(f"blkgen:\n  flash:\n    {config.replace('KEYDIR', str(tmp_path))}\n")
    proc = invoke("flash", "--status", "--to", dest, config=path if config else None)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [message.replace("KEYDIR", str(tmp_path))]
