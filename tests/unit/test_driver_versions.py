"""Which versions belong to the driver release an inventory pins: one rule for the preflight (the loaded
module), the install (held packages of another release), the reboot check and nvidia-smi's check."""

from __future__ import annotations

import re

import pytest

from filter_plugins.drivers import driver_version_pattern

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("target", "version", "belongs"),
    [
        ("575", "575.51.03", True),
        ("575", "575", True),
        ("575.51.03", "575.51.03", True),
        ("575.51.03", "575.51.03-1", True),  # a package's version: upstream, then the revision
        ("575.51", "575.51.03", True),
        ("575", "5750.1", False),
        ("575", "1575.2", False),
        ("575.51", "575.510.1", False),
        ("570.1", "570.133.20", False),  # a prefix of digits is another version
        ("575.51.03", "575.51.0", False),
    ],
)
def test_a_version_belongs_to_the_release_it_starts_with_up_to_a_separator(
    target: str, version: str, belongs: bool
) -> None:
    assert bool(re.match(driver_version_pattern(target), version)) is belongs


def test_the_pattern_finds_the_version_inside_the_kernel_modules_line_and_a_hold() -> None:
    loaded = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  575.51.03  Wed May 21 2025"
    assert re.search(driver_version_pattern("575.51.03"), loaded)
    assert not re.search(driver_version_pattern("575.51"), loaded.replace("575.51.03", "575.510.3"))
    assert re.match("^hold [^ ]+ " + driver_version_pattern("575"), "hold cuda-drivers-575 575.51.03-1")
    assert not re.match("^hold [^ ]+ " + driver_version_pattern("57"), "hold cuda-drivers-575 575.51.03-1")
