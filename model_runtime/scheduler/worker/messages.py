"""What crosses the pipes between the HTTP process and its engine process.

Each message is a NamedTuple: pickled as its class and its fields (a Step goes over the pipe on every
engine step, so it must stay cheap), and matched by type rather than by a string tag.

To the engine process: Submit and Cancel, then Stop. From it: Ready or Failed once, then a Step for each
engine step that has events, and Stopped at the end.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from model_runtime.access import Priority
from model_runtime.config import LoggingSettings, ModelSettings, RegistrySettings, SchedulerSettings
from model_runtime.engine.base import EngineInfo
from model_runtime.scheduler.events import Event
from model_runtime.scheduler.params import SamplingParams

if TYPE_CHECKING:  # the factory imports the torch engine; vLLM's process reads these messages without it
    from model_runtime.engine.factory import EngineLoader


@dataclass(frozen=True)
class WorkerSpec:
    """What the engine process starts from (pickled to it once, as the process's argument)."""

    model: ModelSettings
    scheduler: SchedulerSettings
    logging: LoggingSettings
    loaders: Mapping[str, EngineLoader]  # the engine table by format, with the plugins' formats
    registry: RegistrySettings | None = None  # resolves the registry references a model folder names


# --- to the engine process ----------------------------------------------------------------------------
class Submit(NamedTuple):
    key: int  # the HTTP process's name for the request, in every Step and in Cancel
    prompt: list[int]
    params: list[SamplingParams]  # one per choice
    priority: Priority  # the class of the request's key: which waiting line it joins


class Cancel(NamedTuple):
    key: int


class Stop(NamedTuple):
    """End what still runs (with SchedulerClosed), close the engine, answer Stopped."""


ToEngine = Submit | Cancel | Stop


# --- from the engine process --------------------------------------------------------------------------
class Ready(NamedTuple):
    info: EngineInfo


class Failed(NamedTuple):
    reason: str  # why the engine did not load or warm up, for ModelLoadError


class Step(NamedTuple):
    waiting: tuple[int, ...]  # in each priority class (PRIORITIES' order)
    running: int
    events: list[tuple[int, list[Event]]]  # (request key, its events in this step)


class Stopped(NamedTuple):
    """The engine is closed; nothing follows."""


FromEngine = Ready | Failed | Step | Stopped
