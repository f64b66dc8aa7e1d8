"""Build the wheelhouse the fleet installs from, offline: the runtime wheel, and exactly the files of
the hash-pinned locks (pip checks their hashes): requirements/server.lock (the runtime's
dependencies), requirements/supervisor.lock (supervisord, for hosts without systemd) and a torch lock
(requirements/torch-cpu.lock by default; a CUDA wheelhouse names its own with --torch-lock).

The runtime wheel gets a local version label from a hash of its sources (0.1.0+src.1a2b3c4d5e), so a
changed source is a new release that the model_runtime role installs beside the old one, while an
unchanged one is recognised and left alone. RUNTIME_VERSION in the wheelhouse names it, and
wheelhouse.lock pins every wheel in the folder to its sha256: the model_runtime role installs the
runtime wheel by that hash (--require-hashes), so pip takes no other file.

  python scripts/wheelhouse.py [OUT] [--version-label LABEL] [--torch-lock LOCK] [--vllm-lock LOCK]
                               [--runtime-only]

It needs only the standard library and pip, so `make demo` builds it while torch and the runtime are
still installing into the venv it runs from.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "requirements"
# The runtime's dependencies and supervisord's venv; torch comes from the lock given on the command line.
LOCKS = [REQUIREMENTS / "server.lock", REQUIREMENTS / "supervisor.lock"]
TORCH_LOCK = REQUIREMENTS / "torch-cpu.lock"
WHEELHOUSE_LOCK = "wheelhouse.lock"
# A wheel's file name: {distribution}-{version}[-{build tag}]-{python}-{abi}-{platform}.whl (the
# binary distribution format); the distribution part never holds a "-".
WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


def source_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(
        [REPO / "pyproject.toml", *REQUIREMENTS.glob("*.lock"), *(REPO / "model_runtime").rglob("*.py")]
    ):
        digest.update(path.relative_to(REPO).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def base_version() -> str:
    text = (REPO / "model_runtime" / "__init__.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def wheel_name_and_version(filename: str) -> tuple[str, str]:
    """The distribution's normalized name (PEP 503) and the version of a wheel's file name."""
    match = WHEEL_NAME.match(filename)
    if match is None:
        raise ValueError(f"{filename} is not a wheel's file name")
    return re.sub(r"[-_.]+", "-", match["name"]).lower(), match["version"]


def write_wheelhouse_lock(out: Path) -> None:
    """wheelhouse.lock: every wheel of the folder as a pip requirement pinned to its file's sha256."""
    lines = ["# Written by scripts/wheelhouse.py: the sha256 of every wheel in this folder."]
    for wheel in sorted(out.glob("*.whl")):
        name, version = wheel_name_and_version(wheel.name)
        lines.append(f"{name}=={version} --hash=sha256:{sha256(wheel)}")
    (out / WHEELHOUSE_LOCK).write_text("\n".join(lines) + "\n")


def build(
    out: Path,
    label: str,
    runtime_only: bool = False,
    torch_lock: Path = TORCH_LOCK,
    vllm_locks: tuple[Path, ...] = (),
) -> str:
    version = f"{base_version()}+{label}"
    marker = out / "RUNTIME_VERSION"
    if (
        marker.is_file()
        and marker.read_text().strip() == version
        and list(out.glob("model_runtime-*.whl"))
        and (out / WHEELHOUSE_LOCK).is_file()
    ):
        print(f"{out}: up to date (model-runtime {version})")
        return version
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # Build from a copy whose __version__ carries the label; the work tree is left untouched.
        tree = Path(tmp) / "src"
        shutil.copytree(
            REPO,
            tree,
            # build artifacts stay out: an editable install may be writing the egg-info meanwhile
            ignore=shutil.ignore_patterns(".venv", ".cache", ".git", "tests", "bench", "*.egg-info", "build"),
        )
        init = tree / "model_runtime" / "__init__.py"
        init.write_text(re.sub(r'__version__ = "[^"]+"', f'__version__ = "{version}"', init.read_text()))
        pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(out)]
        subprocess.run([*pip, "--no-deps", str(tree)], check=True)
        wheel = next(out.glob(f"model_runtime-{version}-*.whl"))
        for stale in out.glob("model_runtime-*.whl"):
            if stale != wheel:
                stale.unlink()
        if not runtime_only:
            for lock in (*LOCKS, torch_lock, *vllm_locks):
                subprocess.run([*pip, "--no-deps", "--require-hashes", "-r", str(lock)], check=True)
    write_wheelhouse_lock(out)
    marker.write_text(version + "\n")
    print(f"{out}: model-runtime {version} and its dependencies")
    return version


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", nargs="?", type=Path, default=REPO / ".cache" / "wheelhouse")
    parser.add_argument("--version-label", help="local version label (default: src.<hash of the sources>)")
    parser.add_argument(
        "--runtime-only",
        action="store_true",
        help="only the runtime wheel (its dependencies: another wheelhouse)",
    )
    parser.add_argument(
        "--torch-lock",
        type=Path,
        default=TORCH_LOCK,
        help="the torch build's lock (scripts/lock.py --torch; default: the CPU build's)",
    )
    parser.add_argument(
        "--vllm-lock",
        type=Path,
        action="append",
        default=[],
        help="also vLLM's environment (scripts/lock.py --vllm), for hosts that serve with vLLM: several GB",
    )
    args = parser.parse_args()
    label = args.version_label or f"src.{source_hash()}"
    build(args.out, label, args.runtime_only, args.torch_lock, tuple(args.vllm_lock))


if __name__ == "__main__":
    main()
