"""POST /v1/chat/completions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from jinja2 import TemplateError

from model_runtime.config import Settings
from model_runtime.scheduler.events import Event, TokenLogprobs
from model_runtime.server.auth import key_policy
from model_runtime.server.errors import bad_request
from model_runtime.server.formatting import ChoiceResult, Envelope, TokenTexts, client_finish_reason
from model_runtime.server.generation import (
    Generation,
    check_common,
    check_size,
    resolve_max_tokens,
    respond,
    sampling_params,
)
from model_runtime.server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatLogprobs,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from model_runtime.server.state import ServedModel

router = APIRouter()


def check_messages(req: ChatCompletionRequest, served: ServedModel, settings: Settings) -> None:
    """The cheap checks, before the template is rendered: some messages, no more than the context has
    tokens (a template gives every message at least its role's marker), characters within the limit."""
    if not req.messages:
        raise bad_request("messages must not be empty", "messages")
    if not served.tokenizer.chat_template:
        raise bad_request(f"{served.name} has no chat template; use /v1/completions", "messages")
    context = served.info.max_context
    if len(req.messages) > context:
        raise bad_request(
            f"{len(req.messages)} messages cannot fit in this model's context of {context} tokens",
            "messages",
            "context_length_exceeded",
        )
    check_size(1, sum(len(m.text()) for m in req.messages), req.n, settings, "messages")


def chat_prompt(req: ChatCompletionRequest, served: ServedModel) -> list[int]:
    """Runs on the tokenizing threads (RuntimeState.tokenize): rendering and tokenizing grow with the
    messages."""
    tokenizer = served.tokenizer
    # OpenAI's "developer" role is the system role under another name.
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages
    ]
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except (TemplateError, ValueError, TypeError) as exc:
        raise bad_request(f"messages do not fit the model's chat template: {exc}", "messages") from exc
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _unsupported(req: ChatCompletionRequest) -> None:
    if req.tools:
        raise bad_request("tools are not supported by this server", "tools")
    if req.response_format and req.response_format.get("type", "text") != "text":
        raise bad_request("only response_format type 'text' is supported by this server", "response_format")
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("top_logprobs requires logprobs: true", "top_logprobs")


class ChatFormatter:
    def __init__(self, served: ServedModel, logprobs: int | None) -> None:
        self.envelope = Envelope(served.name, served.fingerprint, "chat.completion.chunk", "chatcmpl")
        self._texts = TokenTexts(served.tokenizer) if logprobs is not None else None

    def _logprobs(self, entries: list[TokenLogprobs] | tuple[TokenLogprobs, ...]) -> ChatLogprobs | None:
        if self._texts is None:
            return None
        texts = self._texts

        def top(token: int, logprob: float) -> TopLogprob:
            text = texts(token)
            return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode()))

        return ChatLogprobs(
            content=[
                TokenLogprob(
                    **top(e.token, e.logprob).model_dump(), top_logprobs=[top(t, lp) for t, lp in e.top]
                )
                for e in entries
            ]
        )

    def chunks(self, event: Event, first: bool) -> list[str]:
        envelope, chunks = self.envelope, []
        if first:
            chunks.append(
                envelope.chunk(
                    [
                        {
                            "index": event.index,
                            "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None,
                        }
                    ]
                )
            )
        if event.text or event.logprobs:
            logprobs = self._logprobs(event.logprobs)
            choice = {
                "index": event.index,
                "delta": {"content": event.text},
                "logprobs": logprobs.model_dump() if logprobs else None,
                "finish_reason": None,
            }
            chunks.append(envelope.chunk([choice]))
        if event.finish_reason in ("stop", "length"):
            chunks.append(
                envelope.chunk([{"index": event.index, "delta": {}, "finish_reason": event.finish_reason}])
            )
        return chunks

    def body(self, choices: list[ChoiceResult], usage: Usage) -> ChatCompletion:
        return ChatCompletion(
            **self.envelope.head(),
            choices=[
                ChatChoice(
                    index=c.index,
                    message=AssistantMessage(content=c.text),
                    logprobs=self._logprobs(c.logprobs),
                    finish_reason=client_finish_reason(c.finish_reason),
                )
                for c in choices
            ],
            usage=usage,
        )


@router.post("/v1/chat/completions", response_model=ChatCompletion)
async def create_chat_completion(req: ChatCompletionRequest, request: Request) -> Any:
    runtime = request.app.state.runtime
    runtime.check_accepting()
    policy = key_policy(request)
    served = runtime.model(req.model, policy)
    _unsupported(req)
    bias = check_common(req, runtime, served)
    check_messages(req, served, runtime.settings)
    prompt = await runtime.tokenize(served, chat_prompt, req, served)
    budget_param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    max_tokens = resolve_max_tokens(
        served, len(prompt), requested, requested is not None, "messages", budget_param
    )
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    formatter = ChatFormatter(served, logprobs)
    params, writer = served.hook.plan(
        req, sampling_params(req, max_tokens, logprobs, bias), formatter, 1, runtime.settings.scheduler
    )
    generation = Generation(
        served, [prompt], params, runtime.settings.scheduler.request_timeout_s, policy.priority
    )
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return await respond(
        generation, writer, req.stream, include_usage, request, formatter.envelope.usage_chunk
    )
