"""What a request costs before it is refused: the limits a body can break without being tokenized
(prompts x n, characters, messages) are checked first, and tokenizing runs off the event loop, so that
while the largest body the server accepts is being tokenized, the health probes a load balancer sends
keep answering. A replica that stops answering them is marked down (HAProxy's check timeout is 5 s)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.server import RuntimeProcess
from model_runtime.config import SchedulerSettings, ServerSettings

pytestmark = pytest.mark.e2e

# Half of HAProxy's check timeout (`timeout check 5s` in roles/loadbalancer): a probe answered within it
# keeps the replica up. A bound on behaviour, not a benchmark: tokenizing a flood of prompts on the event
# loop held probes for about 10 s, while parsing the largest body the server takes (100,000 messages) still
# holds one probe for up to about 1 s on a slow 2-core runner.
PROBE_BOUND_S = 2.5
SEQUENCES = SchedulerSettings().max_batch_size + SchedulerSettings().max_queue  # prompts x n allowed
CHARS = ServerSettings().max_prompt_chars
CONTEXT = 512  # the demo model's


@pytest.fixture(scope="module")
def server(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    process = RuntimeProcess(demo_model, tmp_path_factory.mktemp("costs"), name="demo").start()
    yield process
    process.stop()


def probed_while(server: RuntimeProcess, path: str, body: dict) -> tuple[httpx.Response, list[float]]:
    """Send body, and probe /health/live, one probe after another, until its answer arrives; returns the
    answer and how long each probe took."""
    answer: list[httpx.Response] = []

    def send() -> None:
        with server.http() as client:
            answer.append(client.post(path, json=body, timeout=300))

    sender = threading.Thread(target=send)
    sender.start()
    probes = []
    while True:  # at least one probe, however fast the answer
        started = time.perf_counter()
        assert httpx.get(f"{server.base_url}/health/live", timeout=30).status_code == 200
        probes.append(time.perf_counter() - started)
        if not sender.is_alive():
            break
    sender.join()
    return answer[0], probes


def refusal(response: httpx.Response) -> dict:
    assert response.status_code == 400, response.text
    return response.json()["error"]


def test_a_flood_of_prompts_is_refused_before_tokenizing(server: RuntimeProcess) -> None:
    response, probes = probed_while(server, "/v1/completions", {"model": "demo", "prompt": ["a"] * 300_000})
    assert max(probes) < PROBE_BOUND_S, probes
    error = refusal(response)
    assert error["param"] == "prompt"
    assert (
        f"300000 prompts x n=1 is more sequences than this server can hold at once ({SEQUENCES})"
        in (error["message"])
    )


def test_a_flood_of_messages_is_refused_before_rendering(server: RuntimeProcess) -> None:
    messages = [{"role": "user", "content": "a"}] * 100_000
    response, probes = probed_while(server, "/v1/chat/completions", {"model": "demo", "messages": messages})
    assert max(probes) < PROBE_BOUND_S, probes
    error = refusal(response)
    assert error["param"] == "messages"
    assert "100000 messages cannot fit" in error["message"]


def test_too_many_characters_are_refused_before_tokenizing(server: RuntimeProcess) -> None:
    response, probes = probed_while(server, "/v1/completions", {"model": "demo", "prompt": "x" * (CHARS + 1)})
    assert max(probes) < PROBE_BOUND_S, probes
    error = refusal(response)
    assert error["param"] == "prompt"
    assert f"{CHARS + 1} characters; this server takes at most {CHARS}" in error["message"]


def test_probes_answer_while_the_largest_allowed_completion_is_tokenized(server: RuntimeProcess) -> None:
    # As many prompts and characters as the server takes: every one is tokenized (off the event loop),
    # then refused for the context it overflows.
    prompts = ["You may copy and distribute " * (CHARS // SEQUENCES // 28)] * SEQUENCES
    assert sum(map(len, prompts)) <= CHARS
    response, probes = probed_while(server, "/v1/completions", {"model": "demo", "prompt": prompts})
    assert max(probes) < PROBE_BOUND_S, probes
    assert refusal(response)["code"] == "context_length_exceeded"


def test_probes_answer_while_the_largest_allowed_chat_is_rendered(server: RuntimeProcess) -> None:
    content = "You may copy and distribute " * (CHARS // CONTEXT // 28)
    messages = [{"role": "user", "content": content}] * CONTEXT
    response, probes = probed_while(server, "/v1/chat/completions", {"model": "demo", "messages": messages})
    assert max(probes) < PROBE_BOUND_S, probes
    assert refusal(response)["code"] == "context_length_exceeded"
