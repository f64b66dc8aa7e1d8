"""The one hook through which a served model may change how a request runs, and the plugins that
supply it.

Each served model holds a RequestHook. Both endpoints hand it the request's sequences (one
SamplingParams per choice) and their formatter, and submit and write whatever it returns. A model
served alone changes nothing (SingleModel). A plugin serves formats of its own (the ensemble package:
ensemble/plugin.py): for each, the engine process's loader and a factory of the hook that the HTTP
process puts on a served model of that format. Nothing here knows what a plugin does with the hook.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from model_runtime.config import SchedulerSettings
from model_runtime.engine.factory import ENGINE_LOADERS, EngineLoader
from model_runtime.engine.loading import ModelFormat
from model_runtime.scheduler.params import SamplingParams
from model_runtime.server.errors import APIError, bad_request
from model_runtime.server.formatting import Formatter
from model_runtime.server.protocol import _SamplingFields


class RequestHook(Protocol):
    def plan(
        self,
        req: _SamplingFields,
        params: list[SamplingParams],
        formatter: Formatter,
        prompts: int,
        limits: SchedulerSettings,
    ) -> tuple[list[SamplingParams], Formatter]:
        """What a request of `prompts` prompts submits per prompt, and what writes its choices; may
        refuse the request (an APIError)."""
        ...


@dataclass(frozen=True)
class SingleModel:
    """The hook of a model served alone: every request runs as it came."""

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
            raise no_member_answers(self.name, "not an ensemble")
        return params, formatter


def no_member_answers(name: str, what_it_is: str) -> APIError:
    """The refusal of `ensemble_members` by a model whose members do not answer alone."""
    return bad_request(
        f"ensemble_members: {name} is {what_it_is}; per-member answers come from a vote ensemble",
        "ensemble_members",
    )


# A plugin's hook for a served model of its format: (the model folder's format, the served name).
HookFactory = Callable[[ModelFormat, str], RequestHook]


@dataclass(frozen=True)
class Plugin:
    """Formats served beyond the engine's own, keyed by format: the engine loader and the hook factory."""

    loaders: Mapping[str, EngineLoader] = field(default_factory=dict)
    hooks: Mapping[str, HookFactory] = field(default_factory=dict)

    def engine_loaders(self) -> dict[str, EngineLoader]:
        """The engine process's table: the engine's formats and this plugin's."""
        return {**ENGINE_LOADERS, **self.loaders}

    def hook(self, fmt: ModelFormat, name: str) -> RequestHook:
        factory = self.hooks.get(fmt.kind)
        return SingleModel(name) if factory is None else factory(fmt, name)


NO_PLUGIN = Plugin()
