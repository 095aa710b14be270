"""The native API's request and response bodies. Requests are strict (no type coercion, no unknown fields).

The server validates and answers with these; the HTTP client (client/http.py) reads the answers with them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field

from wire.kinds import EditStatus, EventKind


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def storable(value: str) -> str:
    """Text the tokenizer and both databases take: JSON admits lone UTF-16 surrogates and NUL, they do not."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (it holds a lone UTF-16 surrogate such as \\udfff)") from None
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (\\u0000)")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


Prompt = Annotated[str, AfterValidator(storable), AfterValidator(_not_blank)]


def _storable_json(value: Any) -> Any:
    """Every string in a metadata object (keys included) must be storable text."""
    if isinstance(value, str):
        storable(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            storable(key)
            _storable_json(item)
    elif isinstance(value, list):
        for item in value:
            _storable_json(item)
    return value


class EditCreate(_Request):
    prompt: Prompt
    target: Prompt
    rephrases: list[Prompt] = Field(default_factory=list, description="Other wordings the edit must answer")
    negatives: list[Prompt] = Field(
        default_factory=list,
        description="Questions the edit must NOT answer (e.g. another attribute of the same subject); each vetoes "
        "this edit, and no other, for questions closer to it than to the edit's own wordings",
    )
    metadata: Annotated[dict[str, Any], AfterValidator(_storable_json)] = Field(default_factory=dict)


class BulkEditItem(EditCreate):
    """One item of POST /edits/batch: a POST /edits body, and its own Idempotency-Key."""

    idempotency_key: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="As POST /edits' Idempotency-Key header: sent again with the same body, the item is replayed",
    )

    def edit(self) -> EditCreate:
        """The POST /edits body (what the key's request hash covers)."""
        return EditCreate.model_validate(self.model_dump(exclude={"idempotency_key"}))


class BulkEditCreate(_Request):
    """POST /edits/batch: up to SOLA_MAX_BULK_EDITS edits, trained together, each stored (or refused) on its own."""

    edits: list[BulkEditItem] = Field(min_length=1)


class EditChange(_Request):
    """PATCH /edits/{id}: what may change on a stored edit without retraining it."""

    negatives: list[Prompt] = Field(description="The edit's negatives, replacing the current list")
    reason: Annotated[str, AfterValidator(storable), Field(max_length=2000)] | None = None


class GenerateRequest(_Request):
    prompt: Prompt
    max_new_tokens: int = 32  # upper bound checked against settings.max_new_tokens
    # true: the prompt is the user turn of the model's chat template; false: raw text to continue;
    # unset: chat when the model has a chat template (a raw question often gets an empty answer)
    chat: bool | None = None
    use_edits: bool = True  # false: the unedited base model answers (A/B checks); nothing is routed


class TrainStats(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    steps: int
    loss: float
    seconds: float


class EditOut(BaseModel):
    """An edit as the API shows it: built from the stored EditRecord by attribute (model_validate)."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    status: EditStatus
    prompt: str
    target: str
    rephrases: list[str]
    negatives: list[str]
    metadata: dict[str, Any]
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    revoked_by: str | None
    base_model: str
    base_fingerprint: str
    layer: int
    train: TrainStats
    superseded_by: str | None = Field(
        default=None, description="A newer active edit of the same question that answers it now (newest wins)"
    )


class Overlap(BaseModel):
    """An active edit the new one overlaps: the router scores the new prompt (near-)identical to it."""

    model_config = ConfigDict(from_attributes=True)

    edit_id: str = Field(validation_alias=AliasChoices("older_id", "edit_id"))  # a Supersession, or this JSON
    similarity: float


class Capture(BaseModel):
    """A wording that routes to another edit than the one it belongs to."""

    question: str
    edit_id: str = Field(description="The edit the question belongs to (captures) or now reaches (captured_by)")
    score: float = Field(description="The routing score of the capturing edit for this question")
    prompt_format: str = Field(description="`chat` or `raw`: the format it was asked in")


class CreatedEditOut(EditOut):
    supersedes: list[Overlap] = Field(
        default_factory=list,
        description="Active edits of the same question this edit now answers in place of (also in its event)",
    )
    captures: list[Capture] = Field(
        default_factory=list,
        description="Prompts and rephrases of active edits that now reach this edit instead of their own",
    )
    captured_by: list[Capture] = Field(
        default_factory=list,
        description="This edit's own prompt and rephrases that reach an older edit instead of this one",
    )


class ChatTurn(_Request):
    role: Literal["user", "assistant"]
    content: Annotated[str, AfterValidator(storable)]


class RouteRequest(_Request):
    """POST /route: which edit each question would reach, without generating."""

    questions: list[Prompt] = Field(min_length=1, max_length=64)
    chat: bool = Field(True, description="Ask each question as the user turn of the chat template (false: raw)")
    system: Annotated[str, AfterValidator(storable)] | None = Field(None, description="A system prompt (chat)")
    history: list[ChatTurn] = Field(default_factory=list, description="Earlier turns before each question (chat)")


class RouteOut(BaseModel):
    question: str
    edit_id: str | None = Field(description="The edit that would answer (its LoRA applied), or null")
    score: float | None = Field(description="Its routing score, or the best score seen when none answers")
    nearest_edit_id: str | None = Field(description="The edit of the best score, answering or not")
    runner_up_id: str | None = Field(description="The best-scoring other edit")
    margin: float | None = Field(description="score minus the runner-up's score")
    vetoed: list[str] = Field(
        description="Edits that scored over the threshold but did not pass a check (subject words, names, "
        "negatives, the second stage)"
    )


class RoutesOut(BaseModel):
    routes: list[RouteOut]


class RevokeRequest(_Request):
    reason: Annotated[str, AfterValidator(storable), Field(max_length=2000)] | None = None


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    seq: int
    edit_id: str
    kind: EventKind
    actor: str
    at: datetime
    detail: dict[str, Any]


class EditPage(BaseModel):
    data: list[EditOut]
    has_more: bool
    next_after: str | None


class EventPage(BaseModel):
    data: list[EventOut]
    has_more: bool
    next_after: str | None


class GenerateOut(BaseModel):
    """editors.types.Generation (what the engine produced for one request) plus the serving model's name."""

    text: str
    routed_edit_id: str | None = Field(description="The edit that answered (its LoRA was applied), or null")
    similarity: float | None = Field(
        description="Routing score of the nearest edit (cosine x subject coverage^2), also when it did not fire; "
        "null when no edit exists or the request asked for use_edits=false"
    )
    nearest_edit_id: str | None = Field(description="The edit of that score, fired or not")
    finish_reason: str = Field(description="`stop` (end of turn) or `length` (max_new_tokens reached)")
    prompt_tokens: int
    completion_tokens: int
    model: str


class ErrorBody(BaseModel):
    code: str
    message: str
    type: str = Field(description="OpenAI's error type: invalid_request_error, authentication_error, ...")
    param: str | None = Field(None, description="The invalid field on /v1 (OpenAI's `param`), else null")


class ErrorOut(BaseModel):
    error: ErrorBody


class BulkItemError(BaseModel):
    code: str = Field(description="As POST /edits would answer it, e.g. prompt_too_long, training_timeout")
    message: str
    status: int = Field(description="The HTTP status POST /edits would have answered this item with")


class BulkItemOut(BaseModel):
    """What became of one item: `created` (trained and stored now), `replayed` (its Idempotency-Key's edit
    existed already; nothing trained) or `refused` (nothing stored; `error` says why)."""

    index: int = Field(description="The item's position in the request")
    status: Literal["created", "replayed", "refused"]
    edit: CreatedEditOut | None = None
    error: BulkItemError | None = None


class BulkEditOut(BaseModel):
    items: list[BulkItemOut]
    created: int
    replayed: int
    refused: int
