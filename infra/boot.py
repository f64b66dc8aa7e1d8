#!/usr/bin/env python3
"""Boot a cloud fleet instance: the pinned runtime bundle, the API keys, then the same playbook as
bare metal, run locally.

cloud-init runs this once, as root, on the instance's first boot (the launch template's user data
writes it and its configuration: infra/templates/cloud-init.yaml.j2). Nothing of ours is installed
yet, so it needs only the standard library and boto3 (Debian's python3-boto3) and never imports
model_runtime. Each step is idempotent: run again by hand after a failure, it resumes.

  python3 boot.py /etc/model-runtime/boot/boot.json

1. Fetch s3://BUCKET/BUNDLE_KEY (infra/bundle.py: the runtime wheelhouse, Ansible's wheels and the
   roles), check it against the sha256 the stack pins, unpack it under opt/model-runtime/bundles/, and
   check the model reference with the registry's own rules (taken from the bundle's runtime wheel).
2. Make Ansible's venv from the bundle's wheels, with no index.
3. Read the API keys from SSM Parameter Store (a SecureString) or Secrets Manager with the instance's
   role, into a root-only vars file: never in user data, on a command line or in the environment.
4. ansible-playbook -c local -i localhost, playbooks/cloud-instance.yml -e @vars -e @keys: the model
   from the registry, the runtime from the bundle's wheels, an instance that answers /health/ready.

Everything is written under the configuration's `prefix` ("" on an instance; a temporary folder in
tests, which also point boto3 at moto's server with boto3's own AWS_ENDPOINT_URL).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

BUNDLE_MANIFEST = "bundle.json"
PLAYBOOK = "playbooks/cloud-instance.yml"


class BootError(Exception):
    """A step that cannot go on; the message says which step and why."""


class Boot:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.version = str(config["runtime_version"])
        self.root = Path(config.get("prefix") or "/")
        self.python = str(config.get("python") or "/usr/bin/python3")
        self.log_file = self.root / "var/log/model-runtime/boot.log"
        self.private = self.root / "etc/model-runtime/boot"

    # --- output --------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} boot: {message}"
        print(line, flush=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("a") as handle:
            handle.write(line + "\n")

    def run(self, argv: list[str], **kwargs: Any) -> None:
        """A command whose output goes to the boot log (and cloud-init's output log)."""
        self.log("$ " + " ".join(argv))
        with subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs
        ) as process:
            assert process.stdout is not None
            with self.log_file.open("a") as handle:
                for line in process.stdout:
                    sys.stdout.write(line)
                    handle.write(line)
        if process.returncode != 0:
            raise BootError(f"{Path(argv[0]).name} exited with {process.returncode} (see {self.log_file})")

    # --- 1. the bundle ------------------------------------------------------------------------------
    def fetch_bundle(self, s3: Any) -> Path:
        expected = self.config.get("bundle_sha256")
        if not expected:
            raise BootError(
                "bundle_sha256: the stack pins no sha256 of the runtime bundle, and an unchecked bundle "
                "is refused (set runtimeBundleSha256: infra/bundle.py prints it)"
            )
        bundles = self.root / "opt/model-runtime/bundles"
        target = bundles / self.version
        if (target / BUNDLE_MANIFEST).is_file():
            self.log(f"bundle {self.version} is already unpacked at {target}")
            return target
        bundles.mkdir(parents=True, exist_ok=True)
        archive = bundles / f".{self.version}.tar.gz.partial"
        source = f"s3://{self.config['bucket']}/{self.config['bundle_key']}"
        self.log(f"fetching {source}")
        _aws(
            f"fetching {source}",
            s3.download_file,
            self.config["bucket"],
            self.config["bundle_key"],
            str(archive),
        )
        actual = sha256_file(archive)
        if actual != expected:
            archive.unlink()
            raise BootError(f"{source} has sha256 {actual}, the stack pins {expected}: refused")
        staging = bundles / f".{self.version}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        with tarfile.open(archive) as tar:
            safe_extract(tar, staging)
        archive.unlink()
        manifest = json.loads((staging / BUNDLE_MANIFEST).read_text())
        if manifest.get("runtime_version") != self.version:
            raise BootError(
                f"{source} holds runtime {manifest.get('runtime_version')}, the stack pins {self.version}"
            )
        os.replace(staging, target)
        self.log(f"bundle {self.version} unpacked at {target}")
        return target

    def check_model_ref(self, bundle: Path) -> str:
        """The model reference, checked with the registry's rules (model_runtime/registry/trust.py,
        the same code the role's checks run) before anything uses it."""
        wheels = sorted((bundle / "wheels").glob("model_runtime-*.whl"))
        if len(wheels) != 1:
            raise BootError(f"{bundle / 'wheels'} holds {len(wheels)} model_runtime wheels, not one")
        # Nothing of ours is installed yet, but the runtime wheel is a zip of pure Python that Python
        # imports from; the trust module needs only the standard library.
        sys.path.insert(0, str(wheels[0]))
        try:
            from model_runtime.registry.trust import UntrustedError, split_ref
        finally:
            sys.path.remove(str(wheels[0]))
        ref = self.config.get("vars", {}).get("model_artifacts_ref")
        try:
            split_ref(ref)
        except UntrustedError as exc:
            raise BootError(f"model_artifacts_ref: {exc}") from None
        return str(ref)

    def check_python(self, bundle: Path) -> None:
        """The bundle's wheels are built for one Python; a mismatch would only show deep in pip."""
        wanted = json.loads((bundle / BUNDLE_MANIFEST).read_text()).get("python")
        found = subprocess.run(
            [self.python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if wanted and found != wanted:
            raise BootError(
                f"the bundle's wheels are for Python {wanted}, but {self.python} is {found or 'missing'}: "
                "build the bundle with the AMI's Python (infra/README.md)"
            )

    # --- 2. Ansible ---------------------------------------------------------------------------------------
    def ansible_venv(self, bundle: Path) -> Path:
        venv = self.root / "opt/model-runtime/boot" / self.version / "venv"
        if (venv / ".complete").is_file():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        self.run([self.python, "-m", "venv", str(venv)])
        pip = [
            str(venv / "bin/python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-index",
            "--find-links",
            str(bundle / "wheels"),
        ]
        self.run([*pip, "ansible-core", "boto3"])
        # The model_registry module (run here, as the control node) imports only the registry, which
        # needs the standard library and boto3: torch and the rest belong to the runtime's release venv.
        self.run([*pip, "--no-deps", f"model-runtime=={self.version}"])
        (venv / ".complete").write_text(self.version + "\n")
        return venv

    # --- 3. the keys -------------------------------------------------------------------------------------
    def read_api_keys(self, session: Any) -> list[str]:
        reference = str(self.config["api_keys"])
        service, _, name = reference.partition(":")
        if service == "ssm":
            reply = _aws(
                f"reading {reference}", session.client("ssm").get_parameter, Name=name, WithDecryption=True
            )
            value = reply["Parameter"]["Value"]
        elif service == "secretsmanager":
            reply = _aws(
                f"reading {reference}", session.client("secretsmanager").get_secret_value, SecretId=name
            )
            value = reply.get("SecretString") or ""
        else:
            raise BootError(f"api_keys {reference!r}: not ssm:NAME or secretsmanager:NAME")
        keys: list[str] = []
        for line in value.splitlines():
            text = line.split("#", 1)[0].strip()
            if "=" in text:  # a key with its settings (priority=..., models=a,b): the role reads the line
                keys.append(text)
            else:  # keys alone, one or several a line (separated by commas)
                keys.extend(key.strip() for key in text.split(",") if key.strip())
        if not keys:
            raise BootError(f"{reference} holds no API key")
        self.log(f"read {len(keys)} API key(s) from {reference}")
        return keys

    def write_private(self, name: str, data: dict[str, Any]) -> Path:
        """A file only root can read, in a folder only root can enter."""
        self.private.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.private.chmod(0o700)
        path = self.private / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
        return path

    # --- 4. the playbook -------------------------------------------------------------------------------
    def role_vars(self, bundle: Path) -> dict[str, Any]:
        wheels = f"--no-index --find-links {bundle / 'wheels'}"
        prefix = str(self.config.get("prefix") or "")
        return {
            **self.config.get("vars", {}),
            "model_runtime_version": self.version,
            "model_runtime_pip_args": wheels,
            "model_runtime_python": self.python,
            "model_runtime_prefix": prefix,
            "model_artifacts_prefix": prefix,
            "cloud_metrics_prefix": prefix,
        }

    def playbook(self, bundle: Path, venv: Path, vars_file: Path, keys_file: Path) -> None:
        environment = {
            **os.environ,
            "ANSIBLE_CONFIG": str(bundle / "ansible/ansible.cfg"),
            "ANSIBLE_FORCE_COLOR": "0",
            # The Python the venvs are made with runs the modules too (no discovery). A setting, not an
            # extra var: the registry module's own interpreter (the playbook's Python) must still win.
            "ANSIBLE_PYTHON_INTERPRETER": self.python,
            # The model_registry module resolves the model with the instance's role, in its region.
            "AWS_DEFAULT_REGION": str(self.config["region"]),
            "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PYTHONUNBUFFERED": "1",
            "LANG": os.environ.get("LANG") or "C.UTF-8",
            "MODEL_RUNTIME_RUN_ID": f"boot-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}",
        }
        self.run(
            [
                str(venv / "bin/ansible-playbook"),
                "-c",
                "local",
                "-i",
                "localhost,",
                PLAYBOOK,
                "-e",
                f"@{vars_file}",
                "-e",
                f"@{keys_file}",
            ],
            cwd=bundle / "ansible",
            env=environment,
        )

    def boot(self) -> None:
        try:
            import boto3
        except ImportError:
            raise BootError(
                "boto3 is missing: the user data installs python3-boto3 (fleet.bootPackages)"
            ) from None
        session = boto3.session.Session(region_name=str(self.config["region"]))
        self.log(f"runtime {self.version}")
        bundle = self.fetch_bundle(session.client("s3"))
        self.log(f"model {self.check_model_ref(bundle)}")
        self.check_python(bundle)
        keys = self.read_api_keys(session)  # before the long installs: a wrong reference fails fast
        venv = self.ansible_venv(bundle)
        keys_file = self.write_private("keys.json", {"model_runtime_api_keys": keys})
        try:
            vars_file = self.write_private("vars.json", self.role_vars(bundle))
            self.playbook(bundle, venv, vars_file, keys_file)
        finally:
            # The role keeps the keys where the runtime reads them (mode 0600); no other copy stays.
            keys_file.unlink()

    def record(self, error: str | None) -> None:
        status = self.root / "var/lib/model-runtime/boot-status.json"
        status.parent.mkdir(parents=True, exist_ok=True)
        status.write_text(
            json.dumps(
                {
                    "ok": error is None,
                    "error": error,
                    "runtime_version": self.version,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
                indent=2,
            )
            + "\n"
        )


def _aws(what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
    """An AWS call whose failure becomes a BootError naming what was tried (never a secret value)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call(*args, **kwargs)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise BootError(f"{what} failed: {error.get('Code', '?')}: {error.get('Message', '')}") from None
    except BotoCoreError as exc:
        raise BootError(f"{what} failed: {exc}") from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_member(member: tarfile.TarInfo) -> None:
    """The bundle holds plain files and folders under relative paths; anything else is refused."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise BootError(f"bundle member {member.name!r} points outside the bundle")
    if not (member.isfile() or member.isdir()):
        raise BootError(f"bundle member {member.name!r} is not a plain file or folder")


def safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    dest.mkdir(parents=True)
    members = tar.getmembers()
    for member in members:
        check_member(member)
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, members=members, filter="data")
    else:
        # Pythons before 3.11.4 (Debian 12 ships 3.11.2) have no extraction filters: every member was
        # checked above instead.
        tar.extractall(dest, members=members)  # noqa: S202


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", type=Path, help="the boot configuration (JSON, written by the user data)")
    args = parser.parse_args(argv)
    boot = Boot(json.loads(args.config.read_text()))
    try:
        boot.boot()
    except BootError as exc:
        boot.log(f"failed: {exc}")
        boot.record(str(exc))
        return 1
    boot.record(None)
    boot.log("done: the instance serves")
    return 0


if __name__ == "__main__":
    sys.exit(main())
