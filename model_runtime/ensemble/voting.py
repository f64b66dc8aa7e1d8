"""An ensemble's request hook (server/hook.py). A vote ensemble's choices are each answered by every
member alone (one sequence per member, routed through the same scheduler by SamplingParams.route), and
the weighted majority answer is the choice. Completions and chat stay as they are; the hook only
changes what they submit and wraps their formatter. An average or stack ensemble answers as one model.

The answer is known once every member has finished, so a streamed vote sends each choice in one piece.
Usage counts the tokens every member generated (as OpenAI's best_of counts every candidate). With
`ensemble_members: true` the response carries `ensemble`: per choice, each member's answer, weight and
tokens, and the votes per (whitespace-normalized) answer; a stream sends it in a chunk after the choice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from fastapi.responses import JSONResponse

from model_runtime.config import SchedulerSettings
from model_runtime.engine.loading import ModelFormat
from model_runtime.ensemble.spec import EnsembleSpec, read_spec
from model_runtime.ensemble.vote import tally
from model_runtime.scheduler.events import Event
from model_runtime.scheduler.params import SamplingParams
from model_runtime.server.errors import bad_request
from model_runtime.server.formatting import ChoiceResult, Formatter, accumulate
from model_runtime.server.hook import RequestHook, no_member_answers
from model_runtime.server.protocol import Usage, _SamplingFields


class VoteFormatter:
    """Receives the members' sequences (index = choice * members + member) and writes voted choices
    through the endpoint's own formatter."""

    def __init__(self, inner: Formatter, spec: EnsembleSpec, detail: bool) -> None:
        self.inner = inner
        self.envelope = inner.envelope
        self.spec = spec
        self.detail = detail
        self._results: dict[int, ChoiceResult] = {}
        self._finished: dict[int, int] = {}  # choice -> members finished

    def _vote(self, choice: int, ballots: list[ChoiceResult]) -> tuple[ChoiceResult, dict[str, Any]]:
        result = tally([b.text for b in ballots], self.spec.weights)
        winner = ballots[result.member]
        voted = ChoiceResult(choice, winner.text, winner.tokens, winner.finish_reason, list(winner.logprobs))
        detail = {
            "index": choice,
            "answer": winner.text,
            "votes": result.votes,
            "members": [
                {
                    "name": name,
                    "weight": weight,
                    "text": b.text,
                    "finish_reason": b.finish_reason,
                    "completion_tokens": b.tokens,
                }
                for name, weight, b in zip(self.spec.names, self.spec.weights, ballots, strict=True)
            ],
        }
        return voted, detail

    def chunks(self, event: Event, first: bool) -> list[str]:
        accumulate(self._results, event)
        members = len(self.spec.members)
        choice = event.index // members
        if not event.final:
            return []
        self._finished[choice] = self._finished.get(choice, 0) + 1
        if self._finished[choice] < members:
            return []
        ballots = [self._results[choice * members + m] for m in range(members)]
        voted, detail = self._vote(choice, ballots)
        chunks = self.inner.chunks(
            Event(choice, voted.text, voted.tokens, voted.finish_reason, tuple(voted.logprobs)), True
        )
        if self.detail:
            # A chunk without choices, as the usage chunk is, carrying this choice's ballots.
            extra = json.dumps({"method": "vote", "choices": [detail]}, ensure_ascii=False)
            chunks.append(self.envelope.chunk([])[:-1] + ',"ensemble":' + extra + "}")
        return chunks

    def body(self, choices: list[ChoiceResult], usage: Usage) -> Any:
        members = len(self.spec.members)
        by_index = {c.index: c for c in choices}
        voted, details = [], []
        for choice in range(len(choices) // members):
            result, detail = self._vote(choice, [by_index[choice * members + m] for m in range(members)])
            voted.append(result)
            details.append(detail)
        body = self.inner.body(voted, usage)
        if not self.detail:
            return body
        return JSONResponse(
            {**body.model_dump(mode="json"), "ensemble": {"method": "vote", "choices": details}}
        )


@dataclass(frozen=True)
class VoteHook:
    """A vote ensemble's requests: every choice becomes one sequence per member, and a VoteFormatter."""

    spec: EnsembleSpec

    def plan(
        self,
        req: _SamplingFields,
        params: list[SamplingParams],
        formatter: Formatter,
        prompts: int,
        limits: SchedulerSettings,
    ) -> tuple[list[SamplingParams], Formatter]:
        members = len(self.spec.members)
        routed = [replace(p, route=m) for p in params for m in range(members)]
        if prompts * len(routed) > limits.max_batch_size + limits.max_queue:
            raise bad_request(
                f"n is too large for a vote of {members} members: {prompts * len(routed)} sequences "
                "are more than this server can hold at once",
                "n",
            )
        return routed, VoteFormatter(formatter, self.spec, req.ensemble_members)


@dataclass(frozen=True)
class CombinedHook:
    """An average or stack ensemble's requests: the engine combines the members, so they run as they
    came; only per-member answers are refused, since no member answers alone."""

    spec: EnsembleSpec
    name: str

    def plan(
        self,
        req: _SamplingFields,
        params: list[SamplingParams],
        formatter: Formatter,
        prompts: int,
        limits: SchedulerSettings,
    ) -> tuple[list[SamplingParams], Formatter]:
        if req.ensemble_members:
            raise no_member_answers(self.name, f"a {self.spec.method} ensemble")
        return params, formatter


def request_hook(fmt: ModelFormat, name: str) -> RequestHook:
    """The hook of the ensemble in fmt.folder, served as name."""
    spec = read_spec(fmt.folder)
    return VoteHook(spec) if spec.method == "vote" else CombinedHook(spec, name)
