"""The versions of one NVIDIA driver release, as the nvidia_driver role compares them: what the kernel
module says is loaded, what nvidia-smi reports, a package's version in dpkg, against the version the
inventory pins (a branch such as 575, or an exact 575.51.03)."""

from __future__ import annotations

import re


def driver_version_pattern(target: str) -> str:
    """A regular expression for the versions of the release target names, anywhere in a text: 575
    finds 575.51.03 and 575.51.03-1 (a package's revision), never 5750, 1575 or 575.510 for 575.51."""
    return rf"(?<![0-9.]){re.escape(str(target))}(?![0-9])"


class FilterModule:
    def filters(self) -> dict:
        return {"driver_version_pattern": driver_version_pattern}
