"""Build the wheelhouse the fleet installs from, offline: the runtime wheel, exactly the files of
requirements/server.lock (pip checks their hashes), torch's CPU wheel and
supervisor for hosts without systemd.

The runtime wheel gets a local version label from a hash of its sources (0.1.0+src.1a2b3c4d5e), so a
changed source is a new release that the model_runtime role installs beside the old one, while an
unchanged one is recognised and left alone. RUNTIME_VERSION in the wheelhouse names it.

  python scripts/wheelhouse.py [OUT] [--version-label LABEL]
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
LOCK = REPO / "requirements" / "server.lock"
# Not in the lock: installed per host beside the release venvs.
EXTRA = ["supervisor==4.3.0", "torch==2.13.0"]


def source_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted([REPO / "pyproject.toml", LOCK, *(REPO / "model_runtime").rglob("*.py")]):
        digest.update(path.relative_to(REPO).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def base_version() -> str:
    text = (REPO / "model_runtime" / "__init__.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def build(out: Path, label: str, runtime_only: bool = False) -> str:
    version = f"{base_version()}+{label}"
    marker = out / "RUNTIME_VERSION"
    if marker.is_file() and marker.read_text().strip() == version and list(out.glob("model_runtime-*.whl")):
        print(f"{out}: up to date (model-runtime {version})")
        return version
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # Build from a copy whose __version__ carries the label; the work tree is left untouched.
        tree = Path(tmp) / "src"
        shutil.copytree(
            REPO,
            tree,
            ignore=shutil.ignore_patterns(".venv", ".cache", ".git", "tests", "bench", "*.egg-info"),
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
            subprocess.run([*pip, "--no-deps", "--require-hashes", "-r", str(LOCK)], check=True)
            subprocess.run([*pip, *EXTRA], check=True)
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
    args = parser.parse_args()
    build(args.out, args.version_label or f"src.{source_hash()}", args.runtime_only)


if __name__ == "__main__":
    main()
