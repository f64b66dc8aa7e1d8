"""The ensemble engine gives, for every sequence of a batch that changes as sequences join and leave,
the combination of its members' distributions computed by hand from plain full forward passes; a routed
sequence gets its member's own distribution (through the scheduler too, as a vote's sequences are); members
with another tokenizer are refused at load."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from model_runtime.config import ModelSettings, RegistrySettings, SchedulerSettings
from model_runtime.corpus import load_corpus
from model_runtime.demo.build import train_tokenizer
from model_runtime.engine.base import Engine, ModelLoadError, RoutableEngine
from model_runtime.engine.factory import load_engine
from model_runtime.ensemble.combine import Stacker
from model_runtime.ensemble.engine import EnsembleEngine
from model_runtime.ensemble.plugin import ENSEMBLES
from model_runtime.ensemble.spec import SPEC_FILE, STACKER_FILE
from model_runtime.registry.registry import Registry
from model_runtime.scheduler.core import Scheduler
from model_runtime.scheduler.events import Event, deliver_here
from model_runtime.scheduler.params import SamplingParams
from tests.support.engines import EXACT
from tests.support.ensembles import (
    member_folders,
    member_logprobs,
    mixture,
    single_threaded,
)

pytestmark = pytest.mark.unit

PROMPTS = ["This License", "You may copy and distribute verbatim copies", "The Program"]
ATOL = 3e-4  # the engine's cached attention against a full forward pass (see test_engine.py)
LOADERS = ENSEMBLES.engine_loaders()  # the engine table as `model-runtime serve` has it

one_thread = pytest.fixture(autouse=True, scope="module")(single_threaded)


def ensemble_folder(path: Path, members: Path, **spec: object) -> Path:
    """An ensemble of the cached members (linked in, so nothing is copied) with the given spec fields."""
    path.mkdir()
    for folder in member_folders(members):
        (path / folder.name).symlink_to(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(members / name, path / name)
    names = [f.name for f in member_folders(members)]
    document = {
        "method": "average",
        "members": [{"name": n, "source": n} for n in names],
        "weights": [1, 1, 1],
    }
    (path / SPEC_FILE).write_text(json.dumps({**document, **spec}))
    return path


def drive_and_compare(
    engine: EnsembleEngine, models: list, reference: Callable[[list[torch.Tensor]], torch.Tensor]
) -> int:
    """Greedy decoding where sequence 0 joins at step 0, 1 at step 2 (routed to member 1), 2 at step 3;
    they leave after 6, 7 and 4 tokens. Every row is checked against the reference (a routed row
    against its member alone). Returns the rows checked."""
    tokenizer = engine.tokenizer
    joins = {0: [(0, None)], 2: [(1, 1)], 3: [(2, None)]}
    leaves = {0: 6, 1: 7, 2: 4}
    tokens: dict[int, list[int]] = {}
    routes: dict[int, int | None] = {}
    live: list[int] = []
    checked = 0
    for step in range(12):
        joining = joins.get(step, [])
        if not (live or joining):
            continue
        for seq, member in joining:
            routes[seq] = member
            if member is not None:
                engine.route(seq, member)
        rows = engine.step(
            live,
            [tokens[s][-1] for s in live],
            [s for s, _ in joining],
            [tokenizer(PROMPTS[s])["input_ids"] for s, _ in joining],
        )
        for seq, _ in joining:
            tokens[seq] = tokenizer(PROMPTS[seq])["input_ids"]
        for seq, row in zip(live + [s for s, _ in joining], rows, strict=True):
            logprobs = member_logprobs(models, tokens[seq])
            expected = logprobs[routes[seq]] if routes[seq] is not None else reference(logprobs)
            torch.testing.assert_close(
                torch.log_softmax(row, -1), expected, atol=ATOL, rtol=0, msg=f"seq {seq}"
            )
            tokens[seq].append(int(row.argmax()))
            checked += 1
        live += [s for s, _ in joining]
        done = [s for s in live if len(tokens[s]) - len(tokenizer(PROMPTS[s])["input_ids"]) >= leaves[s]]
        engine.release(done)
        live = [s for s in live if s not in done]
    assert not live
    assert all(m.cache.rows == 0 for m in engine.members)  # released everywhere
    return checked


def test_average_of_probabilities_across_a_changing_batch(members: Path, models: list) -> None:
    engine = load_engine(ModelSettings(path=str(members), dtype=EXACT), max_batch=4, loaders=LOADERS)
    assert isinstance(engine, EnsembleEngine)
    assert isinstance(engine, RoutableEngine)
    assert engine.member_names == ("member-0", "member-1", "member-2")
    assert engine.info.parameters == sum(p.numel() for m in models for p in m.parameters())
    assert engine.info.eos_token_ids == {0, 1}
    assert drive_and_compare(engine, models, lambda lps: mixture(lps, [1, 1, 1])) == 17


def test_average_of_log_probabilities(members: Path, models: list, tmp_path: Path) -> None:
    folder = ensemble_folder(tmp_path / "ens", members, combine="logprobs", weights=[2, 1, 1])

    def geometric(logprobs: list[torch.Tensor]) -> torch.Tensor:
        return torch.log_softmax(0.5 * logprobs[0] + 0.25 * logprobs[1] + 0.25 * logprobs[2], -1)

    drive_and_compare(
        load_engine(ModelSettings(path=str(folder), dtype=EXACT), max_batch=4, loaders=LOADERS),
        models,
        geometric,
    )


def test_stack_applies_its_gate_per_token(members: Path, models: list, tmp_path: Path) -> None:
    torch.manual_seed(0)
    stacker = Stacker(torch.randn(3, 6), torch.randn(3), torch.randn(6), torch.rand(6) + 0.5)
    folder = ensemble_folder(tmp_path / "ens", members, method="stack", stacker=STACKER_FILE)
    stacker.save(folder / STACKER_FILE)

    def gated(logprobs: list[torch.Tensor]) -> torch.Tensor:
        features = []
        for lp in logprobs:
            features += [lp.max(), -(lp.exp() * lp).sum()]
        x = (torch.stack(features) - stacker.mean) / stacker.scale
        weights = torch.softmax(stacker.weight @ x + stacker.bias, -1)
        return torch.log(sum(w * lp.exp() for w, lp in zip(weights, logprobs, strict=True)))

    drive_and_compare(
        load_engine(ModelSettings(path=str(folder), dtype=EXACT), max_batch=4, loaders=LOADERS), models, gated
    )


def member_with_tokenizer(members: Path, out: Path, change: Callable) -> Path:
    """A copy of member-1 whose tokenizer is changed, and whose weights are garbage: the refusal must come
    from the tokenizers alone, before any weights are read."""
    shutil.copytree(members / "member-1", out)
    tokenizer = change(AutoTokenizer.from_pretrained(out))
    tokenizer.save_pretrained(out)
    (out / "model.safetensors").write_bytes(b"not weights")
    return out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda t: (t.add_special_tokens({"additional_special_tokens": ["<|tool|>"]}), t)[1],
            r"member member-1: vocabulary size 2049 instead of 2048; 1 extra tokens \('<\|tool\|>'\); "
            r"special token added token 2048: '<\|tool\|>' instead of None",
        ),
        (
            lambda t: train_tokenizer(load_corpus(), 1024),
            r"member member-1: vocabulary size 1024 instead of 2048; 1024 missing tokens \('.*'\)",
        ),
    ],
    ids=["added special token", "other vocabulary"],
)
def test_a_member_with_another_tokenizer_is_refused(
    members: Path, tmp_path: Path, change: Callable, message: str
) -> None:
    folder = ensemble_folder(tmp_path / "ens", members)
    (folder / "member-1").unlink()
    member_with_tokenizer(members, folder / "member-1", change)
    with pytest.raises(ModelLoadError, match="ensemble members must share one tokenizer") as refused:
        load_engine(ModelSettings(path=str(folder)), max_batch=2, loaders=LOADERS)
    assert refused.match(message)


def test_members_from_the_registry(members: Path, tmp_path: Path) -> None:
    registry = Registry.open(str(tmp_path / "registry"))
    versions = [registry.push(f.name, f)["version"] for f in member_folders(members)]
    folder = ensemble_folder(tmp_path / "ens", members)
    spec = json.loads((folder / SPEC_FILE).read_text())
    for member, version in zip(spec["members"], versions, strict=True):
        member["source"] = f"registry:{member['name']}:{version}"
    (folder / SPEC_FILE).write_text(json.dumps(spec))
    settings = RegistrySettings(url=str(tmp_path / "registry"), cache_dir=tmp_path / "cache")
    engine = load_engine(ModelSettings(path=str(folder)), max_batch=2, registry=settings, loaders=LOADERS)
    assert engine.member_names == ("member-0", "member-1", "member-2")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["member-0", "member-1", "member-2"]
    with pytest.raises(
        ModelLoadError, match=r"member member-0 is registry:member-0:.*registry.url is not set"
    ):
        load_engine(ModelSettings(path=str(folder)), max_batch=2, loaders=LOADERS)
    spec["members"][2]["source"] = "registry:member-2:20200101-000000.000000-000000"
    (folder / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(
        ModelLoadError, match=r"member member-2 \(registry:member-2:20200101.*no such version"
    ):
        load_engine(ModelSettings(path=str(folder)), max_batch=2, registry=settings, loaders=LOADERS)


def test_an_ensemble_is_no_member(members: Path, tmp_path: Path) -> None:
    folder = ensemble_folder(tmp_path / "ens", members)
    (folder / "member-2").unlink()
    (folder / "member-2").symlink_to(members)  # the members folder is itself an ensemble
    with pytest.raises(ModelLoadError, match="member member-2: an ensemble cannot be a member of another"):
        load_engine(ModelSettings(path=str(folder)), max_batch=2, loaders=LOADERS)


def test_only_a_process_given_the_plugin_loads_an_ensemble(members: Path) -> None:
    with pytest.raises(ModelLoadError, match="no engine for the ensemble format"):
        load_engine(ModelSettings(path=str(members)), max_batch=1)


def answers(engine: Engine, prompt: list[int], params: list[SamplingParams]) -> list[str]:
    """Each choice's text, generated by a scheduler over engine."""
    texts = [""] * len(params)
    errors: list[Exception] = []
    open_choices = [len(params)]
    done = threading.Event()

    class Sink:
        def deliver(self, events: list[Event]) -> None:
            for event in events:
                texts[event.index] += event.text
                errors.extend([event.error] if event.error else [])
                if event.final:
                    open_choices[0] -= 1
            if open_choices[0] == 0:
                done.set()

    scheduler = Scheduler(engine, SchedulerSettings(max_batch_size=4), deliver_here)
    scheduler.start()
    try:
        scheduler.submit(prompt, params, Sink())
        assert done.wait(300), "the choices never finished"
    finally:
        scheduler.stop()
    assert not errors
    return texts


def test_the_scheduler_runs_a_routed_sequence_on_its_member_alone(members: Path) -> None:
    """A vote's sequences (one per member, each with SamplingParams.route) through the scheduler: each
    answer is the one its member writes alone."""
    ensemble = load_engine(ModelSettings(path=str(members), dtype=EXACT), max_batch=4, loaders=LOADERS)
    prompt = ensemble.tokenizer(PROMPTS[1])["input_ids"]
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    routed = answers(ensemble, prompt, [replace(params, route=m) for m in range(3)])
    alone = [
        answers(load_engine(ModelSettings(path=str(folder)), max_batch=1), prompt, [params])[0]
        for folder in member_folders(members)
    ]
    assert routed == alone
    assert len(set(alone)) > 1  # the members differ: each answer is its own member's
