"""The client load that benchmarks and the fleet tests share (harness.load), against a real server:
every request is counted once, with its status, its tokens and the version that answered, streamed or
not; a closed loop ends with its bodies, a timed load at its time, a steady one when stopped."""

from __future__ import annotations

import itertools
import time

import pytest

from harness.load import Load, completions
from harness.server import API_KEY, RuntimeProcess

pytestmark = pytest.mark.e2e

PLAIN = {"model": "demo", "prompt": "This License", "max_tokens": 5, "ignore_eos": True}
STREAMED = {**PLAIN, "stream": True, "stream_options": {"include_usage": True}}
UNKNOWN_MODEL = {**PLAIN, "model": "nope"}


def test_a_closed_loop_sends_every_body_once_and_counts_its_tokens(demo_server: RuntimeProcess) -> None:
    bodies = [PLAIN, STREAMED, UNKNOWN_MODEL] * 3
    load = Load(demo_server.base_url, bodies, clients=3, api_key=API_KEY).run()
    assert len(load.outcomes) == len(bodies)
    answered = [o for o in load.outcomes if o.ok]
    assert sorted(o.stream for o in answered) == [False] * 3 + [True] * 3
    assert all(o.tokens == 5 for o in answered)
    assert {o.fingerprint for o in answered} == {"model-runtime-0.1.0:demo@test"}
    assert [(o.status, o.refused) for o in load.failures] == [(404, False)] * 3
    assert all(o.started <= o.finished <= load.ended for o in load.outcomes)
    throughput = load.throughput()
    assert (throughput.requests, throughput.tokens, throughput.failed) == (9, 30, 3)
    assert throughput.seconds == load.ended - load.started
    # The streams' latencies: each one's first token, and the gaps between its events with text (at most
    # one per token after the first; the usage event and [DONE] are not among them).
    assert len(throughput.first_token_s) == 3
    assert all(t > 0 for t in throughput.first_token_s)
    assert 0 < len(throughput.inter_token_s) <= 3 * 4


def test_a_timed_load_starts_no_request_after_its_time(demo_server: RuntimeProcess) -> None:
    load = Load(
        demo_server.base_url, completions("demo", max_tokens=4), clients=2, api_key=API_KEY, seconds=1.5
    ).run()
    assert load.outcomes
    assert load.failures == []
    assert {o.stream for o in load.outcomes} == {False, True}
    assert max(o.started for o in load.outcomes) < load.started + 1.5


def test_a_steady_load_pauses_between_requests_and_ends_when_stopped(demo_server: RuntimeProcess) -> None:
    with Load(demo_server.base_url, completions("demo"), clients=1, api_key=API_KEY, pause_s=0.3) as load:
        load.wait_for(4)
    sent = len(load.outcomes)
    starts = [o.started for o in load.outcomes]
    assert sent >= 4
    assert load.failures == []
    assert min(later - earlier for earlier, later in itertools.pairwise(starts)) >= 0.3
    time.sleep(0.5)
    assert len(load.outcomes) == sent
