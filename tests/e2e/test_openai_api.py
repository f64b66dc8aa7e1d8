"""A real server process, talked to with the official openai client."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from harness.server import RuntimeProcess

pytestmark = pytest.mark.e2e


def test_model_list(engine_server: RuntimeProcess) -> None:
    models = engine_server.client().models.list()
    assert [m.id for m in models.data] == ["demo"]
    card = models.data[0]
    assert card.owned_by == "model-runtime"
    assert card.model_extra["max_model_len"] == 512
    assert card.model_extra["version"] == "test"


def test_completion_writes_licence_prose(engine_server: RuntimeProcess) -> None:
    result = engine_server.client().completions.create(
        model="demo", prompt="This License", max_tokens=24, temperature=0.0
    )
    choice = result.choices[0]
    assert choice.finish_reason in ("length", "stop")
    words = choice.text.split()
    assert len(words) >= 4
    # A model trained on the licence texts writes their vocabulary, not noise.
    assert {w.strip(".,;:()\"'").lower() for w in words} & {"license", "the", "of", "you", "work", "program"}
    assert result.usage.prompt_tokens == 2
    assert result.usage.completion_tokens == 24 or choice.finish_reason == "stop"
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    assert result.system_fingerprint == "model-runtime-0.1.0:demo@test"


def test_chat(engine_server: RuntimeProcess) -> None:
    result = engine_server.client().chat.completions.create(
        model="demo",
        messages=[
            {"role": "system", "content": "You quote licences."},
            {"role": "user", "content": "What may I do with the Program?"},
        ],
        max_tokens=30,
        temperature=0.0,
    )
    message = result.choices[0].message
    assert message.role == "assistant"
    assert len(message.content.split()) >= 3
    assert "<|" not in message.content  # special tokens are not text
    assert result.usage.completion_tokens <= 30


def test_streamed_completion_matches_unstreamed(engine_server: RuntimeProcess) -> None:
    client = engine_server.client()
    kwargs = {"model": "demo", "prompt": "You may copy", "max_tokens": 20, "temperature": 0.0}
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_streamed_chat(engine_server: RuntimeProcess) -> None:
    stream = engine_server.client().chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": "Tell me about the GNU General Public License."}],
        max_tokens=25,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content.strip()
    assert chunks[-1].usage.completion_tokens >= 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


def test_seed_reproduces_sampled_output(engine_server: RuntimeProcess) -> None:
    client = engine_server.client()

    def ask(seed: int) -> str:
        kwargs = {
            "model": "demo",
            "prompt": "The Program",
            "max_tokens": 30,
            "temperature": 1.0,
            "seed": seed,
        }
        return client.completions.create(**kwargs).choices[0].text

    assert ask(1234) == ask(1234)
    assert len({ask(s) for s in (1, 2, 3)}) > 1  # sampling really samples


def test_stop_sequence(engine_server: RuntimeProcess) -> None:
    client = engine_server.client()
    kwargs = {"model": "demo", "prompt": "This License", "max_tokens": 60, "temperature": 0.0}
    free = client.completions.create(**kwargs).choices[0].text
    words = free.split()
    assert len(words) > 3
    stop = words[2]
    stopped = client.completions.create(stop=[stop], **kwargs).choices[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == free[: free.index(stop)]


def test_n_choices_and_logprobs(engine_server: RuntimeProcess) -> None:
    result = engine_server.client().completions.create(
        model="demo", prompt="You", max_tokens=5, temperature=0.8, n=3, seed=7, logprobs=2
    )
    assert [c.index for c in result.choices] == [0, 1, 2]
    for choice in result.choices:
        assert len(choice.logprobs.token_logprobs) == len(choice.logprobs.tokens) == 5
        assert all(lp <= 0 for lp in choice.logprobs.token_logprobs)
        assert all(len(top) == 2 for top in choice.logprobs.top_logprobs)
    assert result.usage.completion_tokens == 15


def test_chat_logprobs(engine_server: RuntimeProcess) -> None:
    result = engine_server.client().chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=4,
        temperature=0.0,
        logprobs=True,
        top_logprobs=3,
    )
    content = result.choices[0].logprobs.content
    assert content
    assert all(len(entry.top_logprobs) == 3 for entry in content)
    # Greedy: the chosen token is the most likely one.
    assert all(entry.logprob == pytest.approx(entry.top_logprobs[0].logprob) for entry in content)


def test_batch_of_prompts(engine_server: RuntimeProcess) -> None:
    result = engine_server.client().completions.create(
        model="demo", prompt=["This License", "You may"], max_tokens=4, temperature=0.0
    )
    assert len(result.choices) == 2
    single = engine_server.client().completions.create(
        model="demo", prompt="You may", max_tokens=4, temperature=0.0
    )
    assert result.choices[1].text == single.choices[0].text


def test_every_sampling_parameter_takes_effect(engine_server: RuntimeProcess, demo_model: Path) -> None:
    """The parameters beyond temperature and top_p change the output as they should, on either engine
    (the vllm one translates each to vLLM's own)."""
    client = engine_server.client()
    eos = PreTrainedTokenizerFast.from_pretrained(demo_model).eos_token_id
    base = {"model": "demo", "prompt": "This License", "max_tokens": 8, "temperature": 0.0}
    forced_end = {"logit_bias": {str(eos): 100}}
    # logit_bias: the end of text becomes certain, so the answer ends at once...
    ended = client.completions.create(**base, **forced_end).choices[0]
    assert (ended.text, ended.finish_reason) == ("", "stop")
    # ...unless min_tokens holds it back for that many tokens, or ignore_eos for all of max_tokens.
    held = client.completions.create(**base, extra_body={**forced_end, "min_tokens": 3})
    # 3 tokens, then the end of text (counted as generated, by either engine)
    assert (held.usage.completion_tokens, held.choices[0].finish_reason) == (4, "stop")
    ignored = client.completions.create(**base, extra_body={**forced_end, "ignore_eos": True})
    assert (ignored.usage.completion_tokens, ignored.choices[0].finish_reason) == (8, "length")
    # Penalties: greedy decoding of this model repeats itself once it writes past its first sentence
    # (ignore_eos keeps it going: the demo model, rebuilt on each machine, may end that sentence early);
    # each penalty changes what it writes.
    long = {**base, "max_tokens": 60, "extra_body": {"ignore_eos": True}}
    free = client.completions.create(**long).choices[0].text
    assert client.completions.create(**long, frequency_penalty=2.0).choices[0].text != free
    assert client.completions.create(**long, presence_penalty=2.0).choices[0].text != free
