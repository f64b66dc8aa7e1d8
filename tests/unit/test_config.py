from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.playbooks import role_defaults
from model_runtime.access import OPEN, KeyPolicy
from model_runtime.config import API_KEYS_ENV, ConfigError, ServerSettings, load_settings

pytestmark = pytest.mark.unit


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = write(tmp_path / "c.yaml", "model: {path: /m}\nscheduler: {max_queue: 5, max_batch_size: 3}\n")
    env = {"MODEL_RUNTIME_SCHEDULER__MAX_QUEUE": "9", "MODEL_RUNTIME_SERVER__PORT": "9000"}
    settings = load_settings(config, {"server": {"port": 9100, "host": None}}, environ=env)
    assert settings.scheduler.max_queue == 9  # environment over file
    assert settings.scheduler.max_batch_size == 3  # file over default
    assert settings.server.port == 9100  # flag over environment
    assert settings.server.host == "127.0.0.1"  # an unset flag changes nothing


@pytest.mark.parametrize(
    ("text", "env", "named"),
    [
        ("model: {path: /m}\nschedular: {max_queue: 1}\n", {}, "schedular: unknown key"),
        ("model: {path: /m}\nscheduler: {max_queue: -1}\n", {}, "scheduler.max_queue"),
        ("model: {path: /m, dtype: float8}\n", {}, "model.dtype"),
        ("model: {path: /m, device: gpu0}\n", {}, "model.device"),
        ("model: {path: /m}\n", {"MODEL_RUNTIME_SERVER__PORT": "http"}, "server.port"),
        ("server: {port: 1}\n", {}, "model.path: required"),
        ("- just\n- a list\n", {}, "top level must be a mapping"),
        ("model: {path: /m\n", {}, "not valid YAML"),
        # The internal listener (metrics, admin) never on a wildcard or public address, nor on the API's port.
        (
            "model: {path: /m}\nserver: {metrics_host: 0.0.0.0}\n",
            {},
            "server.metrics_host: 0.0.0.0: must be a loopback or private",
        ),
        (
            "model: {path: /m}\nserver: {metrics_host: 8.8.8.8}\n",
            {},
            "8.8.8.8: must be a loopback or private",
        ),
        (
            "model: {path: /m}\nserver: {metrics_host: gpu-a01}\n",
            {},
            "server.metrics_host: 'gpu-a01': must be an IP address",
        ),
        (
            "model: {path: /m}\nserver: {port: 8101, metrics_port: 8101}\n",
            {},
            "server: metrics_port: 8101 is server.port too",
        ),
        ("model: {path: /m}\nserver: {max_prompt_chars: 0}\n", {}, "server.max_prompt_chars"),
        (
            "model: {path: /m}\nscheduler: {engine_stall_s: 60, engine_stall_exit_s: 30}\n",
            {},
            "scheduler: engine_stall_exit_s: 30.0 is below engine_stall_s",
        ),
        ("model: {path: /m, engine: vllm}\n", {}, "vllm.python: model.engine is vllm, which needs"),
        (
            "model: {path: /m, engine: vllm}\nvllm: {python: /v/bin/python}\nserver: {hot_swap: beside}\n",
            {},
            "server.hot_swap: beside loads a second copy of the model next to the first, but "
            "vllm.gpu_memory_utilization 0.9 gives one copy that share of each GPU",
        ),
        (
            "model: {path: /m, engine: builtin, tensor_parallel_size: 2}\n",
            {},
            "model: tensor_parallel_size x pipeline_parallel_size is 2: the builtin engine runs",
        ),
        (
            "model: {path: /m, engine: torch}\n",
            {},
            "model.engine: Input should be 'auto', 'builtin' or 'vllm'",
        ),
        (
            "model: {path: /m}\nserver: {listed_models: [demo, ../etc]}\n",
            {},
            "server.listed_models: entry 2 '../etc': not a model name",
        ),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, env: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_settings(write(tmp_path / "c.yaml", text), environ=env)


def test_api_keys_from_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = write(
        tmp_path / "keys",
        "# operators\nkey-one\n\nkey-two  # rotated 2026-11\n"
        "key-four priority=batch models=demo,demo-int8 requests_per_minute=60 tokens_per_minute=9000\n",
    )
    monkeypatch.setenv(API_KEYS_ENV, "key-three, ")
    settings = load_settings(None, {"model": {"path": "/m"}, "server": {"api_keys_file": keys}}, environ={})
    assert settings.api_keys() == {
        "key-one": OPEN,
        "key-two": OPEN,
        "key-three": OPEN,
        "key-four": KeyPolicy("batch", frozenset({"demo", "demo-int8"}), 60, 9000),
    }


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (
            "sk-secret-1 priority=urgent",
            "line 2: priority 'urgent' is not one of interactive, standard, batch",
        ),
        ("sk-secret-1 colour=blue", "line 2: unknown setting 'colour'"),
        ("sk-secret-1 models=", "line 2: models must be model names"),
        ("sk-secret-1 models=../x", "line 2: models must be model names"),
        ("sk-secret-1 requests_per_minute=-1", "line 2: requests_per_minute must be a whole number above 0"),
        ("sk-secret-1 priority=batch priority=batch", "line 2: priority is given twice"),
        ("priority=batch sk-secret-1", "line 2: the line must start with the key"),
        ("sk-secret-0", "line 2: this key is already given on an earlier line"),
    ],
)
def test_a_bad_key_line_is_named_by_its_number_never_its_key(tmp_path: Path, line: str, says: str) -> None:
    keys = write(tmp_path / "keys", f"sk-secret-0\n{line}\n")
    settings = load_settings(None, {"model": {"path": "/m"}, "server": {"api_keys_file": keys}}, environ={})
    with pytest.raises(ConfigError, match=re.escape(says)) as refused:
        settings.api_keys()
    assert "sk-secret" not in str(refused.value)


def test_no_key_is_refused_unless_explicitly_unauthenticated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(API_KEYS_ENV, raising=False)
    settings = load_settings(None, {"model": {"path": "/m"}}, environ={})
    with pytest.raises(ConfigError, match=r"server\.api_keys_file"):
        settings.api_keys()
    open_settings = load_settings(
        None, {"model": {"path": "/m"}, "server": {"allow_unauthenticated": True}}, {}
    )
    assert open_settings.api_keys() == {}


def test_the_internal_listener_takes_loopback_and_private_addresses() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "10.20.1.11", "fd00::5"):
        settings = load_settings(
            None, {"model": {"path": "/m"}, "server": {"metrics_host": host}}, environ={}
        )
        assert settings.server.metrics_host == host


def test_unreadable_key_file_is_named(tmp_path: Path) -> None:
    settings = load_settings(
        None, {"model": {"path": "/m"}, "server": {"api_keys_file": tmp_path / "nope"}}, {}
    )
    with pytest.raises(ConfigError, match="cannot read"):
        settings.api_keys()


def test_a_lone_instance_listens_where_a_fleet_s_first_instance_does() -> None:
    """One source per port: the runtime's defaults are the model_runtime role's base ports, and the load
    balancer's front port is none of them (it stays the fleet's, in front of the instances)."""
    runtime, balancer = role_defaults("model_runtime"), role_defaults("loadbalancer")
    defaults = ServerSettings()
    assert defaults.port == runtime["model_runtime_base_port"]
    assert defaults.metrics_port == runtime["model_runtime_metrics_base_port"]
    assert balancer["loadbalancer_port"] not in (defaults.port, defaults.metrics_port)
