"""The runtime wheel as a serving host gets it: built from the repository, with no operator code inside
(fleet_ops, Ansible, Fabric, pulumi; boto3 only in the S3 store), installed offline from the fleet's
wheelhouse into a fresh venv that has neither Ansible, boto3 nor pulumi, and serving the demo model to
the openai client. With the `s3` extra on top, the same runtime serves a model pulled from S3 (moto);
without it, an S3 registry is refused with a message that names the extra."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from harness.playbooks import ensure_wheelhouse, release_wheelhouse
from harness.server import RuntimeProcess
from tests.support.s3 import make_bucket, s3_server

pytestmark = pytest.mark.integration

LABEL = "wheeltest"
# The operator's side and its tools, and the repository's own test and bench helpers: the runtime
# imports none of them.
OPERATOR_MODULES = {
    *("fleet_ops", "infra", "module_utils", "harness", "bench", "tests"),
    *("ansible", "fabric", "invoke", "paramiko", "pulumi", "pulumi_aws"),
}
# boto3 is the `s3` extra's, for this one module (it imports boto3 only when an S3 store is opened).
AWS_MODULES = {"boto3", "botocore"}
S3_STORE = "model_runtime/registry/stores.py"
OPERATOR_DISTRIBUTIONS = {"ansible-core", "fabric", "pulumi", "pulumi-aws", "boto3"}


def run(*command: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )


def succeeds(*command: str | Path, cwd: Path) -> str:
    done = run(*command, cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def imported_modules(source: str) -> set[str]:
    """The top-level names of every absolute import in a module, those inside functions included."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def site_packages(venv: Path) -> Path:
    python = venv / "bin" / "python"
    return Path(
        succeeds(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=venv).strip()
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runtime wheel built from this repository (scripts/wheelhouse.py --runtime-only)."""
    folder, _ = release_wheelhouse(tmp_path_factory.mktemp("runtime-wheel"), LABEL)
    return next(folder.glob("model_runtime-*.whl"))


@pytest.fixture(scope="module")
def runtime_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed offline from the fleet's wheelhouse: its dependencies,
    torch included, come from the wheel's own metadata, and pip check agrees with them."""
    wheelhouse = ensure_wheelhouse()
    venv = tmp_path_factory.mktemp("runtime-venv")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [venv / "bin" / "python", "-m", "pip"]
    # --no-compile: torch's bytecode is written as it is imported; compiling all of it up front is slow.
    succeeds(
        *pip, "install", "--quiet", "--no-compile", "--no-index", "--find-links", wheelhouse, wheel, cwd=venv
    )
    succeeds(*pip, "check", cwd=venv)
    return venv


@pytest.fixture
def outside_the_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Processes started here import the runtime from their own venv only: no PYTHONPATH, and a working
    directory (which `python -m` puts first on the path) that is not the repository."""
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def complete(server: RuntimeProcess) -> str:
    """One completion from a started server (stopped afterwards); its system_fingerprint."""
    try:
        completion = server.client().completions.create(
            model="demo", prompt="The Program", max_tokens=8, temperature=0
        )
    finally:
        server.stop()
    assert completion.choices[0].text
    return completion.system_fingerprint


def test_the_wheel_holds_the_runtime_and_no_operator_code(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert {n.partition("/")[0] for n in names if ".dist-info/" not in n} == {"model_runtime"}
        offenders = {}
        for name in (n for n in names if n.endswith(".py")):
            forbidden = OPERATOR_MODULES | (AWS_MODULES if name != S3_STORE else set())
            if found := imported_modules(archive.read(name).decode()) & forbidden:
                offenders[name] = sorted(found)
        assert offenders == {}
        assert imported_modules(archive.read(S3_STORE).decode()) >= AWS_MODULES
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requirements = [
        Requirement(line.removeprefix("Requires-Dist: "))
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist: ")
    ]
    always = {canonicalize_name(r.name) for r in requirements if r.marker is None}
    assert {"torch", "transformers", "fastapi"} <= always
    assert always.isdisjoint(OPERATOR_DISTRIBUTIONS)
    with_s3 = {
        canonicalize_name(r.name) for r in requirements if r.marker and r.marker.evaluate({"extra": "s3"})
    }
    assert "boto3" in with_s3


def test_a_fresh_venv_serves_the_demo_model_without_ansible_boto3_or_pulumi(
    runtime_venv: Path, demo_model: Path, outside_the_repository: Path
) -> None:
    found = succeeds(
        runtime_venv / "bin" / "python",
        "-c",
        "import importlib.util as u, model_runtime as m; print(m.__file__); "
        f"print(*(n for n in {sorted(OPERATOR_MODULES | AWS_MODULES)} if u.find_spec(n)))",
        cwd=outside_the_repository,
    )
    runtime_file, operator_modules = found.splitlines()
    assert Path(runtime_file).is_relative_to(runtime_venv)
    assert operator_modules == ""

    command = [str(runtime_venv / "bin" / "model-runtime")]
    server = RuntimeProcess(demo_model, outside_the_repository, name="demo", command=command).start()
    assert f"+{LABEL}:demo@" in complete(server)


def test_the_s3_store_names_its_extra_and_serves_a_model_from_s3_with_it(
    runtime_venv: Path, wheel: Path, demo_model: Path, outside_the_repository: Path
) -> None:
    registry = "s3://models/registry"
    with s3_server():
        make_bucket("models")
        refused = run(runtime_venv / "bin" / "model-runtime", "registry", "--registry", registry, "list",
                      cwd=outside_the_repository)  # fmt: skip
        assert refused.returncode == 2
        assert f"{registry}: the S3 store needs boto3" in refused.stderr
        assert "pip install 'model-runtime[s3]'" in refused.stderr
        assert "Traceback" not in refused.stderr

        # The extra on top of that same install: a venv that sees the runtime venv's packages (as the
        # model_runtime role's releases share one torch) and adds what `s3` brings.
        s3_venv = outside_the_repository / "s3-venv"
        subprocess.run([sys.executable, "-m", "venv", str(s3_venv)], check=True)
        (site_packages(s3_venv) / "runtime-venv.pth").write_text(f"{site_packages(runtime_venv)}\n")
        python = s3_venv / "bin" / "python"
        wheelhouse = ensure_wheelhouse()
        succeeds(python, "-m", "pip", "install", "--quiet", "--find-links", wheelhouse, f"{wheel}[s3]",
                 cwd=outside_the_repository)  # fmt: skip
        runtime = [str(python), "-m", "model_runtime"]

        pushed = succeeds(*runtime, "registry", "--registry", registry, "push", "demo", demo_model,
                          cwd=outside_the_repository)  # fmt: skip
        version = pushed.strip().splitlines()[-1].rpartition(":")[2]
        pulled = outside_the_repository / "pulled"
        server = RuntimeProcess(
            Path(f"registry:demo:{version}"),
            outside_the_repository,
            settings={"registry": {"url": registry, "cache_dir": str(pulled)}},
            name="demo",
            command=runtime,
        ).start()
        assert f"+{LABEL}:demo@" in complete(server)
    assert any(version in str(path) for path in pulled.rglob("manifest.json"))
