"""Each key's settings through a real server and the official client: the models a key may use (the
others are, to it, models that do not exist), and its priority class, which orders the engine's waiting
line (checked from the order of admission, with one batch slot, not from the clock), with the depth of
each class's line in /metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from harness.server import API_KEY, RuntimeProcess, metric_value
from tests.support.engines import ENGINES, engine_settings

pytestmark = pytest.mark.e2e

INTERACTIVE_KEY = "interactive-key-0123456789"
BATCH_KEY = "batch-key-0123456789"
ELSEWHERE_KEY = "elsewhere-key-0123456789"  # may use only a model that another group serves
# Served beside this one through the same endpoint (server.listed_models); "demo" is this server's own.
LISTED_MODELS = ["demo-int8", "demo"]
ENDLESS = {"ignore_eos": True}  # every request runs to its max_tokens


@pytest.fixture(scope="module", params=ENGINES)
def server(
    request: pytest.FixtureRequest, medium_llama: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RuntimeProcess]:
    """Each engine in turn: both admit from the same waiting line (the vLLM process keeps vLLM's own
    queue to what its batch slots take). The medium Llama: slow enough per token that a long request
    holds the one batch slot while the test lines the others up (vLLM runs the demo model's whole
    context in about a second here)."""
    workdir = tmp_path_factory.mktemp(f"priorities-{request.param}")
    keys = workdir / "keys-with-settings"
    keys.write_text(
        f"{API_KEY}\n{INTERACTIVE_KEY} priority=interactive\n{BATCH_KEY} priority=batch models=demo\n"
        f"{ELSEWHERE_KEY} models=demo-int8\n"
    )
    keys.chmod(0o600)
    settings = engine_settings(request.param, request)
    settings.setdefault("server", {}).update({"api_keys_file": str(keys), "listed_models": LISTED_MODELS})
    settings.setdefault("scheduler", {}).update({"max_batch_size": 1, "max_queue": 8})
    process = RuntimeProcess(medium_llama, workdir, settings, name="demo").start(timeout=600)
    yield process
    process.stop()


def test_a_key_sees_and_uses_only_its_models(server: RuntimeProcess) -> None:
    elsewhere = server.client(api_key=ELSEWHERE_KEY)
    # The listed model, which another group serves: no version or context length known here.
    (card,) = elsewhere.models.list()
    assert (card.id, card.version, card.max_model_len) == ("demo-int8", None, None)
    for model in ("demo", "demo-int8"):  # not its model; not served here (the router sends it elsewhere)
        with pytest.raises(openai.NotFoundError) as refused:
            elsewhere.completions.create(model=model, prompt="This License", max_tokens=2)
        assert refused.value.body["code"] == "model_not_found"  # as for a model that does not exist
        assert refused.value.body["param"] == "model"
    assert [m.id for m in server.client(api_key=BATCH_KEY).models.list()] == ["demo"]
    everything = server.client().models.list().data
    assert [m.id for m in everything] == ["demo", "demo-int8"]  # its own once, with what it knows of it
    assert everything[0].max_model_len


def wait_for_depth(server: RuntimeProcess, priority: str, depth: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while metric_value(server, "model_runtime_queue_depth", model="demo", priority=priority) != depth:
        assert time.monotonic() < deadline, f"the {priority} line never held {depth} (did the long one end?)"
        time.sleep(0.02)


def test_interactive_requests_go_before_the_batch_requests_waiting_before_them(
    server: RuntimeProcess,
) -> None:
    admitted: list[str] = []
    lock = threading.Lock()

    clients = {key: server.client(api_key=key, timeout=120) for key in (BATCH_KEY, INTERACTIVE_KEY)}

    def stream(name: str, key: str, tokens: int) -> None:
        chunks = clients[key].completions.create(
            model="demo", prompt="This License", max_tokens=tokens, stream=True, extra_body=ENDLESS
        )
        for n, _ in enumerate(chunks):
            if n == 0:
                with lock:
                    admitted.append(name)

    # One batch slot, held by a long batch request until everyone else waits.
    blocker = clients[BATCH_KEY].completions.create(
        model="demo", prompt="You may", max_tokens=500, stream=True, extra_body=ENDLESS
    )
    next(iter(blocker))
    threads = []
    # One at a time, so that they arrive in this order: each waits in its class's line before the next.
    for name, key, priority, depth in [
        *((f"b{n}", BATCH_KEY, "batch", n) for n in (1, 2, 3)),
        *((f"i{n}", INTERACTIVE_KEY, "interactive", n) for n in (1, 2)),
    ]:
        threads.append(threading.Thread(target=stream, args=(name, key, 16)))
        threads[-1].start()
        wait_for_depth(server, priority, depth)
    blocker.close()  # the client goes away: the server cancels the stream and frees the slot
    for thread in threads:
        thread.join(120)
    assert admitted == ["i1", "i2", "b1", "b2", "b3"]  # and every batch request completed
    wait_for_depth(server, "batch", 0)
