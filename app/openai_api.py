"""OpenAI-compatible endpoints (/v1): the edited model as a drop-in for clients of vLLM, LoRAX, TGI, Ollama.

Thin, like app/routes.py: shape the request into an `Ask`, let the service decode it on the continuous
batch, shape the answer (or its Server-Sent Events) as OpenAI does. What is ours: every response says which
edit answered, in `sola_edit` (response and each choice, the first chunk when streaming) and in the
`X-Sola-Edit` / `X-Sola-Similarity` headers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app.api_error import ApiError
from app.deps import Reader, Service
from app.disconnect import unless_disconnected
from app.errors import documented
from app.openai_schemas import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatLogprobs,
    ChatMessageOut,
    Completion,
    CompletionChoice,
    CompletionChunk,
    CompletionChunkChoice,
    CompletionLogprobs,
    CompletionRequest,
    ModelCard,
    ModelList,
    SolaEdit,
    TokenLogprobOut,
    TopLogprob,
    Usage,
    _Sampling,
)
from app.service import Ask, EditService
from app.service_errors import PromptTooLong
from editors.types import ChatContext, PromptFormat, RowEvent, Sampling, TokenLogprob

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])
STARTED = int(time.time())  # the models' `created`: when this server started serving them
DEFAULT_MAX_TOKENS = 256  # when a request names none (bounded by SOLA_MAX_NEW_TOKENS and the context)
SYSTEM_ROLES = ("system", "developer")


def bad_request(message: str, code: str = "invalid_request_error") -> ApiError:
    return ApiError(400, code, message)


# ---- shaping requests -----------------------------------------------------------------------------------
def sampling(body: _Sampling, max_tokens: int | None, request: Request, top_logprobs: int | None) -> Sampling:
    """`top_logprobs`: None for no logprobs, else how many alternatives to report per token."""
    if body.n not in (None, 1):
        raise bad_request("n: this server returns one choice per prompt; send n=1 or leave it out")
    unsupported = body.unsupported_fields()
    if unsupported:
        names = ", ".join(unsupported)
        raise bad_request(f"{names}: not supported by this server (plain text answers only); leave it out")
    limit = request.app.state.settings.max_new_tokens
    if max_tokens is not None and max_tokens > limit:
        raise bad_request(
            f"max_tokens: at most {limit} on this server (SOLA_MAX_NEW_TOKENS)", "context_length_exceeded"
        )
    max_new_tokens = max_tokens or min(DEFAULT_MAX_TOKENS, limit)
    return Sampling(
        max_new_tokens=max_new_tokens,
        min_new_tokens=min(body.min_tokens, max_new_tokens),
        temperature=1.0 if body.temperature is None else body.temperature,  # OpenAI's default
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=body.stops(),
        logprobs=top_logprobs is not None,
        top_logprobs=top_logprobs or 0,
    )


def chat_ask(body: ChatCompletionRequest, request: Request) -> Ask:
    """The last user turn is the question (routing reads it); the system prompt and earlier turns are its
    context, formatted by the model's chat template."""
    if not body.messages:
        raise bad_request("messages: give at least one message, the last from the user")
    system: list[str] = []
    history: list[tuple[str, str]] = []
    for i, message in enumerate(body.messages):
        if message.role in SYSTEM_ROLES:
            if history:
                raise bad_request(f"messages[{i}]: system messages must come before the conversation")
            system.append(message.text())
        elif message.role in ("user", "assistant"):
            history.append((message.role, message.text()))
        else:
            raise bad_request(f"messages[{i}].role: {message.role!r} is not one of system, developer, user, assistant")
    if not history or history[-1][0] != "user":
        raise bad_request("messages: the last message must be from the user")
    *earlier, (_, question) = history
    if not question.strip():
        raise bad_request("messages: the last user message is empty")
    context = ChatContext(system="\n\n".join(system) if system else None, history=tuple(earlier))
    max_tokens = body.max_completion_tokens or body.max_tokens
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs: needs logprobs=true")
    top_logprobs = (body.top_logprobs or 0) if body.logprobs else None
    return Ask(question, PromptFormat.CHAT, sampling(body, max_tokens, request, top_logprobs), context=context)


def completion_asks(body: CompletionRequest, request: Request) -> list[Ask]:
    if body.echo:
        raise bad_request("echo: not supported; send echo=false")
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if any(not p.strip() for p in prompts):
        raise bad_request("prompt: empty prompts cannot be completed")
    if len(prompts) > request.app.state.settings.max_batch_size:
        raise bad_request(f"prompt: at most {request.app.state.settings.max_batch_size} prompts per request")
    return [Ask(p, PromptFormat.RAW, sampling(body, body.max_tokens, request, body.logprobs)) for p in prompts]


# ---- provenance -----------------------------------------------------------------------------------------
def edit_of(start: RowEvent) -> SolaEdit | None:
    route = start.route
    if route is None or route.edit_id is None or route.similarity is None:
        return None
    return SolaEdit(id=route.edit_id, similarity=round(float(route.similarity), 6))


def provenance_headers(edit: SolaEdit | None, request: Request, completion_id: str) -> dict[str, str]:
    """The answering edit as headers. X-Request-Id is the client's own when it sent one (app/request_id.py),
    else the completion's id, so a log line and the response body name the same thing."""
    headers = {"X-Sola-Edit": edit.id if edit else "none"}
    if "x-request-id" not in request.headers:
        headers["X-Request-Id"] = completion_id
    if edit is not None:
        headers["X-Sola-Similarity"] = f"{edit.similarity:.6f}"
    return headers


# ---- logprobs -------------------------------------------------------------------------------------------
def token_texts(svc: EditService, logprobs: Sequence[TokenLogprob]) -> dict[int, str]:
    """Each token id that appears (chosen or alternative) as the text it decodes to alone."""
    ids = sorted({t.token for t in logprobs} | {alt for t in logprobs for alt, _ in t.top})
    texts = svc.loaded_host.tokenizer.batch_decode([[i] for i in ids])
    return dict(zip(ids, texts, strict=True))


def chat_logprobs(svc: EditService, end: RowEvent) -> ChatLogprobs:
    text = token_texts(svc, end.logprobs)

    def top(token: int, logprob: float) -> TopLogprob:
        return TopLogprob(token=text[token], logprob=logprob, bytes=list(text[token].encode()))

    content = [
        TokenLogprobOut(**top(t.token, t.logprob).model_dump(), top_logprobs=[top(i, lp) for i, lp in t.top])
        for t in end.logprobs
    ]
    return ChatLogprobs(content=content)


def completion_logprobs(svc: EditService, end: RowEvent) -> CompletionLogprobs:
    text = token_texts(svc, end.logprobs)
    offsets, at = [], 0
    for t in end.logprobs:
        offsets.append(at)
        at += len(text[t.token])
    return CompletionLogprobs(
        tokens=[text[t.token] for t in end.logprobs],
        token_logprobs=[t.logprob for t in end.logprobs],
        top_logprobs=[{text[i]: lp for i, lp in t.top} for t in end.logprobs],
        text_offset=offsets,
    )


# ---- decoding -------------------------------------------------------------------------------------------
async def opened(svc: EditService, ask: Ask) -> tuple[RowEvent, AsyncGenerator[RowEvent, None]]:
    """Start decoding one request: its `start` event (the route, known after prefill) and the rest."""
    events = svc.stream(ask)
    try:
        start = await anext(events)
    except PromptTooLong as exc:  # OpenAI answers context overflows with a 400
        raise bad_request(exc.message, "context_length_exceeded") from None
    return start, events


async def finished(start: RowEvent, events: AsyncIterator[RowEvent]) -> tuple[str, RowEvent]:
    parts = []
    async for event in events:
        if event.kind == "text":
            parts.append(event.text)
        elif event.kind == "end":
            return "".join(parts), event
    raise RuntimeError("the row ended without an end event")


def usage(ends: Sequence[RowEvent]) -> Usage:
    prompt = sum(e.prompt_tokens for e in ends)
    completion = sum(e.completion_tokens for e in ends)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def sse(chunk: ChatCompletionChunk | CompletionChunk) -> str:
    return f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n"


async def merged(streams: Sequence[AsyncGenerator[RowEvent, None]]) -> AsyncGenerator[tuple[int, RowEvent], None]:
    """Events of several rows as they come, each tagged with its row's index."""
    queue: asyncio.Queue[tuple[int, RowEvent | None]] = asyncio.Queue()

    async def pump(index: int, events: AsyncIterator[RowEvent]) -> None:
        async for event in events:
            await queue.put((index, event))
        await queue.put((index, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        open_rows = len(tasks)
        while open_rows:
            index, event = await queue.get()
            if event is None:
                open_rows -= 1
                if tasks[index].done() and tasks[index].exception() is not None:
                    raise tasks[index].exception()  # type: ignore[misc]
                continue
            yield index, event
    finally:
        for task in tasks:
            task.cancel()
        # wait for the pumps to stop first: closing a generator a pump is still inside raises RuntimeError
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in streams:
            await stream.aclose()


# ---- one reply, two shapes ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    """What both endpoints share: one completion's id, time and model, and how its rows become chunks and a
    response. ChatReply and CompletionReply say only how OpenAI shapes each."""

    svc: EditService
    id: str
    created: int
    model: str
    include_usage: bool  # stream_options.include_usage: `usage` null on each chunk, then a usage-only chunk
    logprobs: bool

    def _sent(self) -> dict[str, Usage | None]:
        return {"usage": None} if self.include_usage else {}


@dataclass(frozen=True)
class ChatReply(Reply):
    def _chunk(self, choices: list[ChatChunkChoice], **extra: SolaEdit | Usage | None) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.id,
            object="chat.completion.chunk",
            created=self.created,
            model=self.model,
            choices=choices,
            **{**self._sent(), **extra},
        )

    def opening(self, index: int, edit: SolaEdit | None) -> ChatCompletionChunk:
        delta = ChatDelta(role="assistant", content="")
        return self._chunk(
            [ChatChunkChoice(index=index, delta=delta, finish_reason=None, logprobs=None)], sola_edit=edit
        )

    def text(self, index: int, text: str) -> ChatCompletionChunk:
        delta = ChatDelta(content=text)
        return self._chunk([ChatChunkChoice(index=index, delta=delta, finish_reason=None, logprobs=None)])

    def last(self, index: int, end: RowEvent) -> ChatCompletionChunk:
        logprobs = chat_logprobs(self.svc, end) if self.logprobs else None  # whole, with the last chunk
        reason = end.finish_reason or "stop"
        return self._chunk([ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=reason, logprobs=logprobs)])

    def usage_only(self, total: Usage) -> ChatCompletionChunk:
        return self._chunk([], usage=total)

    def whole(self, results: Sequence[tuple[str, RowEvent]], edits: Sequence[SolaEdit | None]) -> ChatCompletion:
        (text, end), edit = results[0], edits[0]
        choice = ChatChoice(
            index=0,
            message=ChatMessageOut(content=text),
            finish_reason=end.finish_reason or "stop",
            logprobs=chat_logprobs(self.svc, end) if self.logprobs else None,
            sola_edit=edit,
        )
        return ChatCompletion(
            id=self.id, created=self.created, model=self.model, choices=[choice], usage=usage([end]), sola_edit=edit
        )


@dataclass(frozen=True)
class CompletionReply(Reply):
    def _chunk(self, choices: list[CompletionChunkChoice], **extra: SolaEdit | Usage | None) -> CompletionChunk:
        return CompletionChunk(
            id=self.id,
            object="text_completion",
            created=self.created,
            model=self.model,
            choices=choices,
            **{**self._sent(), **extra},
        )

    def opening(self, index: int, edit: SolaEdit | None) -> CompletionChunk:
        choice = CompletionChunkChoice(index=index, text="", finish_reason=None, logprobs=None)
        return self._chunk([choice], sola_edit=edit)

    def text(self, index: int, text: str) -> CompletionChunk:
        return self._chunk([CompletionChunkChoice(index=index, text=text, finish_reason=None, logprobs=None)])

    def last(self, index: int, end: RowEvent) -> CompletionChunk:
        logprobs = completion_logprobs(self.svc, end) if self.logprobs else None
        reason = end.finish_reason or "stop"
        return self._chunk([CompletionChunkChoice(index=index, text="", finish_reason=reason, logprobs=logprobs)])

    def usage_only(self, total: Usage) -> CompletionChunk:
        return self._chunk([], usage=total)

    def whole(self, results: Sequence[tuple[str, RowEvent]], edits: Sequence[SolaEdit | None]) -> Completion:
        choices = [
            CompletionChoice(
                index=i,
                text=text,
                finish_reason=end.finish_reason or "stop",
                logprobs=completion_logprobs(self.svc, end) if self.logprobs else None,
                sola_edit=edits[i],
            )
            for i, (text, end) in enumerate(results)
        ]
        ends = [end for _, end in results]
        return Completion(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage(ends), sola_edit=edits[0]
        )


async def opened_rows(svc: EditService, asks: Sequence[Ask]) -> list[tuple[RowEvent, AsyncGenerator[RowEvent, None]]]:
    """Start every ask's row; they join the batch together. One refused: the others leave the batch now
    instead of decoding for nobody, and the refusal is the answer."""
    attempts = await asyncio.gather(*(opened(svc, ask) for ask in asks), return_exceptions=True)
    rows = [a for a in attempts if not isinstance(a, BaseException)]
    failed = [a for a in attempts if isinstance(a, BaseException)]
    if failed:
        for _, events in rows:
            await events.aclose()
        raise failed[0]
    return rows


async def answer(reply: ChatReply | CompletionReply, asks: Sequence[Ask], request: Request, stream: bool) -> Response:
    """Decode the asks on the continuous batch; the whole answer as JSON, or its Server-Sent Events."""
    rows = await opened_rows(reply.svc, asks)
    edits = [edit_of(start) for start, _ in rows]
    headers = provenance_headers(edits[0], request, reply.id)
    if not stream:
        everything = asyncio.gather(*(finished(start, events) for start, events in rows))
        results = await unless_disconnected(request, everything)
        return JSONResponse(reply.whole(results, edits).model_dump(mode="json"), headers=headers)

    async def body_events() -> AsyncIterator[str]:
        ends: list[RowEvent] = []
        for i, edit in enumerate(edits):  # each choice's provenance first, before any of its text
            yield sse(reply.opening(i, edit))
        events = merged([row_events for _, row_events in rows])
        try:
            async for index, event in events:
                if event.kind == "text" and event.text:
                    yield sse(reply.text(index, event.text))
                elif event.kind == "end":
                    ends.append(event)
                    yield sse(reply.last(index, event))
        finally:
            await events.aclose()  # a client gone: its rows' slots free at the next step
        if reply.include_usage:
            yield sse(reply.usage_only(usage(ends)))
        yield "data: [DONE]\n\n"

    return StreamingResponse(body_events(), media_type="text/event-stream", headers=headers)


# ---- endpoints ------------------------------------------------------------------------------------------
@router.get("/models", response_model=ModelList, responses=documented(401))
async def models(_: Reader, svc: Service) -> ModelList:
    if svc.host is not None:
        host = svc.loaded_host
        return ModelList(data=[ModelCard(id=host.name, created=STARTED, sola_model=host.info)])
    return ModelList(data=[ModelCard(id=svc.settings.model or "SmolLM2-135M-Instruct", created=STARTED)])


ANSWERED = {**documented(400, 401, 403, 415, 503), 200: {"description": "A completion, or its SSE chunks with stream"}}


@router.post("/chat/completions", response_model=ChatCompletion, responses=ANSWERED)
async def chat_completions(body: ChatCompletionRequest, request: Request, _: Reader, svc: Service) -> Response:
    ask = chat_ask(body, request)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    model, created = svc.loaded_host.name, int(time.time())
    reply = ChatReply(svc, f"chatcmpl-{uuid.uuid4().hex}", created, model, include_usage, body.logprobs)
    return await answer(reply, [ask], request, body.stream)


@router.post("/completions", response_model=Completion, responses=ANSWERED)
async def completions(body: CompletionRequest, request: Request, _: Reader, svc: Service) -> Response:
    asks = completion_asks(body, request)
    if len(asks) > 1:  # one request may not fill the batch with long prompts: their tokens count together
        asks = await encoded_within_request_limit(svc, asks)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    model, created = svc.loaded_host.name, int(time.time())
    reply = CompletionReply(svc, f"cmpl-{uuid.uuid4().hex}", created, model, include_usage, body.logprobs is not None)
    return await answer(reply, asks, request, body.stream)


async def encoded_within_request_limit(svc: EditService, asks: list[Ask]) -> list[Ask]:
    """The asks, each carrying its tokens (encoded once here, for the decoder too), when their prompts
    together fit SOLA_MAX_REQUEST_PROMPT_TOKENS."""
    try:
        encoded = await asyncio.to_thread(lambda: [svc.check_fits(a) for a in asks])
        svc.limits.check_request_tokens(sum(len(e.ids) for e in encoded))
    except PromptTooLong as exc:
        raise bad_request(exc.message, "context_length_exceeded") from None
    return [dataclasses.replace(a, encoded=e) for a, e in zip(asks, encoded, strict=True)]
