"""Build the runtime bundle the cloud instances boot from, and optionally upload it to the artifact
bucket: one tarball per runtime release, everything an instance installs, with no index needed.

  python infra/bundle.py [--wheelhouse .cache/wheelhouse] [--out .cache/bundles] [--upload s3://BUCKET/bundles]

The bundle holds:
  wheels/    the runtime wheelhouse (scripts/wheelhouse.py: the runtime wheel, torch, supervisor...)
             and Ansible's own wheels (ansible-core and boto3, at this venv's versions)
  ansible/   the roles, the modules and their shared code (module_utils), the lock file,
             playbooks/cloud-instance.yml (with playbooks/group_vars/all.yml) and an ansible.cfg
  bundle.json  the runtime release and the Python the wheels are for (boot.py checks both)

Build it with the Python of the AMI (the wheels are built for one Python), and with the torch build
the GPUs need (a CUDA wheelhouse: infra/README.md). It prints the sha256 that runtimeBundleSha256 pins.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from infra.boot import sha256_file  # noqa: E402  (the instance checks the bundle with the same code)
from infra.userdata import bundle_name  # noqa: E402

# What boot.py installs into Ansible's venv on the instance, pinned to this venv's versions.
OPS_PACKAGES = ("ansible-core", "boto3")
# The repository's tree as the roles expect it (model_runtime reads requirements/server.lock, the
# runtime's hash-pinned dependencies, relative to its role path).
ANSIBLE_TREE = ("roles", "library", "module_utils", "filter_plugins", "requirements")
ANSIBLE_CFG = """\
# The instance's Ansible settings (written by infra/bundle.py): this bundle's roles and modules.
[defaults]
roles_path = roles
library = library
module_utils = module_utils
filter_plugins = filter_plugins
interpreter_python = auto_silent
retry_files_enabled = False
stdout_callback = default
callback_result_format = yaml
nocows = True
"""


def ops_wheels(cache: Path) -> Path:
    """Ansible's and boto3's wheels for this Python, downloaded once into cache."""
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    pins = [f"{name}=={version(name)}" for name in OPS_PACKAGES]
    folder = cache / f"ops-wheels-py{python}-{hashlib.sha256(' '.join(pins).encode()).hexdigest()[:10]}"
    if not (folder / ".complete").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--only-binary=:all:",
                "--dest",
                str(folder),
                *pins,
            ],
            check=True,
        )
        (folder / ".complete").write_text(" ".join(pins) + "\n")
    return folder


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _filter(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    # Plain files and folders only (boot.py refuses anything else), owned by nobody in particular.
    if info.name.endswith((".pyc", "__pycache__")) or not (info.isfile() or info.isdir()):
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def build(wheelhouse: Path, out: Path, cache: Path) -> tuple[Path, dict]:
    """The bundle of the wheelhouse's runtime release, and its manifest (bundle.json)."""
    runtime_version = (wheelhouse / "RUNTIME_VERSION").read_text().strip()
    target = out / bundle_name(runtime_version)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "runtime_version": runtime_version,
        "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "ops": {name: version(name) for name in OPS_PACKAGES},
    }
    with tempfile.NamedTemporaryFile(dir=out, prefix=f".{target.name}.", delete=False) as handle:
        partial = Path(handle.name)
    try:
        # Wheels are compressed already: the fastest gzip level loses next to nothing.
        # dereference: a link of the tree travels as the file it names (module_utils/readiness.py is
        # model_runtime/readiness.py under the name Ansible's modules import), for boot.py unpacks plain
        # files only.
        with tarfile.open(partial, "w:gz", compresslevel=1, dereference=True) as tar:
            _add_bytes(tar, "bundle.json", json.dumps(manifest, indent=2).encode() + b"\n")
            # The two sets share a few wheels (Jinja2, PyYAML...): each goes in once.
            wheels = {w.name: w for source in (ops_wheels(cache), wheelhouse) for w in source.glob("*.whl")}
            for name in sorted(wheels):
                tar.add(wheels[name], f"wheels/{name}", filter=_filter)
            _add_bytes(tar, "wheels/RUNTIME_VERSION", f"{runtime_version}\n".encode())
            # The wheels' sha256 (scripts/wheelhouse.py): the role installs the runtime wheel by it.
            tar.add(wheelhouse / "wheelhouse.lock", "wheels/wheelhouse.lock", filter=_filter)
            for folder in ANSIBLE_TREE:
                tar.add(REPO / folder, f"ansible/{folder}", filter=_filter)
            # The playbook and the wiring between roles that every playbook shares (group_vars/all.yml).
            for playbook_file in ("cloud-instance.yml", "group_vars/all.yml"):
                tar.add(
                    REPO / "playbooks" / playbook_file,
                    f"ansible/playbooks/{playbook_file}",
                    filter=_filter,
                )
            _add_bytes(tar, "ansible/ansible.cfg", ANSIBLE_CFG.encode())
        partial.chmod(0o644)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target, manifest


def upload(bundle: Path, url: str) -> str:
    import boto3

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    key = f"{prefix.strip('/')}/{bundle.name}" if prefix.strip("/") else bundle.name
    boto3.client("s3").upload_file(str(bundle), bucket, key)
    return f"s3://{bucket}/{key}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--wheelhouse", type=Path, default=REPO / ".cache" / "wheelhouse")
    parser.add_argument("--out", type=Path, default=REPO / ".cache" / "bundles")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache", help="where Ansible's wheels are kept")
    parser.add_argument("--upload", metavar="S3_URL", help="s3://BUCKET/bundles (the stack output bundleUrl)")
    args = parser.parse_args()
    if not (args.wheelhouse / "RUNTIME_VERSION").is_file():
        parser.error(f"{args.wheelhouse}: no wheelhouse (python scripts/wheelhouse.py {args.wheelhouse})")
    bundle, manifest = build(args.wheelhouse, args.out, args.cache)
    digest = sha256_file(bundle)
    print(f"{bundle}: runtime {manifest['runtime_version']} for Python {manifest['python']}, sha256 {digest}")
    if args.upload:
        print(f"uploaded to {upload(bundle, args.upload)}")
    print(f"pulumi config set runtimeVersion {manifest['runtime_version']}")
    print(f"pulumi config set runtimeBundleSha256 {digest}")


if __name__ == "__main__":
    main()
