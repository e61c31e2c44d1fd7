"""A daemon serving zones through the bridge world, started when a driver attaches.

The world needs the zone's memory before the daemon maps it, and the memory
belongs to the driver (toolchain.guest.BlkDevice), so the daemon starts on
the first :meth:`HvisorBackend.attach`, not before.  Tests call
``backend.attach(driver)`` whatever the transport.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..guest.backend import Backend, BackendError
from ..guest.blk import BlkDevice
from ..guest.memory import GuestMemory
from .mmio import MmioTransport
from .world import BridgeError, BridgeWorld, Device, Zone

#: Where the zone's one blk device sits: hvisor-tool's qemu-aarch64 example.
DEVICE_ADDR = 0xA003C00
DEVICE_IRQ = 78
ZONE_ID = 1
#: A second zone with no device: its RAM must never change (no cross-zone access).
NEIGHBOUR_ZONE = 2
NEIGHBOUR_GPA = 0x8000_0000
NEIGHBOUR_SIZE = 1024 * 1024
NEIGHBOUR_FILL = bytes(range(256)) * (NEIGHBOUR_SIZE // 256)


class HvisorBackend(Backend):
    """The runtime's ``--hvisor`` transport, or hvisor-tool's own daemon.

    ``argv_for(config_path)`` gives the command line for a zone JSON, e.g.
    ``[qemu-aarch64, vhost-user-blk, --hvisor, CFG]`` or
    ``[hvisor, virtio, start, CFG]``.
    """

    def __init__(
        self,
        argv: Sequence[str],
        image: str,
        log_dir: str | os.PathLike[str],
        *,
        name: str = "hvisor",
        read_only: bool = False,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        super().__init__(argv, "", log_dir, name, start_timeout, env=env)
        self.image = image
        self.read_only = read_only
        self.world: BridgeWorld | None = None
        self.neighbour: GuestMemory | None = None
        self.device = Device(
            DEVICE_ADDR,
            DEVICE_IRQ,
            extra={"img": image, **({"read_only": True} if read_only else {})},
        )

    @classmethod
    def runtime(
        cls,
        binary: str,
        image: str,
        log_dir: str | os.PathLike[str],
        *,
        prefix: Sequence[str] = (),
        read_only: bool = False,
        extra_args: Sequence[str] = (),
        name: str = "hvisor",
        env: Mapping[str, str] | None = None,
    ) -> HvisorBackend:
        """The project's runtime: ``prefix binary --hvisor CFG [extra_args]``."""
        return cls(
            [*prefix, binary, "--hvisor", "{config}", *extra_args],
            image,
            log_dir,
            name=name,
            read_only=read_only,
            env=env,
        )

    @classmethod
    def daemon(
        cls, binary: str, image: str, log_dir: str | os.PathLike[str], **kwargs: Any
    ) -> HvisorBackend:
        """hvisor-tool's daemon linked with the stand-in: ``prefix hvisor virtio start CFG``.

        Takes :meth:`runtime`'s keywords; ``extra_args`` are not the daemon's and are dropped.
        """
        prefix = kwargs.pop("prefix", ())
        kwargs.pop("extra_args", None)
        kwargs.setdefault("name", "hvisor-tool")
        be = cls.runtime(binary, image, log_dir, **kwargs)
        be.argv = [*prefix, binary, "virtio", "start", "{config}"]
        return be

    # -- life cycle ----------------------------------------------------------------

    def start(self) -> None:
        """Nothing yet: the daemon starts when a driver attaches (it needs the memory)."""

    def attach(self, driver: BlkDevice) -> None:
        """Start the daemon for ``driver``'s memory (first time), then initialise the device."""
        if self.world is None:
            self._launch(driver)
        elif self.world.zones[0].memory is not driver.memory:
            raise BackendError(f"{self.name}: a second driver needs a new backend")
        assert self.world is not None
        driver.attach(MmioTransport(self.world, ZONE_ID, self.device, timeout=driver.timeout * 2))

    def _launch(self, driver: BlkDevice) -> None:
        self.neighbour = GuestMemory([(NEIGHBOUR_GPA, NEIGHBOUR_SIZE)])
        self.neighbour.write(NEIGHBOUR_GPA, NEIGHBOUR_FILL)
        self.world = BridgeWorld(
            [Zone(ZONE_ID, driver.memory, [self.device]), Zone(NEIGHBOUR_ZONE, self.neighbour, [])]
        )
        config = self.world.write_config(Path(self.log_dir) / f"{self.name}.json")
        self.socket_path = self.world.socket_path
        self.env = {**self.env, "HVISOR_SIM_SOCKET": self.world.socket_path}
        self.argv = [str(config) if a == "{config}" else a for a in self.argv]
        self.spawn()
        try:
            self.world.wait_attached(self.start_timeout)
        except BridgeError as e:
            code = self.proc.poll() if self.proc is not None else None
            self.kill()
            raise BackendError(
                f"{self.name}: {e} (exit status {code}); see {self.log_path}"
            ) from None

    def neighbour_changes(self) -> bool:
        """Whether the device-less neighbour zone's RAM changed (it never may)."""
        if self.neighbour is None:
            return False
        return self.neighbour.read(NEIGHBOUR_GPA, NEIGHBOUR_SIZE) != NEIGHBOUR_FILL

    def cleanup(self) -> None:
        super().cleanup()
        if self.world is not None:
            self.world.close()
            self.world = None
        if self.neighbour is not None:
            self.neighbour.close()
            self.neighbour = None
