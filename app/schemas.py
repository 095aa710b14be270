"""Request and response bodies. Requests are strict (no type coercion, no unknown fields)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from storage.repository import EditRecord, EventRecord


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


class EditCreate(_Request):
    prompt: str
    target: str
    rephrases: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)

    _prompt = field_validator("prompt", "target")(_not_blank)

    @field_validator("rephrases")
    @classmethod
    def _rephrases(cls, value: list[str]) -> list[str]:
        for text in value:
            _not_blank(text)
        return value


class GenerateRequest(_Request):
    prompt: str
    max_new_tokens: int = 32  # upper bound checked against settings.max_new_tokens
    chat: bool = False

    _prompt = field_validator("prompt")(_not_blank)


class TrainStats(BaseModel):
    steps: int
    loss: float
    seconds: float


class EditOut(BaseModel):
    id: str
    status: Literal["active", "revoked"]
    prompt: str
    target: str
    rephrases: list[str]
    metadata: dict[str, Any]
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    revoked_by: str | None
    base_model: str
    base_fingerprint: str
    layer: int
    train: TrainStats

    @classmethod
    def of(cls, r: EditRecord) -> EditOut:
        return cls(
            id=r.id,
            status=r.status,
            prompt=r.prompt,
            target=r.target,
            rephrases=r.rephrases,  # type: ignore[arg-type]
            metadata=r.metadata,
            created_at=r.created_at,
            created_by=r.created_by,
            revoked_at=r.revoked_at,
            revoked_by=r.revoked_by,
            base_model=r.base_model,
            base_fingerprint=r.base_fingerprint,
            layer=r.layer,
            train=TrainStats(steps=r.train_steps, loss=r.train_loss, seconds=r.train_seconds),
        )


class EventOut(BaseModel):
    seq: int
    edit_id: str
    kind: Literal["created", "revoked", "restored", "superseded"]
    actor: str
    at: datetime
    detail: dict[str, Any]

    @classmethod
    def of(cls, r: EventRecord) -> EventOut:
        return cls(seq=r.seq, edit_id=r.edit_id, kind=r.kind, actor=r.actor, at=r.at, detail=r.detail)  # type: ignore[arg-type]


class EditPage(BaseModel):
    data: list[EditOut]
    has_more: bool
    next_after: str | None


class EventPage(BaseModel):
    data: list[EventOut]
    has_more: bool
    next_after: str | None


class GenerateOut(BaseModel):
    text: str
    routed_edit_id: str | None
    similarity: float | None
    model: str


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody
