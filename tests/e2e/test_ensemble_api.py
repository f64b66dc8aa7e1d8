"""Ensembles of the demo members served by a real server process, talked to with the official openai
client: the averaged ensemble's tokens and log-probabilities are the members' mixture computed here by
hand, and a vote ensemble returns the weighted majority of its members' own answers."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from transformers import AutoTokenizer

from harness.server import RuntimeProcess
from tests.support.engines import EXACT
from tests.support.ensembles import (
    member_folders,
    member_logprobs,
    mixture,
    single_threaded,
)

pytestmark = pytest.mark.e2e

WEIGHTS = [0.45, 0.35, 0.2]  # no member alone is a majority; the two lighter ones together are
EOS = (0, 1)  # <|endoftext|>, <|end|>

one_thread = pytest.fixture(autouse=True, scope="module")(single_threaded)


@pytest.fixture(scope="module")
def tokenizer(members: Path):
    return AutoTokenizer.from_pretrained(members)


@pytest.fixture(scope="module")
def average_server(members: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    # The members folder is itself an ensemble: their average of probabilities, members embedded.
    work = tmp_path_factory.mktemp("average")
    server = RuntimeProcess(members, work, {"model": {"dtype": EXACT}}, name="ens").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def vote_server(members: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    work = tmp_path_factory.mktemp("vote")
    subprocess.run(
        [sys.executable, "-m", "model_runtime", "ensemble", "build", *map(str, member_folders(members)),
         "--method", "vote", "--weights", *map(str, WEIGHTS), "--out", str(work / "vote")],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    server = RuntimeProcess(work / "vote", work, {"model": {"dtype": EXACT}}, name="vote").start()
    yield server
    server.stop()


def greedy(models: list, weights: list[float], ids: list[int], tokens: int) -> tuple[list[int], list[float]]:
    """Greedy decoding of the weighted mixture, by full forward passes; tokens and their log-probabilities."""
    ids, chosen, logprobs = list(ids), [], []
    for _ in range(tokens):
        combined = mixture(member_logprobs(models, ids), weights)
        token = int(combined.argmax())
        chosen.append(token)
        logprobs.append(float(combined[token]))
        if token in EOS:
            break
        ids.append(token)
    return chosen, logprobs


def normalize(text: str) -> str:
    return " ".join(text.split())


def test_completion_is_the_members_mixture(average_server: RuntimeProcess, models: list, tokenizer) -> None:
    client = average_server.client()
    assert [m.id for m in client.models.list().data] == ["ens"]
    result = client.completions.create(
        model="ens", prompt="This License", max_tokens=10, temperature=0.0, logprobs=0
    )
    ids = tokenizer("This License")["input_ids"]
    tokens, logprobs = greedy(models, [1, 1, 1], ids, 10)
    choice = result.choices[0]
    assert choice.text == tokenizer.decode([t for t in tokens if t not in EOS])
    assert choice.logprobs.token_logprobs == pytest.approx(logprobs, abs=2e-3)
    assert result.usage.prompt_tokens == len(ids)
    assert result.usage.completion_tokens == len(tokens)
    assert choice.finish_reason == ("stop" if tokens[-1] in EOS else "length")
    # A member alone writes something else: the mixture is not one member's answer.
    alone = [greedy([m], [1], ids, 10)[0] for m in models]
    assert any(a != tokens for a in alone)


def test_streamed_completion_and_stop(average_server: RuntimeProcess) -> None:
    client = average_server.client()
    kwargs = {"model": "ens", "prompt": "You may copy", "max_tokens": 24, "temperature": 0.0}
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    free = whole.choices[0].text
    stop = free[len(free) // 2 : len(free) // 2 + 3]
    stopped = client.completions.create(stop=[stop], **kwargs).choices[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == free[: free.index(stop)]


def test_chat_streams_what_it_answers(average_server: RuntimeProcess) -> None:
    client = average_server.client()
    kwargs = {
        "model": "ens",
        "messages": [{"role": "user", "content": "What may I do with the Program?"}],
        "max_tokens": 16,
        "temperature": 0.0,
    }
    whole = client.chat.completions.create(**kwargs)
    assert whole.choices[0].message.role == "assistant"
    assert "<|" not in whole.choices[0].message.content
    chunks = list(
        client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == whole.choices[0].message.content
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_ensemble_members_is_refused_without_a_vote(average_server: RuntimeProcess) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        average_server.client().completions.create(
            model="ens", prompt="Hi", max_tokens=2, extra_body={"ensemble_members": True}
        )
    assert refused.value.body["param"] == "ensemble_members"
    assert "is a average ensemble" in refused.value.body["message"]


def hand_tally(texts: list[str]) -> tuple[str, dict[str, float]]:
    """The weighted majority, with a tie going to the earliest member's answer."""
    votes: dict[str, float] = {}
    for text, weight in zip(texts, WEIGHTS, strict=True):
        votes[normalize(text)] = votes.get(normalize(text), 0.0) + weight
    best = max(votes.values())
    return next(t for t in texts if votes[normalize(t)] == best), votes


def test_vote_returns_the_weighted_majority(vote_server: RuntimeProcess) -> None:
    prompts = ["This License", "You may copy", "The Program", "Preamble", "GNU", "Copyright"]
    result = vote_server.client().completions.create(
        model="vote", prompt=prompts, max_tokens=2, temperature=1.0, seed=11, n=2,
        extra_body={"ensemble_members": True},
    )  # fmt: skip
    ballots = result.model_extra["ensemble"]["choices"]
    assert len(result.choices) == len(ballots) == 2 * len(prompts)
    contested = 0
    for choice, ballot in zip(result.choices, ballots, strict=True):
        assert [m["name"] for m in ballot["members"]] == ["member-0", "member-1", "member-2"]
        assert [m["weight"] for m in ballot["members"]] == WEIGHTS
        texts = [m["text"] for m in ballot["members"]]
        winner, votes = hand_tally(texts)
        assert choice.text == ballot["answer"] == winner
        assert ballot["votes"] == pytest.approx(votes)
        contested += len(votes) > 1
    assert contested >= 3  # sampled answers differ, so the weights decided
    generated = sum(m["completion_tokens"] for b in ballots for m in b["members"])
    assert result.usage.completion_tokens == generated  # every member's tokens, as best_of counts


def test_each_member_answers_alone(vote_server: RuntimeProcess, models: list, tokenizer) -> None:
    result = vote_server.client().completions.create(
        model="vote",
        prompt="This License",
        max_tokens=4,
        temperature=0.0,
        extra_body={"ensemble_members": True},
    )
    ids = tokenizer("This License")["input_ids"]
    for model, member in zip(models, result.model_extra["ensemble"]["choices"][0]["members"], strict=True):
        tokens, _ = greedy([model], [1], ids, 4)
        assert member["text"] == tokenizer.decode([t for t in tokens if t not in EOS])


def test_streamed_vote(vote_server: RuntimeProcess) -> None:
    client = vote_server.client()
    kwargs = {
        "model": "vote",
        "messages": [{"role": "user", "content": "Who may copy the Program?"}],
        "max_tokens": 3,
        "temperature": 0.0,
        "extra_body": {"ensemble_members": True},
    }
    whole = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == whole.choices[0].message.content
    )
    [ballot] = [c.model_extra["ensemble"] for c in chunks if "ensemble" in c.model_extra]
    assert ballot == whole.model_extra["ensemble"]
    assert (
        hand_tally([m["text"] for m in ballot["choices"][0]["members"]])[0]
        == whole.choices[0].message.content
    )
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # Without asking, the response is a plain chat completion.
    assert "ensemble" not in client.chat.completions.create(**{**kwargs, "extra_body": {}}).model_extra
