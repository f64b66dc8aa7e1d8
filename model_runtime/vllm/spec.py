"""What the vLLM process starts from, written to its standard input (pickled) when it starts."""

from __future__ import annotations

from dataclasses import dataclass

from model_runtime.config import LoggingSettings, ModelSettings, SchedulerSettings, VllmSettings


@dataclass(frozen=True)
class VllmSpec:
    model: ModelSettings  # a folder by now: registry references are pulled before the start
    scheduler: SchedulerSettings  # batch size, queue and time limits: the same meaning as the builtin's
    vllm: VllmSettings
    logging: LoggingSettings
