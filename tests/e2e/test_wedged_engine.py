"""A wedged engine, made by stopping the engine process (SIGSTOP): the engine loop's own deadlines cannot
fire, so the HTTP side must see it. Readiness turns 503 once work has waited engine_stall_s without a
step, new requests are refused at once, and past engine_stall_exit_s the requests in flight end with a
clear error and the process exits non-zero (a service manager then restarts it: see
tests/integration/test_local_fleet.py). Without a stall exit, each request still ends at the HTTP
side's own deadline."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from harness.server import RuntimeProcess
from model_runtime.server.errors import NOT_READY_MESSAGES

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def stopped_engine(server: RuntimeProcess) -> Iterator[int]:
    """The server's engine process, stopped; continued (if it still exists) and the server stopped
    afterwards, whatever happened."""
    engine = server.engine_pid()
    os.kill(engine, signal.SIGSTOP)
    try:
        yield engine
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(engine, signal.SIGCONT)
        server.stop()
        with contextlib.suppress(ProcessLookupError):
            os.kill(engine, signal.SIGKILL)


def in_background(work: Callable[[], object]) -> tuple[threading.Thread, list]:
    """Run work() in a thread; the list gets what it returned or raised."""
    result: list = []

    def run() -> None:
        try:
            result.append(work())
        except Exception as exc:
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def readiness(server: RuntimeProcess) -> tuple[int, dict]:
    response = httpx.get(f"{server.base_url}/health/ready", timeout=5)
    return response.status_code, response.json()


def test_a_stalled_engine_fails_readiness_then_ends_its_requests_and_the_process(
    medium_llama: Path, tmp_path: Path
) -> None:
    server = RuntimeProcess(
        medium_llama, tmp_path, {"scheduler": {"engine_stall_s": 1, "engine_stall_exit_s": 8}}, name="slow"
    ).start()
    client = server.client(timeout=60)
    stream = client.completions.create(
        model="slow", prompt="Hi", max_tokens=400, stream=True, extra_body={"ignore_eos": True}
    )
    chunks = iter(stream)
    next(chunks)
    with stopped_engine(server):
        # The stream, and a request sent now, are work waiting for the stopped engine.
        streamed, stream_end = in_background(lambda: list(chunks))
        waiting, answer = in_background(
            lambda: client.completions.create(model="slow", prompt="Hi", max_tokens=4)
        )
        deadline = time.monotonic() + 20
        while readiness(server)[0] == 200:
            assert time.monotonic() < deadline, "readiness never turned 503"
            time.sleep(0.05)
        status, body = readiness(server)
        assert (status, body["status"]) == (503, "stalled")
        assert body["detail"] == NOT_READY_MESSAGES["stalled"]  # fixed words, no exception text
        assert httpx.get(f"{server.base_url}/health/live").status_code == 200
        # New work is refused at once, with a 503 a load balancer retries elsewhere.
        with pytest.raises(openai.InternalServerError) as refused:
            client.completions.create(model="slow", prompt="Hi", max_tokens=4)
        assert refused.value.status_code == 503
        assert refused.value.body["code"] == "engine_stalled"
        # Past the exit limit: the requests in flight end with the clear error, then the process.
        waiting.join(60)
        assert isinstance(answer[0], openai.InternalServerError), answer
        assert answer[0].status_code == 503
        assert answer[0].body["code"] == "engine_stalled"
        streamed.join(60)
        assert type(stream_end[0]) is openai.APIError, stream_end  # the stream's last event: an error
        assert "completed no step" in str(stream_end[0])
        assert server.process is not None
        assert server.process.wait(30) == 1
    assert "the engine is stalled; ending it and this process" in server.log()


def test_the_http_side_ends_a_request_at_its_own_deadline(demo_model: Path, tmp_path: Path) -> None:
    settings = {"scheduler": {"request_timeout_s": 1, "engine_stall_s": 300, "engine_stall_exit_s": 300}}
    server = RuntimeProcess(demo_model, tmp_path, settings, name="demo").start()
    client = server.client(timeout=60)
    with stopped_engine(server):
        with pytest.raises(openai.APIStatusError) as ended:
            client.completions.create(model="demo", prompt="Hi", max_tokens=4)
        assert ended.value.status_code == 504
        assert ended.value.body["code"] == "request_timeout"
        assert httpx.get(f"{server.base_url}/health/ready").status_code == 200  # no stall yet: 300 s
