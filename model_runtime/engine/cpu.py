"""What the host's CPU computes natively, read from /proc/cpuinfo (Linux; elsewhere, nothing)."""

from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# AMX tiles (Sapphire Rapids and later) or AVX-512 BF16 (Cooper Lake, Zen 4 and later): oneDNN runs
# bfloat16 matrix products on these at two or more times float32's rate; elsewhere it emulates them.
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The flags of the first processor listed (every core of a host has the same)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def computes_bf16(cpuinfo_file: Path = CPUINFO) -> bool:
    try:
        return bool(cpu_flags(cpuinfo_file.read_text()) & BF16_FLAGS)
    except OSError:
        return False
