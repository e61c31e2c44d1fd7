"""Build targets are data: one YAML file each in toolchain/targets/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

TARGET_DIR = Path(__file__).parent / "targets"

# Every target builds with these: the pair must stay clean under them.
WARNINGS = [
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wshadow",
    "-Wformat=2",
    "-Wmissing-prototypes",
    "-Wpointer-arith",
    "-Wundef",
    "-Wvla",
]


class Target(BaseModel):
    """A compiler, its flags, and how to run what it builds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    cc: str
    cflags: Annotated[list[str], Field(default_factory=list)]
    ldflags: Annotated[list[str], Field(default_factory=list)]
    runner: Annotated[
        list[str], Field(default_factory=list, description="argv prefix to run a binary")
    ]
    packages: Annotated[
        list[str], Field(default_factory=list, description="Debian packages needed")
    ]

    @property
    def emulated(self) -> bool:
        """Binaries run under an emulator (qemu-user)."""
        return bool(self.runner)


def target_names() -> list[str]:
    """Every defined target, sorted."""
    return sorted(p.stem for p in TARGET_DIR.glob("*.yaml"))


def load_target(name: str) -> Target:
    """Load one target; ValueError with the known names if it does not exist."""
    path = TARGET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown target '{name}'; known targets: {', '.join(target_names())}")
    try:
        return Target(name=name, **yaml.safe_load(path.read_text()))
    except (ValidationError, TypeError) as exc:
        raise ValueError(f"{path}: invalid target file: {exc}") from None
