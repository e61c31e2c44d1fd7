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
    sanitizer: Annotated[
        bool,
        Field(
            default=False,
            description="built with sanitizers: slower, and a report in its output is a failure",
        ),
    ]
    env: Annotated[
        dict[str, str],
        Field(default_factory=dict, description="environment for running what it builds"),
    ]

    @property
    def emulated(self) -> bool:
        """Binaries run under an emulator (qemu-user)."""
        return bool(self.runner)


# Lines a sanitizer runtime prints when it found something (ASan/LSan, UBSan,
# TSan); any of them in a backend's output fails the test that ran it.
SANITIZER_REPORTS = (
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "runtime error:",
    "WARNING: ThreadSanitizer",
)


def target_names() -> list[str]:
    """Every defined target, sorted."""
    return sorted(p.stem for p in TARGET_DIR.glob("*.yaml"))


def sanitizer_reports(text: str) -> list[str]:
    """The lines of text in which a sanitizer reported a finding."""
    return [line for line in text.splitlines() if any(m in line for m in SANITIZER_REPORTS)]


def load_target(name: str) -> Target:
    """Load one target; ValueError with the known names if it does not exist."""
    path = TARGET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown target '{name}'; known targets: {', '.join(target_names())}")
    try:
        return Target(name=name, **yaml.safe_load(path.read_text()))
    except (ValidationError, TypeError) as exc:
        raise ValueError(f"{path}: invalid target file: {exc}") from None
