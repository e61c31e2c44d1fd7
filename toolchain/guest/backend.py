"""Start and stop a vhost-user-blk backend process."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Self

if TYPE_CHECKING:
    from .blk import BlkDevice


class BackendError(Exception):
    """The backend failed to start or to stop."""


class Backend:
    """A backend process serving a vhost-user socket.

    ``argv`` is the full command line (it must already name ``socket_path``).
    Stderr and stdout go to ``<log_dir>/<name>.log``; the command line is
    written to ``<log_dir>/<name>.cmd``.  ``env`` adds to (or overrides) the
    inherited environment, e.g. sanitizer options.  Use the classmethods to
    build argv.
    """

    def __init__(
        self,
        argv: Sequence[str],
        socket_path: str,
        log_dir: str | os.PathLike[str],
        name: str = "backend",
        start_timeout: float = 10.0,
        own_dir: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.env = dict(env or {})
        self.socket_path = socket_path
        self.log_dir = Path(log_dir)
        self.name = name
        self.start_timeout = start_timeout
        self.log_path = self.log_dir / f"{name}.log"
        self.cmd_path = self.log_dir / f"{name}.cmd"
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self._own_dir = own_dir
        self._log: IO[bytes] | None = None

    @staticmethod
    def _socket_dir(socket_dir: str | None) -> tuple[str, str | None]:
        if socket_dir is not None:
            return socket_dir, None
        d = tempfile.mkdtemp(prefix="vub-")  # short: sun_path is 108 bytes
        return d, d

    @classmethod
    def vhost_user_blk(
        cls,
        binary: str,
        image: str,
        log_dir: str | os.PathLike[str],
        *,
        prefix: Sequence[str] = (),
        read_only: bool = False,
        extra_args: Sequence[str] = (),
        socket_dir: str | None = None,
        name: str = "vhost-user-blk",
        env: Mapping[str, str] | None = None,
    ) -> Backend:
        """The project's backend: ``prefix binary --socket-path S --blk-file IMG [--read-only]``."""
        sdir, own = cls._socket_dir(socket_dir)
        sock = os.path.join(sdir, f"{name}.sock")
        argv = [*prefix, binary, "--socket-path", sock, "--blk-file", image]
        if read_only:
            argv.append("--read-only")
        return cls([*argv, *extra_args], sock, log_dir, name, own_dir=own, env=env)

    @classmethod
    def qemu_storage_daemon(
        cls,
        image: str,
        log_dir: str | os.PathLike[str],
        *,
        read_only: bool = False,
        num_queues: int = 1,
        binary: str = "qemu-storage-daemon",
        socket_dir: str | None = None,
        name: str = "qsd",
    ) -> Backend:
        """QEMU's reference vhost-user-blk export of a raw ``image``."""
        sdir, own = cls._socket_dir(socket_dir)
        sock = os.path.join(sdir, f"{name}.sock")
        argv = [
            binary,
            "--blockdev",
            f"driver=file,node-name=f,filename={image},read-only={'on' if read_only else 'off'}",
            "--export",
            (
                "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,"
                f"addr.path={sock},writable={'off' if read_only else 'on'},num-queues={num_queues}"
            ),
        ]
        return cls(argv, sock, log_dir, name, own_dir=own)

    @property
    def pid(self) -> int:
        """Process id (raises if not started)."""
        if self.proc is None:
            raise BackendError("backend not started")
        return self.proc.pid

    def spawn(self) -> None:
        """Launch the process, logging its command line and output; no wait.

        :meth:`start` waits for the socket; a daemon that connects to its
        world instead (the hvisor transport) is only spawned.
        """
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env_prefix = "".join(f"{k}={shlex.quote(v)} " for k, v in sorted(self.env.items()))
        self.cmd_path.write_text(env_prefix + shlex.join(self.argv) + "\n")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **self.env} if self.env else None,
        )

    def attach(self, driver: BlkDevice) -> None:
        """Connect ``driver`` to this backend and initialise the device."""
        driver.connect(self.socket_path)

    def start(self) -> None:
        """Launch the process and wait (bounded) for its socket to appear."""
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        while not os.path.exists(self.socket_path):
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self._close_log()
                raise BackendError(
                    f"{self.name} exited with {code} before listening; see {self.log_path}"
                )
            if time.monotonic() >= deadline:
                self.kill()
                raise BackendError(
                    f"{self.name}: no socket after {self.start_timeout}s; see {self.log_path}"
                )
            time.sleep(0.01)

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int | None:
        """Send ``sig`` and wait up to ``timeout``; SIGKILL after that. Return the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.returncode = self.proc.returncode
        self._close_log()
        return self.returncode

    def kill(self) -> int | None:
        """SIGKILL the process and reap it."""
        return self.stop(signal.SIGKILL)

    def log_text(self) -> str:
        """What the backend printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def cleanup(self) -> None:
        """Stop the process and remove the private socket directory."""
        self.stop()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)
            self._own_dir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
