"""library/port_holders.py's reading of the host's sockets, on a real socket of this process: the
preflight's failure message, from a real playbook run, is tested in tests/integration/test_roles.py."""

from __future__ import annotations

import importlib.util
import os
import socket

import pytest

from harness import REPO
from harness.server import free_port

pytestmark = pytest.mark.unit

spec = importlib.util.spec_from_file_location("port_holders", REPO / "library/port_holders.py")
assert spec is not None
assert spec.loader is not None
port_holders = importlib.util.module_from_spec(spec)
spec.loader.exec_module(port_holders)


def test_a_listening_socket_is_found_with_the_process_that_holds_it() -> None:
    free = free_port()
    with socket.create_server(("127.0.0.1", 0)) as server:
        held = server.getsockname()[1]
        sockets = port_holders.listening({held, free})
        assert set(sockets) == {held}  # the free port listens nowhere
        owners = port_holders.socket_owners(sockets[held])
        assert list(owners.values()) == [{os.getpid()}]
        assert "pytest" in port_holders.command_line(os.getpid())


def test_a_connected_socket_is_not_a_listener() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()) as client,
    ):
        assert client.getsockname()[1] not in port_holders.listening({client.getsockname()[1]})
