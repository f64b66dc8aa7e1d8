from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from model_runtime.config import ModelSettings, SchedulerSettings
from model_runtime.engine.torch_engine import load_torch_engine
from model_runtime.scheduler import sampling as sampling_module
from model_runtime.scheduler.core import Scheduler
from model_runtime.scheduler.events import Event, deliver_here
from model_runtime.scheduler.params import SamplingParams
from model_runtime.scheduler.sampling import SampleRow, make_bias, make_generator, sample
from model_runtime.server.protocol import MAX_LOGIT_BIAS_ENTRIES
from tests.support.work import LineCounter

pytestmark = pytest.mark.unit


def row(**params: object) -> SampleRow:
    """A sequence's row as the scheduler builds it: generator and bias made once from the params."""
    p = SamplingParams(max_tokens=8, **params)
    return SampleRow(p, make_generator(p.seed), suppress_eos=False, bias=make_bias(p.logit_bias))


def test_greedy_is_argmax() -> None:
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 1.0, 0.0]])
    tokens, _ = sample(logits, [row(temperature=0.0), row(temperature=0.0)], eos_ids=[])
    assert tokens == [1, 0]


def test_seeded_row_draws_the_same_whatever_shares_its_batch() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 50)
    alone = [sample(logits, [row(temperature=1.0, seed=7)], [])[0][0] for _ in range(1)]
    batch_logits = torch.cat([torch.randn(3, 50), logits])
    rows = [
        row(temperature=1.0),
        row(temperature=0.5, seed=3),
        row(temperature=0.0),
        row(temperature=1.0, seed=7),
    ]
    in_batch = sample(batch_logits, rows, [])[0][3]
    assert alone == [in_batch]


def test_sampling_follows_the_distribution() -> None:
    probs = torch.tensor([0.5, 0.3, 0.2])
    logits = probs.log().expand(4000, 3)
    rows = [row(temperature=1.0, seed=i) for i in range(4000)]
    tokens, _ = sample(logits, rows, [])
    counts = torch.bincount(torch.tensor(tokens), minlength=3).float() / 4000
    torch.testing.assert_close(counts, probs, atol=0.03, rtol=0)


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().expand(2000, 4)
    tokens, _ = sample(logits, [row(temperature=1.0, top_p=0.7, seed=i) for i in range(2000)], [])
    assert set(tokens) == {0, 1}  # 0.5 < 0.7 needs the second; 0.8 >= 0.7 stops there
    assert sample(logits[:1], [row(temperature=1.0, top_p=0.0, seed=1)], [])[0] == [0]


def test_temperature_divides_logits() -> None:
    logits = torch.tensor([1.0, 0.9, 0.0]).expand(2000, 3)
    tokens, _ = sample(logits, [row(temperature=0.05, seed=i) for i in range(2000)], [])
    expected = torch.softmax(torch.tensor([1.0, 0.9, 0.0]) / 0.05, dim=0)[0].item()  # 0.881
    assert tokens.count(0) / 2000 == pytest.approx(expected, abs=0.03)


def test_eos_suppressed_until_min_tokens() -> None:
    logits = torch.tensor([[0.0, 10.0, 1.0]])
    suppressed = SampleRow(SamplingParams(max_tokens=4, temperature=0.0), None, True, None)
    assert sample(logits, [suppressed], eos_ids=[1])[0] == [2]
    assert sample(logits, [row(temperature=0.0)], eos_ids=[1])[0] == [1]


def test_penalties_and_bias_follow_openai_definitions() -> None:
    logits = torch.tensor([[2.0, 1.9, 0.0]])
    params = SamplingParams(max_tokens=4, temperature=0.0, frequency_penalty=0.1, presence_penalty=0.05)
    # Token 0 seen twice: 2.0 - 2*0.1 - 0.05 = 1.75 < 1.9, so token 1 wins.
    assert sample(logits, [SampleRow(params, None, False, None, output=[0, 0])], [])[0] == [1]
    assert sample(logits, [row(temperature=0.0, logit_bias=((2, 5.0),))], [])[0] == [2]


def test_logprobs_of_chosen_and_top_tokens() -> None:
    probs = torch.tensor([[0.6, 0.3, 0.1]])
    tokens, logprobs = sample(probs.log(), [row(temperature=0.0, logprobs=2)], [])
    entry = logprobs[0]
    assert entry is not None
    assert entry.token == tokens[0] == 0
    assert entry.logprob == pytest.approx(torch.tensor(0.6).log().item(), abs=1e-5)
    assert [t for t, _ in entry.top] == [0, 1]
    assert sample(probs.log(), [row(temperature=0.0)], [])[1] == [None]


def test_two_rows_get_their_own_bias() -> None:
    logits = torch.zeros(2, 4)
    rows = [
        row(temperature=0.0, logit_bias=((2, 100.0),)),
        row(temperature=0.0, logit_bias=((3, 1.0), (0, -1.0))),
    ]
    assert sample(logits, rows, [])[0] == [2, 3]


class _Finished:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.events: list[Event] = []

    def deliver(self, events: list[Event]) -> None:
        self.events.extend(events)
        if any(e.finish_reason or e.error for e in events):
            self.done.set()


def test_bias_work_per_token_does_not_grow_with_its_size(tiny_llama: Path) -> None:
    """Lines of sampling.py the scheduler runs for a request, counted in the scheduler's own thread:
    the same for one bias entry as for the most a request may carry."""
    config = SchedulerSettings()
    engine = load_torch_engine(ModelSettings(path=str(tiny_llama)), max_batch=config.max_batch_size)
    counter = LineCounter(sampling_module.__file__)

    threading.settrace(counter.tracer)  # for threads started from now on: the scheduler's
    try:
        scheduler = Scheduler(engine, config, deliver_here)
        scheduler.start()
    finally:
        threading.settrace(None)  # type: ignore[arg-type]

    def work_for(entries: int) -> int:
        bias = tuple((token, -1.0) for token in range(1, entries + 1))
        params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, logit_bias=bias)
        sink, counter.lines = _Finished(), 0
        scheduler.submit([5, 6, 7], [params], sink)
        assert sink.done.wait(60)
        assert sink.events[-1].tokens == 8, sink.events[-1]
        return counter.lines

    try:
        assert work_for(1) == work_for(MAX_LOGIT_BIAS_ENTRIES)
    finally:
        scheduler.stop()
