"""What the roles install is pinned by hash and comes from the wheelhouse: with the roles' default pip
options no index is asked (a counting index server on loopback sees no request), and a package whose
file does not match its pinned sha256 is refused before anything is installed. The hashes come from
requirements/*.lock (scripts/lock.py) and the wheelhouse's wheelhouse.lock (scripts/wheelhouse.py)."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness import REPO
from harness.playbooks import PlaybookRun, ensure_wheelhouse, playbook

pytestmark = pytest.mark.integration

# The local inventory installs from the repository's wheelhouse (.cache/wheelhouse).
LOCAL = REPO / "inventories" / "local"
ROLE_TASKS = REPO / "tests" / "integration" / "playbooks" / "role_tasks.yml"
SUPERVISORD = {
    "steps": [{"role": "supervisord", "tasks": "main.yml"}],
    "cleanup": [{"role": "supervisord", "tasks": "shutdown.yml"}],
}
REFUSED = "THESE PACKAGES DO NOT MATCH THE HASHES"


class CountingIndex(BaseHTTPRequestHandler):
    """A package index that has nothing and remembers every request."""

    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def index() -> Iterator[tuple[str, list[str]]]:
    """An index URL on loopback, and the requests it received."""
    requests: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Index", (CountingIndex,), {"requests": requests}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/simple/", requests
    finally:
        server.shutdown()
        server.server_close()


def host_with_wheelhouse(tmp_path: Path) -> Path:
    """A host's prefix with the fleet's wheelhouse where the roles look by default."""
    prefix = tmp_path / "fs"
    default = prefix / "opt" / "model-runtime" / "wheelhouse"
    default.parent.mkdir(parents=True)
    default.symlink_to(ensure_wheelhouse())
    return prefix


def installed(venv: Path, package: str) -> list[Path]:
    return list(venv.glob(f"lib/python3*/site-packages/{package}"))


def wrong_hash(lock: Path, package: str) -> str:
    """The lock's text with `package`'s sha256 replaced by another."""
    text = lock.read_text()
    changed = re.sub(rf"(?m)^({package}==\S+ --hash=sha256:)[0-9a-f]{{64}}", r"\g<1>" + "0" * 64, text)
    assert changed != text
    return changed


def assert_refused(run: PlaybookRun) -> None:
    assert run.returncode != 0
    assert REFUSED in run.output, run.output[-3000:]


def test_supervisord_installs_from_the_wheelhouse_without_asking_an_index(
    tmp_path: Path, index: tuple[str, list[str]]
) -> None:
    url, requests = index
    prefix = host_with_wheelhouse(tmp_path)
    environment = {"PIP_INDEX_URL": url, "PIP_EXTRA_INDEX_URL": url}
    run = playbook(ROLE_TASKS, LOCAL, {**SUPERVISORD, "supervisord_prefix": str(prefix)}, env=environment)
    assert run.returncode == 0, run.output[-3000:]
    assert requests == []
    assert installed(prefix / "opt/model-runtime/supervisor", "supervisor")


def test_a_supervisor_wheel_that_does_not_match_its_hash_is_not_installed(tmp_path: Path) -> None:
    prefix = host_with_wheelhouse(tmp_path)
    lock = tmp_path / "supervisor.lock"
    lock.write_text(wrong_hash(REPO / "requirements" / "supervisor.lock", "supervisor"))
    settings = {**SUPERVISORD, "supervisord_prefix": str(prefix), "supervisord_lock_file": str(lock)}
    assert_refused(playbook(ROLE_TASKS, LOCAL, settings))
    assert not installed(prefix / "opt/model-runtime/supervisor", "supervisor")
    assert not (prefix / "run/model-runtime/supervisord.pid").exists()  # the role stopped there


def test_a_torch_wheel_that_does_not_match_its_hash_is_not_installed(tmp_path: Path) -> None:
    prefix = host_with_wheelhouse(tmp_path)
    settings = {
        "steps": [
            {"role": "model_runtime", "tasks": "facts.yml"},
            {"role": "model_runtime", "tasks": "install.yml"},
        ],
        "fleet_prefix": str(prefix),
        "model_runtime_torch_requirement": wrong_hash(REPO / "requirements" / "torch-cpu.lock", "torch"),
    }
    assert_refused(playbook(ROLE_TASKS, LOCAL, settings))
    install = prefix / "opt" / "model-runtime"
    torch_venvs = [venv for venv in (install / "torch").iterdir() if venv.is_dir()]
    assert torch_venvs  # pip ran, in the venv it made, and installed nothing of the lock there
    assert [
        path
        for venv in torch_venvs
        for name in ("torch", "sympy", "networkx")
        for path in installed(venv, name)
    ] == []
    # The release's venv and light dependencies install beside torch; its runtime waits for torch, and
    # the run stopped there: the release holds no runtime that could start.
    release_venvs = list((install / "releases").glob("*/venv"))
    assert release_venvs
    assert [path for venv in release_venvs for path in installed(venv, "model_runtime")] == []


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        ({"model_runtime_torch_requirement": "torch==2.13.0"},
         "model_runtime_torch_requirement must pin torch and each of its dependencies"),
        ({"model_runtime_version": "0.0.0+not.in.the.wheelhouse"},
         "model_runtime_package_sha256 is empty and no wheelhouse.lock in the --find-links folders"),
    ],
)  # fmt: skip
def test_preflight_refuses_an_install_without_hashes(tmp_path: Path, wrong: dict, message: str) -> None:
    ensure_wheelhouse()
    settings = {
        "steps": [{"role": "model_runtime", "tasks": "preflight.yml"}],
        "fleet_prefix": str(tmp_path / "fs"),
        "model_runtime_api_keys": ["preflight-key"],
        **wrong,
    }
    run = playbook(ROLE_TASKS, LOCAL, settings)
    assert run.returncode != 0
    assert message in run.output, run.output[-3000:]
