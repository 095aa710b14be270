"""SQLAlchemy 2.0 typed models. The database is the single source of truth for edits and their audit log.

Knows nothing of torch: keys are float32 bytes, adapters are opaque safetensors bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    inspect,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from wire.kinds import EditStatus, EventKind

# Explicit constraint names keep Alembic migrations identical on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _one_of(column: str, values: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone; put it back on load)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
SeqType = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Edit(Base):
    __tablename__ = "edits"

    # `seq` orders edits (newest wins ties in the router) and backs cursor pagination; `id` is public.
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=EditStatus.ACTIVE)
    prompt: Mapped[str] = mapped_column(Text)
    target: Mapped[str] = mapped_column(Text)
    rephrases: Mapped[list[str]] = mapped_column(JSONType, default=list)
    # Questions the edit must not answer: the router vetoes this edit (and only it) for them.
    negatives: Mapped[list[str]] = mapped_column(JSONType, default=list, server_default="[]")
    # `metadata` is reserved on declarative classes; the column keeps the public name.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(200))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    base_model: Mapped[str] = mapped_column(String(200))
    base_fingerprint: Mapped[str] = mapped_column(String(64))
    layer: Mapped[int] = mapped_column(Integer)
    train_steps: Mapped[int] = mapped_column(Integer)
    train_loss: Mapped[float] = mapped_column(Float)
    train_seconds: Mapped[float] = mapped_column(Float)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True, nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)

    keys: Mapped[list[EditKey]] = relationship(
        back_populates="edit", order_by="EditKey.position", cascade="all, delete-orphan", lazy="raise"
    )
    adapter: Mapped[EditAdapter] = relationship(back_populates="edit", cascade="all, delete-orphan", lazy="raise")

    def columns(self) -> dict[str, Any]:
        """The row by column name ("metadata", not the attribute `meta`): the names EditRecord and NewEdit use."""
        return {attr.columns[0].name: getattr(self, attr.key) for attr in inspect(Edit).column_attrs}

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any]) -> Edit:
        names = {attr.columns[0].name: attr.key for attr in inspect(Edit).column_attrs}
        return cls(**{names[name]: value for name, value in columns.items()})

    __table_args__ = (
        Index("ix_edits_status_seq", "status", "seq"),
        CheckConstraint(_one_of("status", EditStatus), name="status"),  # PostgreSQL; triggers on SQLite
    )


class EditKey(Base):
    """One routing key row: the content vector (editors/content.py) of one wording of the edit, float32 bytes.
    `kind` says which wording in which prompt format: "chat:prompt", "raw:rephrase:0", "chat:negative:1"."""

    __tablename__ = "edit_keys"

    id: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    edit_id: Mapped[str] = mapped_column(ForeignKey("edits.id", ondelete="RESTRICT"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(64))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)

    edit: Mapped[Edit] = relationship(back_populates="keys")

    __table_args__ = (UniqueConstraint("edit_id", "position", name="uq_edit_keys_edit_id_position"),)


class EditAdapter(Base):
    """The edit's frozen LoRA weights; a separate table so listing edits never drags the blobs along."""

    __tablename__ = "edit_adapters"

    edit_id: Mapped[str] = mapped_column(ForeignKey("edits.id", ondelete="RESTRICT"), primary_key=True)
    weights: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))

    edit: Mapped[Edit] = relationship(back_populates="adapter")


class Event(Base):
    """Append-only audit log (enforced by database triggers too). `seq` is the replication cursor."""

    __tablename__ = "events"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    edit_id: Mapped[str] = mapped_column(ForeignKey("edits.id", ondelete="RESTRICT"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)

    __table_args__ = (CheckConstraint(_one_of("kind", EventKind), name="kind"),)  # PostgreSQL; triggers on SQLite
