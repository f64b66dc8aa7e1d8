"""The HAProxy runtime API client (module_utils/haproxy_runtime.py) against a real HAProxy: a drain
waits for the server's sessions to end and fails, saying so, when they do not; the pool as `fab status`
reads it, through the client run by `python3 -c` as Fabric runs it on a load balancer."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import REPO
from harness.server import free_port
from module_utils.haproxy_runtime import HAProxyError, RuntimeAPI, model_backend
from tests.support.haproxy import runtime_api

pytestmark = pytest.mark.integration

CLIENT = REPO / "module_utils" / "haproxy_runtime.py"


@pytest.fixture
def balancer(tmp_path: Path) -> Iterator[tuple[RuntimeAPI, int, socket.socket]]:
    """A TCP backend of one server (a listening socket that holds what it accepts) behind HAProxy:
    yields the client, the frontend's port and the server's socket."""
    port = free_port()
    with socket.create_server(("127.0.0.1", 0)) as server:
        proxies = (
            "defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n"
            f"frontend front\n  bind 127.0.0.1:{port}\n  default_backend pool-demo\n"
            f"backend pool-demo\n  server s-1 127.0.0.1:{server.getsockname()[1]}\n"
        )
        with runtime_api(tmp_path, proxies) as sock:
            yield RuntimeAPI(str(sock), model_backend("pool", "demo")), port, server


def test_a_drain_waits_for_the_sessions_and_fails_when_they_stay(balancer: tuple) -> None:
    api, port, server = balancer
    with socket.create_connection(("127.0.0.1", port)), server.accept()[0]:
        api.set_state("s-1", "drain")
        assert api.admin_state("s-1") == "drain"
        with pytest.raises(HAProxyError, match=r"not idle after 1s \(status DRAIN, 1 sessions\)"):
            api.wait_idle("s-1", 1)
    # Both ends closed: the session ends, and the wait with it.
    assert api.wait_idle("s-1", 10)["scur"] == "0"
    api.set_state("s-1", "ready")
    assert api.admin_state("s-1") == "ready"


def test_unknown_servers_and_states_are_refused(balancer: tuple) -> None:
    api, _, _ = balancer
    with pytest.raises(HAProxyError, match="no server pool-demo/s-9"):
        api.server("s-9")
    with pytest.raises(HAProxyError, match="refused to set pool-demo/s-9"):
        api.set_state("s-9", "drain")
    with pytest.raises(ValueError, match="state must be one of"):
        api.set_state("s-1", "up")


def test_the_pool_as_fab_status_reads_it_from_a_balancer(balancer: tuple) -> None:
    api, _, _ = balancer
    api.set_state("s-1", "maint")
    command = ["python3", "-c", CLIENT.read_text(), api.socket_path, "pool"]
    read = subprocess.run(command, capture_output=True, text=True, check=True)
    assert json.loads(read.stdout) == {"s-1": {"status": "MAINT", "sessions": 0}}
