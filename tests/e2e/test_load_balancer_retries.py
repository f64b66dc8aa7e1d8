"""Through a real HAProxy with the loadbalancer role's retry policy: a request that times out in a
replica's queue (the replica is overloaded) is answered 429 and reaches the replica once. HAProxy retries
503s, which must therefore only be fast refusals (not ready, draining, stalled); were a queue timeout a
503, each attempt would wait its own queue_timeout_s again, exactly when the fleet is overloaded."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from harness.server import API_KEY, RuntimeProcess, metric_value
from tests.support.haproxy import HAProxy

pytestmark = pytest.mark.e2e

# One batch slot and one queue place, and a short wait for the slot.
OVERLOADED = {"scheduler": {"max_batch_size": 1, "max_queue": 1, "queue_timeout_s": 1}}


def test_a_queue_timeout_is_a_429_that_reaches_the_replica_once(medium_llama: Path, tmp_path: Path) -> None:
    server = RuntimeProcess(medium_llama, tmp_path, OVERLOADED, name="slow").start()
    # Every attempt that reaches the replica submits its prompt: counted, not timed.
    prompt_tokens = lambda: metric_value(server, "model_runtime_prompt_tokens_total")  # noqa: E731
    try:
        with HAProxy(tmp_path, {"slow-1": server.port}) as haproxy:
            start = prompt_tokens()
            stream = server.client(timeout=120).completions.create(
                model="slow", prompt="Hi", max_tokens=500, stream=True, extra_body={"ignore_eos": True}
            )
            next(iter(stream))  # the one batch slot is now taken, for longer than the test needs
            one_attempt = prompt_tokens() - start
            response = httpx.post(
                f"{haproxy.url}/v1/completions",
                json={"model": "slow", "prompt": "Hi", "max_tokens": 2},
                headers={"Authorization": f"Bearer {API_KEY}"},
                timeout=120,
            )
            attempts = (prompt_tokens() - start) / one_attempt - 1  # less the stream's own
            stream.close()
        assert attempts == 1, response.text  # HAProxy does not retry an overload
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "queue_timeout"
        assert int(response.headers["retry-after"]) >= 1
    finally:
        assert server.stop() == 0
