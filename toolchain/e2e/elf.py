"""Just enough ELF64 (little-endian) to resolve shared libraries and read .modinfo.

Works for x86-64 and AArch64 files alike, so a guest's libraries can be
resolved on any host without the guest's ldd.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

PT_INTERP = 3
PT_DYNAMIC = 2
PT_LOAD = 1
DT_NEEDED = 1
DT_STRTAB = 5
DT_SONAME = 14
EM_X86_64 = 62
EM_AARCH64 = 183


class ElfError(ValueError):
    """Not an ELF64 little-endian file, or one that is cut short."""


@dataclass(frozen=True)
class ElfInfo:
    """What the dynamic linker needs to know about a file."""

    machine: int
    interpreter: str | None
    needed: tuple[str, ...]
    soname: str | None


def _cstr(data: bytes, offset: int) -> str:
    end = data.index(b"\0", offset)
    return data[offset:end].decode()


def _check(data: bytes) -> None:
    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise ElfError("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ElfError("not ELF64 little-endian")


def is_elf(path: Path) -> bool:
    """Whether path starts with the ELF magic."""
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def read_info(path: Path) -> ElfInfo:
    """Interpreter, DT_NEEDED and DT_SONAME of an ELF64 LE file."""
    data = path.read_bytes()
    _check(data)
    (machine,) = struct.unpack_from("<H", data, 18)
    phoff, phentsize, phnum = (
        struct.unpack_from("<Q", data, 32)[0],
        struct.unpack_from("<H", data, 54)[0],
        struct.unpack_from("<H", data, 56)[0],
    )
    interp: str | None = None
    dynamic: tuple[int, int] | None = None
    loads: list[tuple[int, int, int]] = []  # vaddr, offset, filesz
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize
        )
        if p_type == PT_INTERP:
            interp = data[p_offset : p_offset + p_filesz].rstrip(b"\0").decode()
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
        elif p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
    if dynamic is None:
        return ElfInfo(machine, interp, (), None)
    entries: list[tuple[int, int]] = []
    off, size = dynamic
    for pos in range(off, off + size, 16):
        tag, val = struct.unpack_from("<qQ", data, pos)
        if tag == 0:
            break
        entries.append((tag, val))
    strtab_vaddr = next((v for t, v in entries if t == DT_STRTAB), None)
    if strtab_vaddr is None:
        raise ElfError(f"{path}: dynamic section without a string table")
    strtab = next(
        (o + strtab_vaddr - va for va, o, sz in loads if va <= strtab_vaddr < va + sz), None
    )
    if strtab is None:
        raise ElfError(f"{path}: string table outside every loaded segment")
    needed = tuple(_cstr(data, strtab + v) for t, v in entries if t == DT_NEEDED)
    soname = next((_cstr(data, strtab + v) for t, v in entries if t == DT_SONAME), None)
    return ElfInfo(machine, interp, needed, soname)


def section(path: Path, name: str) -> bytes | None:
    """The bytes of a named section (e.g. a kernel module's .modinfo), or None."""
    data = path.read_bytes()
    _check(data)
    shoff = struct.unpack_from("<Q", data, 40)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 58)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_off = headers[shstrndx][4]
    for sh_name, _type, _flags, _addr, sh_offset, sh_size in headers:
        if _cstr(data, names_off + sh_name) == name:
            return data[sh_offset : sh_offset + sh_size]
    return None


def modinfo(path: Path) -> dict[str, list[str]]:
    """A kernel module's .modinfo as key -> values (depends, alias, ...)."""
    raw = section(path, ".modinfo") or b""
    info: dict[str, list[str]] = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            key, _, value = item.decode(errors="replace").partition("=")
            info.setdefault(key, []).append(value)
    return info


def module_depends(path: Path) -> list[str]:
    """Names of the modules a .ko needs loaded first (modinfo -F depends)."""
    return [d for v in modinfo(path).get("depends", []) for d in v.split(",") if d]
