"""Request and response bodies of the OpenAI-compatible API (/v1), field for field as OpenAI's reference.

Requests ignore fields they do not know, as OpenAI's server does (clients send many optional ones), but take
the ones they know strictly (`stream: "yes"` is an error, not true). OpenAI fields this server cannot honour
(`tools`, `response_format`, `best_of`, ...) are refused by name, as vLLM does, never silently ignored. Every
response carries `sola_edit`: the edit that answered (null when none fired), the SoLA extension.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from wire.schemas import storable


class _OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: str  # checked by the route: system, developer, user, assistant
    content: str | list[TextPart] | None = None

    @field_validator("content")
    @classmethod
    def _storable_text(cls, v: str | list[TextPart] | None) -> str | list[TextPart] | None:
        for text in [v] if isinstance(v, str) else [p.text for p in v or []]:
            storable(text)  # the tokenizer cannot take lone surrogates or NUL: a 400, not a 500
        return v

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool = False


class _Sampling(_OpenAIRequest):
    model: str | None = None  # one model is served; any name is accepted (GET /v1/models lists it)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # vLLM's extension: hold the end of the answer back this many tokens (benchmarks: equal-length answers)
    min_tokens: int = Field(default=0, ge=0)
    # OpenAI fields this server cannot honour: accepted only at their "off" values (unsupported_fields says)
    tools: list[JsonValue] | None = None
    tool_choice: JsonValue = None
    functions: list[JsonValue] | None = None
    function_call: JsonValue = None
    response_format: dict[str, JsonValue] | None = None
    best_of: int | None = None
    suffix: str | None = None

    def unsupported_fields(self) -> list[str]:
        """The fields set to something this server would have to ignore to answer."""
        off = {
            "tools": self.tools in (None, []),
            "tool_choice": self.tool_choice in (None, "none", "auto") and not self.tools,
            "functions": self.functions in (None, []),
            "function_call": self.function_call in (None, "none", "auto") and not self.functions,
            "response_format": self.response_format in (None, {"type": "text"}),
            "best_of": self.best_of in (None, 1),
            "suffix": self.suffix in (None, ""),
        }
        return [name for name, is_off in off.items() if not is_off]

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(_Sampling):
    messages: list[Message]
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)  # OpenAI's range; needs logprobs=true


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=5)  # OpenAI's legacy API: the top-k, up to 5

    @field_validator("prompt")
    @classmethod
    def _texts(cls, v: str | list[str]) -> str | list[str]:
        texts = [v] if isinstance(v, str) else v
        if not texts:
            raise ValueError("prompt: give a string or a non-empty list of strings")
        for text in texts:
            storable(text)
        return v


class SolaEdit(BaseModel):
    """The edit that answered: its id and routing score (cosine x subject coverage^2)."""

    id: str
    similarity: float


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    """OpenAI's chat `logprobs`: one entry per answer token, with its most likely alternatives."""

    content: list[TokenLogprobOut]
    refusal: None = None


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy completions `logprobs`: parallel lists over the answer's tokens."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    finish_reason: str
    logprobs: ChatLogprobs | None = None
    sola_edit: SolaEdit | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    sola_edit: SolaEdit | None = Field(description="The edit that answered (null: the base model answered)")


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str
    logprobs: CompletionLogprobs | None = None
    sola_edit: SolaEdit | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    sola_edit: SolaEdit | None = Field(description="The edit that answered choice 0 (each choice has its own)")


# ---- streamed chunks ------------------------------------------------------------------------------------
# Sent with `model_dump(exclude_unset=True)`: a field is on the wire when the code set it, as OpenAI's server
# sends it (a delta carries only what changed; `sola_edit` rides on the opening chunk; `usage` is null on
# every chunk but the last only when the client asked for usage). `object` has no default so it is always set.
class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: str | None
    logprobs: ChatLogprobs | None


class _Chunk(BaseModel):
    """What every streamed chunk carries around its choices (subclasses narrow `object` and `choices`; fields
    keep this order on the wire)."""

    id: str
    object: str
    created: int
    model: str
    choices: list[ChatChunkChoice] | list[CompletionChunkChoice]
    usage: Usage | None = None
    sola_edit: SolaEdit | None = None


class ChatCompletionChunk(_Chunk):
    object: Literal["chat.completion.chunk"]
    choices: list[ChatChunkChoice]


class CompletionChunkChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None


class CompletionChunk(_Chunk):
    object: Literal["text_completion"]
    choices: list[CompletionChunkChoice]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sola"
    # What is served (SoLA's additions): family, parameters, dtype, device, resident_bytes, layers.
    sola_model: dict[str, str | int] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
