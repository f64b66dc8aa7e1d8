"""The OpenAI wire protocol as pydantic models: requests (validated, with ranges) and responses.

Only the protocol lives here; what a request means for the scheduler is decided in generation.py.
Fields the OpenAI API defines but this server cannot honour are accepted only at their neutral value,
so that a client never silently gets something other than what it asked for.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

# Bounds on what one request may ask of every token it generates (the stop check and the logit bias
# run once per token; see scheduler/text.py and scheduler/sampling.py).
MAX_STOP_SEQUENCES = 16  # OpenAI takes 4; chat templates alone can bring several end markers
# Stop sequences are delimiters ("\n\n", "</answer>", "\nUser:"); 256 characters covers any of them many
# times over. Matching costs no more per token for a longer one, but text that may begin a stop
# sequence is held back from a stream, and the matcher is built from every character of them.
MAX_STOP_LENGTH = 256
MAX_LOGIT_BIAS_ENTRIES = 300  # OpenAI's limit
MAX_LOGIT_BIAS = 100.0  # either way; OpenAI's range
# A logit_bias key: a token id in ASCII digits (str.isdigit would also take "²", which int() refuses).
TOKEN_ID_KEY = re.compile(r"[0-9]+")


def _integral(value: Any) -> Any:
    # JSON has one kind of number, and to JSON Schema 2.0 is an integer: so it is one here too.
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Integer types: bounds before the validator, or pydantic writes them as "ge"/"le", which JSON Schema
# does not know, instead of "minimum"/"maximum".
_INTEGRAL = BeforeValidator(_integral)
Integer = Annotated[int, _INTEGRAL]
NonNegativeInt = Annotated[int, Field(ge=0), _INTEGRAL]
PositiveInt = Annotated[int, Field(ge=1), _INTEGRAL]
LogprobsCount = Annotated[int, Field(ge=0, le=20), _INTEGRAL]
# A seed is a 64-bit integer (choice i of a request draws with seed + i; torch takes up to 2**64 - 1).
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1), _INTEGRAL]
StopSequence = Annotated[str, Field(min_length=1, max_length=MAX_STOP_LENGTH)]
# The annotations below declare the bounds in the OpenAPI document; the "before" validators check
# the same bounds first, to refuse with a message that names the parameter in words.
Stop = StopSequence | Annotated[list[StopSequence], Field(max_length=MAX_STOP_SEQUENCES)]
LogitBias = Annotated[
    dict[
        Annotated[str, Field(pattern=f"^{TOKEN_ID_KEY.pattern}$")],
        Annotated[float, Field(ge=-MAX_LOGIT_BIAS, le=MAX_LOGIT_BIAS)],
    ],
    # pydantic writes the key pattern as patternProperties, which lets other keys through unchecked.
    Field(
        max_length=MAX_LOGIT_BIAS_ENTRIES,
        json_schema_extra={"propertyNames": {"pattern": f"^{TOKEN_ID_KEY.pattern}$"}},
    ),
]


class _Request(BaseModel):
    # Unknown fields are ignored (newer clients send more than we know); known ones are checked, as
    # strictly as the OpenAPI document states them: no "0.5" for a number, no 0 or "true" for a boolean.
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Request):
    include_usage: bool = False


class _SamplingFields(_Request):
    model: str = Field(min_length=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, ge=0.0, le=1.0)
    n: PositiveInt = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stop | None = None
    seed: Seed | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: LogitBias | None = None
    user: str | None = None
    # Extensions with vLLM's names, for benchmarks and evaluation harnesses.
    min_tokens: NonNegativeInt = 0
    ignore_eos: bool = False
    # Extension: a vote ensemble's per-member answers and votes, in the response's `ensemble` field.
    ensemble_members: bool = False

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_bounds(cls, value: Any) -> Any:
        stops = [value] if isinstance(value, str) else value
        if isinstance(stops, list):
            if len(stops) > MAX_STOP_SEQUENCES:
                raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(stops)}")
            texts = [s for s in stops if isinstance(s, str)]
            if any(not s for s in texts):
                raise ValueError("stop sequences must not be empty")
            if (longest := max((len(s) for s in texts), default=0)) > MAX_STOP_LENGTH:
                raise ValueError(
                    f"stop sequences may be at most {MAX_STOP_LENGTH} characters long, got {longest}"
                )
        return value

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str]:
        return [value] if isinstance(value, str) else list(value or [])

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _logit_bias_bounds(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        if len(value) > MAX_LOGIT_BIAS_ENTRIES:
            raise ValueError(f"at most {MAX_LOGIT_BIAS_ENTRIES} entries, got {len(value)}")
        for key, bias in value.items():
            if not (isinstance(key, str) and TOKEN_ID_KEY.fullmatch(key)):
                raise ValueError(f"{key!r:.40} is not a token id (a key must be written in digits 0-9)")
            if isinstance(bias, int | float) and not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
                raise ValueError(
                    f"{bias} for token {key} is outside [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}]"
                )
        return value


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[Integer] | list[list[Integer]]
    max_tokens: PositiveInt | None = 16
    logprobs: LogprobsCount | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: PositiveInt | None = Field(default=None, description="Must equal n when given")


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage]
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool = False
    top_logprobs: LogprobsCount | None = Field(default=None, description="Requires logprobs: true")
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None


# --- responses -----------------------------------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage


# Streamed chunks: written by the formatters as JSON text for speed, described here for the OpenAPI
# document (each `data:` line of a stream is one of these, an ErrorResponse, or `[DONE]`).
class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage | None = None  # only in the last chunk, with stream_options.include_usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None  # only in the last chunk, with stream_options.include_usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "model-runtime"
    version: str | None = None
    # Unknown (None) for a model that another instance group serves (server.listed_models).
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: str
    models: dict[str, str] = {}
    detail: str | None = None
