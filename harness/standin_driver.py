"""A stand-in NVIDIA driver for hosts without a GPU: real Debian packages, named and versioned as NVIDIA's
repository names them (`cuda-drivers-<branch>`, `nvidia-persistenced`), served by a local apt repository
that a host's apt sources name as an air-gapped fleet names its mirror (the nvidia_driver role's
`nvidia_driver_source: mirror`). Installing one "loads" it: its maintainer script writes the version line
the kernel module shows in /proc (at VERSION_FILE, the role's `nvidia_driver_loaded_version_path`), and
its `nvidia-smi` answers for one GPU, or fails as nvidia-smi does when it cannot reach the driver.

The namespace hosts share this machine's dpkg database and /etc/apt: a context manager adds the source
and takes every trace away again (packages purged, holds, the role's apt pin, the version file)."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

VERSION_FILE = Path("/run/mrt-standin-nvidia/version")
SOURCES = Path("/etc/apt/sources.list.d")
SOURCE_NAME = "mrt-standin-nvidia.list"
PIN = Path("/etc/apt/preferences.d/model-runtime-nvidia-driver.pref")  # what the nvidia_driver role writes
# A machine with a real NVIDIA driver (loaded, or its nvidia-smi) keeps it: no stand-in is installed there.
REAL_DRIVER = Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None
KEEPS_REAL_DRIVER = "this machine has a real NVIDIA driver, which the stand-in would replace"
VIRTUAL = "mrt-standin-nvidia-driver"  # one driver branch at a time: each provides and conflicts with it

WORKING_SMI = """#!/bin/sh
# Stand-in nvidia-smi (model-runtime's tests): one GPU on driver {version}.
case "$*" in
  *--query-gpu=*) echo "0, Stand-in GPU, {version}, Enabled" ;;
  *) echo "NVIDIA-SMI {version}    Driver Version: {version}    CUDA Version: 12.8" ;;
esac
"""
BROKEN_SMI = """#!/bin/sh
# Stand-in nvidia-smi (model-runtime's tests): driver {version} installed, but it does not work.
echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver." >&2
exit 9
"""
LOAD = f"""#!/bin/sh
set -e
mkdir -p {VERSION_FILE.parent}
echo "NVRM version: NVIDIA UNIX x86_64 Kernel Module  {{version}}  (stand-in)" > {VERSION_FILE}
"""


def _package(folder: Path, name: str, version: str, control: str, files: dict[str, tuple[str, int]]) -> Path:
    """One .deb built with dpkg-deb: `files` maps a path in the package to (content, mode)."""
    tree = folder / f"{name}_{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}-1\nArchitecture: all\n"
        f"Maintainer: model-runtime tests <tests@localhost>\n{control}"
        f"Description: stand-in {name} {version} for model-runtime's tests\n"
    )
    for path, (content, mode) in files.items():
        target = tree / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        target.chmod(mode)
    deb = folder / f"{name}_{version}-1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)], check=True,
                   capture_output=True)  # fmt: skip
    shutil.rmtree(tree)
    return deb


def _index(folder: Path, debs: list[Path]) -> None:
    """The flat repository's Packages and Release files (what apt-ftparchive would write)."""
    stanzas = []
    for deb in debs:
        control = subprocess.run(["dpkg-deb", "-f", str(deb)], check=True, capture_output=True, text=True)
        data = deb.read_bytes()
        stanzas.append(
            control.stdout.rstrip("\n")
            + f"\nFilename: ./{deb.name}\nSize: {len(data)}\nSHA256: {hashlib.sha256(data).hexdigest()}\n"
        )
    packages = "\n".join(stanzas).encode()
    (folder / "Packages").write_bytes(packages)
    (folder / "Release").write_text(
        f"Origin: model-runtime-tests\nLabel: stand-in NVIDIA driver\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S UTC', time.gmtime())}\nSHA256:\n"
        f" {hashlib.sha256(packages).hexdigest()} {len(packages)} Packages\n"
    )


class StandinDriver:
    """A local repository with the stand-in driver at each version of `versions` (version -> whether it
    works), named while the context lasts by the apt sources in `sources` (this machine's, or those a
    test host sees in their place)."""

    def __init__(self, versions: dict[str, bool], sources: Path = SOURCES) -> None:
        # Not pytest's tmp_path: apt reads a file: repository as its own unprivileged user (0755 on the way).
        folder = Path(tempfile.mkdtemp(prefix="mrt-standin-nvidia-"))
        folder.chmod(0o755)
        debs = []
        for version, works in versions.items():
            smi = (WORKING_SMI if works else BROKEN_SMI).format(version=version)
            debs.append(_package(
                folder, f"cuda-drivers-{version.split('.')[0]}", version,
                f"Provides: {VIRTUAL}\nConflicts: {VIRTUAL}\nReplaces: {VIRTUAL}\n",
                {"/usr/bin/nvidia-smi": (smi, 0o755),
                 "/DEBIAN/postinst": (LOAD.format(version=version), 0o755)},
            ))  # fmt: skip
            debs.append(_package(folder, "nvidia-persistenced", version, "", {}))
        _index(folder, debs)
        self.folder, self.source = folder, sources / SOURCE_NAME
        self.versions = {f"{version}-1" for version in versions}

    def installed(self) -> dict[str, str]:
        """The stand-in packages dpkg has installed (these versions of these names: never a real driver's):
        name -> version."""
        shown = subprocess.run(
            ["dpkg-query", "--show", "--showformat=${Package} ${Version} ${db:Status-Status}\n",
             "cuda-drivers-*", "nvidia-persistenced"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        rows = (line.split() for line in shown.stdout.splitlines())
        return {
            row[0]: row[1]
            for row in rows
            if len(row) == 3 and row[2] == "installed" and row[1] in self.versions
        }

    def held(self) -> set[str]:
        """The stand-in packages apt holds."""
        shown = subprocess.run(["apt-mark", "showhold"], capture_output=True, text=True, check=True)
        return set(shown.stdout.split()) & set(self.installed())

    def loaded(self) -> str:
        """The version the stand-in module shows, "" when none is loaded."""
        return VERSION_FILE.read_text().split()[7] if VERSION_FILE.exists() else ""

    def __enter__(self) -> StandinDriver:
        self.source.write_text(f"deb [trusted=yes] file:{self.folder} ./\n")
        return self

    def __exit__(self, *exc: object) -> None:
        installed = list(self.installed())
        if installed:  # held or not
            subprocess.run(["apt-mark", "unhold", *installed], capture_output=True, check=False)
            subprocess.run(["dpkg", "--purge", *installed], capture_output=True, check=False)
        for path in (self.source, PIN, VERSION_FILE):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            VERSION_FILE.parent.rmdir()
        shutil.rmtree(self.folder, ignore_errors=True)
