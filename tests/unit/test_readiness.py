"""The one readiness probe (model_runtime/readiness.py) against a real HTTP server on loopback, and what
lets Ansible ship that same file to hosts without model_runtime: module_utils/readiness.py is a link to
it, and it imports the standard library only."""

from __future__ import annotations

import ast
import sys
import threading
import urllib.error
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness import REPO
from harness.server import free_port
from model_runtime import readiness
from model_runtime.readiness import NotReady, answer, is_ready, ready_url, wait_ready

pytestmark = pytest.mark.unit


class Instance(BaseHTTPRequestHandler):
    """/health/ready answers 503 (loading) for the first `loading` probes, then 200."""

    loading = 0

    def do_GET(self) -> None:
        status = 503 if Instance.loading > 0 else 200
        Instance.loading -= 1
        body = b'{"status": "loading"}' if status == 503 else b'{"status": "ready"}'
        self.send_response(status if self.path == readiness.READY_PATH else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def instance() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Instance)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_ready_only_on_200(instance: str) -> None:
    Instance.loading = 1
    assert answer(ready_url(instance), 5) == (503, '{"status": "loading"}')  # an error status is an answer
    assert is_ready(ready_url(instance))
    assert not is_ready(instance + "elsewhere")  # 404


def test_waits_through_loading_and_gives_up_on_silence(instance: str) -> None:
    Instance.loading = 2
    probes = []
    wait_ready(ready_url(instance), 30, between=lambda: probes.append(1), poll_s=0.01)
    assert len(probes) == 2
    silent = ready_url(f"http://127.0.0.1:{free_port()}")
    assert not is_ready(silent)
    with pytest.raises(urllib.error.URLError, match="refused"):  # nothing answers: an OSError
        answer(silent, 1)
    with pytest.raises(NotReady):
        wait_ready(silent, 0, poll_s=0.01)


def test_ansible_ships_this_same_file_and_it_needs_only_the_standard_library() -> None:
    source = REPO / "model_runtime" / "readiness.py"
    assert (REPO / "module_utils" / "readiness.py").resolve() == source.resolve()
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").partition(".")[0])
    assert imported <= {*sys.stdlib_module_names, "__future__"}, imported - set(sys.stdlib_module_names)
