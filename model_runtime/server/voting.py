"""A vote ensemble's requests: each choice is answered by every member alone (one sequence per member,
routed through the same scheduler by SamplingParams.member), and the weighted majority answer is the
choice. Completions and chat stay as they are; this module only changes what they submit and wraps
their formatter.

The answer is known once every member has finished, so a streamed vote sends each choice in one piece.
Usage counts the tokens every member generated (as OpenAI's best_of counts every candidate). With
`ensemble_members: true` the response carries `ensemble`: per choice, each member's answer, weight and
tokens, and the votes per (whitespace-normalized) answer; a stream sends it in a chunk after the choice.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from fastapi.responses import JSONResponse

from model_runtime.config import SchedulerSettings
from model_runtime.ensemble.spec import EnsembleSpec
from model_runtime.ensemble.vote import tally
from model_runtime.scheduler.events import Event
from model_runtime.scheduler.params import SamplingParams
from model_runtime.server.errors import bad_request
from model_runtime.server.formatting import Envelope
from model_runtime.server.generation import ChoiceResult, Formatter, accumulate
from model_runtime.server.protocol import Usage, _SamplingFields
from model_runtime.server.state import ServedModel


class VoteFormatter:
    """Receives the members' sequences (index = choice * members + member) and writes voted choices
    through the endpoint's own formatter."""

    def __init__(self, inner: Formatter, envelope: Envelope, spec: EnsembleSpec, detail: bool) -> None:
        self.inner = inner
        self.envelope = envelope
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


def plan(
    req: _SamplingFields,
    served: ServedModel,
    params: list[SamplingParams],
    formatter: Formatter,
    envelope: Envelope,
    prompts: int,
    limits: SchedulerSettings,
) -> tuple[list[SamplingParams], Formatter]:
    """What a request submits and how it is written: unchanged, except for a vote ensemble."""
    spec = served.ensemble
    if spec is None or spec.method != "vote":
        if req.ensemble_members:
            what = "is not an ensemble" if spec is None else f"is a {spec.method} ensemble"
            raise bad_request(
                f"ensemble_members: {served.name} {what}; per-member answers come from a vote ensemble",
                "ensemble_members",
            )
        return params, formatter
    routed = [replace(p, member=m) for p in params for m in range(len(spec.members))]
    if prompts * len(routed) > limits.max_batch_size + limits.max_queue:
        raise bad_request(
            f"n is too large for a vote of {len(spec.members)} members: {prompts * len(routed)} sequences "
            "are more than this server can hold at once",
            "n",
        )
    return routed, VoteFormatter(formatter, envelope, spec, req.ensemble_members)
