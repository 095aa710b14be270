"""Repository: every read and write of edits and their audit events, one transaction per operation.

Returns plain frozen records, never live ORM objects, so callers cannot lazy-load outside a session.
The events table is append-only: this module has no code path that updates or deletes an event.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar, cast

import numpy as np
from sqlalchemy import CursorResult, Engine, Select, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session

from storage.db import make_sessionmaker
from storage.models import Edit, EditAdapter, EditKey, Event, utcnow
from wire.kinds import EditStatus, EventKind

if TYPE_CHECKING:  # annotations only: storage runs without the editing engine or the API's models
    from editors.types import TrainedEdit
    from wire.schemas import EditCreate

T = TypeVar("T")
Row = TypeVar("Row")  # a table row class with a `seq` column


class EditNotFound(LookupError):
    pass


class IdempotencyKeyTaken(Exception):
    """Another edit committed under this idempotency key first (e.g. a concurrent replica)."""


@dataclass(frozen=True)
class KeyRow:
    kind: str
    vector: bytes  # float32, little-endian, `dim` values
    dim: int


def keys_to_rows(keys: np.ndarray, kinds: Sequence[str]) -> list[KeyRow]:
    """Routing keys [n, dim] (one kind per row) as stored rows."""
    keys = np.ascontiguousarray(keys, dtype="<f4")
    return [
        KeyRow(kind=kind, vector=row.tobytes(), dim=int(keys.shape[1])) for kind, row in zip(kinds, keys, strict=True)
    ]


def rows_to_keys(rows: Sequence[KeyRow]) -> np.ndarray:
    """Stored rows back to float32 keys [n, dim]."""
    dim = rows[0].dim
    return np.frombuffer(b"".join(r.vector for r in rows), dtype="<f4").reshape(len(rows), dim).astype(np.float32)


EDIT_COLUMNS = tuple(c.name for c in Edit.__table__.columns)


@dataclass(frozen=True)
class NewEdit:
    """A trained edit to store: the edits table's columns the database does not assign (NewEdit's fields of
    the same name, checked by tests/test_edit_fields.py), its adapter and its keys."""

    id: str
    prompt: str
    target: str
    rephrases: list[str]
    metadata: dict[str, Any]
    created_by: str
    base_model: str
    base_fingerprint: str
    layer: int
    train_steps: int
    train_loss: float
    train_seconds: float
    adapter: bytes
    adapter_sha256: str
    keys: list[KeyRow]
    idempotency_key: str | None = None
    request_hash: str | None = None
    negatives: list[str] = field(default_factory=list)


def request_hash(body: EditCreate) -> str:
    """Canonical hash of an edit request: an idempotency key replays only the very same request. Fields added
    since keys were first stored (negatives) count only when set, so an older request still hashes the same."""
    fields = body.model_dump(mode="json")
    if not fields["negatives"]:
        del fields["negatives"]
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def stored_edit(
    edit_id: str,
    body: EditCreate,
    trained: TrainedEdit,
    host: Any,  # editors.model_host.ModelHost: its name and fingerprint
    layer: int,
    actor: str,
    idempotency_key: str | None = None,
    negative_keys: tuple[Any, list[str]] | None = None,  # (keys [n, D], kinds) from EditingEngine.negative_keys
) -> NewEdit:
    """The database row of a trained edit: the service commits its edits through this, and so does the benchmark."""
    keys = keys_to_rows(trained.keys, trained.key_kinds)
    if negative_keys is not None and negative_keys[1]:
        keys += keys_to_rows(*negative_keys)
    return NewEdit(
        id=edit_id,
        prompt=body.prompt,
        target=body.target,
        rephrases=body.rephrases,
        negatives=body.negatives,
        metadata=body.metadata,
        created_by=actor,
        base_model=host.name,
        base_fingerprint=host.fingerprint,
        layer=layer,
        train_steps=int(trained.steps),
        train_loss=float(trained.loss),
        train_seconds=float(trained.seconds),
        adapter=trained.adapter,
        adapter_sha256=trained.adapter_sha256,
        keys=keys,
        idempotency_key=idempotency_key,
        request_hash=request_hash(body) if idempotency_key else None,
    )


class TrainingRun(NamedTuple):
    """How an edit's adapter was trained (the API's `train` object)."""

    steps: int
    loss: float
    seconds: float


@dataclass(frozen=True)
class EditRecord:
    seq: int
    id: str
    status: str
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
    train_steps: int
    train_loss: float
    train_seconds: float
    idempotency_key: str | None
    request_hash: str | None
    negatives: list[str] = field(default_factory=list)
    # The active edit that answers this edit's question now (newer, same fact), read from the audit log.
    superseded_by: str | None = None

    @property
    def train(self) -> TrainingRun:
        return TrainingRun(self.train_steps, self.train_loss, self.train_seconds)

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> EditRecord:
        """From a Core row of the edits table (its column names are these field names)."""
        fields = {name: row[name] for name in cls.__dataclass_fields__ if name != "superseded_by"}
        fields["rephrases"], fields["metadata"] = list(fields["rephrases"] or []), dict(fields["metadata"] or {})
        fields["negatives"] = list(fields["negatives"] or [])
        return cls(**fields)

    @classmethod
    def of(cls, e: Edit) -> EditRecord:
        return cls.from_row(e.columns())


@dataclass(frozen=True)
class EventRecord:
    seq: int
    edit_id: str
    kind: str
    actor: str
    at: datetime
    detail: dict[str, Any]

    @classmethod
    def of(cls, e: Event) -> EventRecord:
        return cls(seq=e.seq, edit_id=e.edit_id, kind=e.kind, actor=e.actor, at=e.at, detail=dict(e.detail or {}))


@dataclass(frozen=True)
class EditFilters:
    """Narrowing of GET /edits; every field given must hold."""

    actor: str | None = None  # created_by
    text: str | None = None  # case-insensitive substring of the prompt or the target
    metadata: dict[str, str] = field(default_factory=dict)  # metadata[key] == value (as text)
    created_from: datetime | None = None  # created_at >= this
    created_to: datetime | None = None  # created_at < this


@dataclass(frozen=True)
class EditPayload:
    """What the engine needs to activate an edit: its weights, keys and provenance."""

    edit: EditRecord
    adapter: bytes
    adapter_sha256: str
    keys: list[KeyRow]


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    has_more: bool
    last_seq: int | None = field(default=None)  # cursor for the next page when has_more


@dataclass(frozen=True)
class Supersession:
    """A newer edit whose key (near-)duplicates an older active edit's key."""

    older_id: str
    similarity: float


class Repository:
    def __init__(self, db: Engine):
        self.db = db  # SQLAlchemy's Engine: the database, never the editing engine
        self._sessions = make_sessionmaker(db)

    def session(self) -> Session:
        return self._sessions()

    # ---- writes: one transaction each, the audit event inside it ---------------------------------
    def create_edit(self, new: NewEdit, supersedes: Sequence[Supersession] = ()) -> EditRecord:
        now = utcnow()
        row = {f.name: getattr(new, f.name) for f in fields(new) if f.name in EDIT_COLUMNS}
        edit = Edit.from_columns({**row, "status": EditStatus.ACTIVE, "created_at": now})
        edit.keys = [EditKey(position=i, kind=k.kind, dim=k.dim, vector=k.vector) for i, k in enumerate(new.keys)]
        edit.adapter = EditAdapter(weights=new.adapter, sha256=new.adapter_sha256)
        try:
            with self.session() as s, s.begin():
                s.add(edit)
                s.flush()  # the edit row must exist before events reference it
                detail = {
                    "prompt": new.prompt,
                    "target": new.target,
                    "rephrases": list(new.rephrases),
                    "negatives": list(new.negatives),
                    "metadata": dict(new.metadata),
                    "steps": new.train_steps,
                    "loss": new.train_loss,
                    "seconds": new.train_seconds,
                    "supersedes": [{"edit_id": sup.older_id, "similarity": sup.similarity} for sup in supersedes],
                }
                s.add(Event(edit_id=new.id, kind=EventKind.CREATED, actor=new.created_by, at=now, detail=detail))
                for sup in supersedes:
                    s.add(
                        Event(
                            edit_id=sup.older_id,
                            kind=EventKind.SUPERSEDED,
                            actor=new.created_by,
                            at=now,
                            detail={"by": new.id, "similarity": sup.similarity},
                        )
                    )
                s.flush()
                return EditRecord.of(edit)
        except IntegrityError as exc:
            if new.idempotency_key is not None and self.find_by_idempotency_key(new.idempotency_key):
                raise IdempotencyKeyTaken(new.idempotency_key) from exc
            raise

    def set_negatives(
        self, edit_id: str, negatives: Sequence[str], keys: Sequence[KeyRow], actor: str, reason: str | None = None
    ) -> EditRecord:
        """Replace an edit's negatives and their keys (kinds "<format>:negative:<i>"), with a `negatives_set`
        event holding the old and new lists, in one transaction."""
        if any(":negative:" not in k.kind for k in keys):
            raise ValueError("set_negatives takes negative keys only")
        now = utcnow()
        with self.session() as s, s.begin():
            edit = s.scalars(select(Edit).where(Edit.id == edit_id).with_for_update()).first()
            if edit is None:
                raise EditNotFound(edit_id)
            before = list(edit.negatives or [])
            old = s.scalars(select(EditKey).where(EditKey.edit_id == edit_id).order_by(EditKey.position)).all()
            kept = [k for k in old if ":negative:" not in k.kind]
            for k in old:
                if ":negative:" in k.kind:
                    s.delete(k)
            s.flush()  # the old negative rows go before new ones may take their positions
            start = max((k.position for k in kept), default=-1) + 1
            for i, row in enumerate(keys):
                s.add(EditKey(edit_id=edit_id, position=start + i, kind=row.kind, dim=row.dim, vector=row.vector))
            edit.negatives = list(negatives)
            detail: dict[str, Any] = {"before": before, "after": list(negatives)}
            if reason:
                detail["reason"] = reason
            s.add(Event(edit_id=edit_id, kind=EventKind.NEGATIVES_SET, actor=actor, at=now, detail=detail))
            s.flush()
            return self._with_supersession(s, [EditRecord.of(edit)])[0]

    def revoke(self, edit_id: str, actor: str, reason: str | None = None) -> tuple[EditRecord, bool]:
        """Mark revoked + append a `revoked` event (with the operator's reason, if given). Returns (edit,
        changed); revoking twice is a no-op."""
        detail = {"reason": reason} if reason else {}
        return self._set_status(edit_id, actor, EditStatus.ACTIVE, EditStatus.REVOKED, EventKind.REVOKED, detail)

    def restore(self, edit_id: str, actor: str, reason: str | None = None) -> tuple[EditRecord, bool]:
        """Mark active + append a `restored` event (with the reason, if given). Returns (edit, changed)."""
        detail = {"reason": reason} if reason else {}
        return self._set_status(edit_id, actor, EditStatus.REVOKED, EditStatus.ACTIVE, EventKind.RESTORED, detail)

    def last_event(self, edit_id: str, kind: str) -> EventRecord | None:
        """The edit's newest event of this kind."""
        with self.session() as s:
            query = select(Event).where(Event.edit_id == edit_id, Event.kind == kind).order_by(Event.seq.desc())
            event = s.scalars(query.limit(1)).first()
            return EventRecord.of(event) if event else None

    def _set_status(
        self,
        edit_id: str,
        actor: str,
        old: EditStatus,
        new: EditStatus,
        kind: EventKind,
        detail: dict[str, Any] | None = None,
    ) -> tuple[EditRecord, bool]:
        now = utcnow()
        # revoked_at/by describe the current revocation; a restore clears them (the events keep the history).
        revoked = new == EditStatus.REVOKED
        values: dict[str, Any] = {
            "status": new,
            "revoked_at": now if revoked else None,
            "revoked_by": actor if revoked else None,
        }
        with self.session() as s, s.begin():
            # Conditional UPDATE: of two replicas racing, exactly one changes the row and logs the event.
            result = s.execute(update(Edit).where(Edit.id == edit_id, Edit.status == old).values(**values))
            changed = cast(CursorResult[Any], result).rowcount  # an UPDATE's result is a cursor result
            if changed:
                s.add(Event(edit_id=edit_id, kind=kind, actor=actor, at=now, detail=detail or {}))
            edit = s.scalars(select(Edit).where(Edit.id == edit_id).execution_options(populate_existing=True)).first()
            if edit is None:
                raise EditNotFound(edit_id)
            return self._with_supersession(s, [EditRecord.of(edit)])[0], bool(changed)

    # ---- reads ------------------------------------------------------------------------------------
    def get_edit(self, edit_id: str) -> EditRecord | None:
        with self.session() as s:
            edit = s.scalars(select(Edit).where(Edit.id == edit_id)).first()
            return self._with_supersession(s, [EditRecord.of(edit)])[0] if edit else None

    def find_by_idempotency_key(self, key: str) -> EditRecord | None:
        with self.session() as s:
            edit = s.scalars(select(Edit).where(Edit.idempotency_key == key)).first()
            return EditRecord.of(edit) if edit else None

    def list_edits(
        self,
        status: str | None = None,
        limit: int = 50,
        after: int | None = None,
        filters: EditFilters | None = None,
    ) -> Page[EditRecord]:
        """Oldest first by `seq`; `after` is the last seq of the previous page."""
        query = _keyset(select(Edit), Edit.seq, limit, after)
        if status is not None:
            query = query.where(Edit.status == status)
        f = filters or EditFilters()
        if f.actor is not None:
            query = query.where(Edit.created_by == f.actor)
        if f.text:
            query = query.where(
                or_(Edit.prompt.icontains(f.text, autoescape=True), Edit.target.icontains(f.text, autoescape=True))
            )
        for key, value in f.metadata.items():  # JSON path: json_extract on SQLite, ->> on PostgreSQL
            query = query.where(Edit.meta[key].as_string() == value)
        if f.created_from is not None:
            query = query.where(Edit.created_at >= f.created_from)
        if f.created_to is not None:
            query = query.where(Edit.created_at < f.created_to)
        with self.session() as s:
            rows = self._with_supersession(s, [EditRecord.of(e) for e in s.scalars(query)])
        return _page(rows, limit)

    def _with_supersession(self, s: Session, edits: list[EditRecord]) -> list[EditRecord]:
        """Each active edit with the newer active edit that now answers its question (`superseded` events whose
        superseding edit is still active; the newest such wins, as in the router)."""
        ids = [e.id for e in edits if e.status == EditStatus.ACTIVE]
        if not ids:
            return edits
        events = s.execute(
            select(Event.edit_id, Event.detail)
            .where(Event.edit_id.in_(ids), Event.kind == EventKind.SUPERSEDED)
            .order_by(Event.seq)
        ).all()
        newer = {str((detail or {}).get("by")) for _, detail in events}
        active = set(s.scalars(select(Edit.id).where(Edit.id.in_(newer), Edit.status == EditStatus.ACTIVE)))
        by: dict[str, str] = {}
        for edit_id, detail in events:  # oldest first: the last active superseder is the newest
            if (detail or {}).get("by") in active:
                by[edit_id] = str(detail["by"])
        return [replace(e, superseded_by=by[e.id]) if e.id in by else e for e in edits]

    def list_events(
        self,
        edit_id: str | None = None,
        limit: int = 100,
        after: int | None = None,
        kind: str | None = None,
        actor: str | None = None,
    ) -> Page[EventRecord]:
        """Oldest first; `after` is an event seq (replicas follow the log with it)."""
        query = _keyset(select(Event), Event.seq, limit, after)
        if edit_id is not None:
            query = query.where(Event.edit_id == edit_id)
        if kind is not None:
            query = query.where(Event.kind == kind)
        if actor is not None:
            query = query.where(Event.actor == actor)
        with self.session() as s:
            rows = [EventRecord.of(e) for e in s.scalars(query)]
        return _page(rows, limit)

    def count_active(self) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(Edit).where(Edit.status == EditStatus.ACTIVE)) or 0)

    def active_key_kinds(self) -> dict[str, int]:
        """key kind -> number of keys of that kind among active edits (startup preallocates from it)."""
        return self._active_keys_counted_by(EditKey.kind)

    def active_key_counts(self) -> dict[str, int]:
        """edit id -> number of key rows, for every active edit (readiness: the index must match this)."""
        return self._active_keys_counted_by(EditKey.edit_id)

    def _active_keys_counted_by(self, column: Any) -> dict[str, int]:
        query = (
            select(column, func.count(EditKey.id))
            .join(Edit, EditKey.edit_id == Edit.id)
            .where(Edit.status == EditStatus.ACTIVE)
            .group_by(column)
        )
        with self.session() as s:
            return {key: int(n) for key, n in s.execute(query)}

    def load_payload(self, edit_id: str) -> EditPayload:
        with self.session() as s:
            edit = s.scalars(select(Edit).where(Edit.id == edit_id)).first()
            if edit is None:
                raise EditNotFound(edit_id)
            return self._payload(s, edit)

    def active_payloads(self) -> Iterator[EditPayload]:
        """Every active edit with weights and keys, oldest first (startup rebuild), streamed.

        Two queries in one snapshot (REPEATABLE READ on PostgreSQL; a SQLite read transaction is one), so
        100,000 edits cost two result streams rather than three queries each."""
        edits = (
            select(*Edit.__table__.columns, EditAdapter.weights, EditAdapter.sha256)  # plain rows: no ORM objects
            .join(EditAdapter, EditAdapter.edit_id == Edit.id)
            .where(Edit.status == EditStatus.ACTIVE)
            .order_by(Edit.seq)
            .execution_options(yield_per=1_000)
        )
        keys = (
            select(EditKey.edit_id, EditKey.kind, EditKey.vector, EditKey.dim)
            .join(Edit, EditKey.edit_id == Edit.id)
            .where(Edit.status == EditStatus.ACTIVE)
            .order_by(Edit.seq, EditKey.position)
            .execution_options(yield_per=4_000)
        )
        with self.session() as s:
            if s.get_bind().dialect.name == "postgresql":
                s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            key_rows = iter(s.execute(keys))
            pending = next(key_rows, None)
            for row in s.execute(edits):
                edit = EditRecord.from_row(row._mapping)
                rows: list[KeyRow] = []
                while pending is not None and pending.edit_id == edit.id:
                    rows.append(KeyRow(kind=pending.kind, vector=bytes(pending.vector), dim=pending.dim))
                    pending = next(key_rows, None)
                yield EditPayload(edit, bytes(row.weights), row.sha256, rows)

    def last_event_seq(self) -> int:
        """The audit log's newest sequence number (0 when empty): where a replica starts following it."""
        with self.session() as s:
            return int(s.scalar(select(func.max(Event.seq))) or 0)

    def events_since(self, cursor: int, also: Collection[int] = ()) -> list[tuple[int, str]]:
        """(seq, edit id) of every event after `cursor`, plus those numbered in `also`, in log order.

        One query on the primary key: a replica polls it, and with nothing new it returns at once."""
        newer = Event.seq > cursor
        query = select(Event.seq, Event.edit_id).where(or_(newer, Event.seq.in_(list(also))) if also else newer)
        with self.session() as s:
            return [(int(seq), edit_id) for seq, edit_id in s.execute(query.order_by(Event.seq))]

    def negatives_of(self, edit_ids: Collection[str]) -> dict[str, list[str]]:
        """edit id -> its negatives, for those of `edit_ids` that exist."""
        if not edit_ids:
            return {}
        with self.session() as s:
            rows = s.execute(select(Edit.id, Edit.negatives).where(Edit.id.in_(list(edit_ids))))
            return {edit_id: list(negatives or []) for edit_id, negatives in rows}

    def statuses(self, edit_ids: Collection[str]) -> dict[str, str]:
        """edit id -> its current status, for those of `edit_ids` that exist."""
        with self.session() as s:
            rows = s.execute(select(Edit.id, Edit.status).where(Edit.id.in_(list(edit_ids))))
            return {edit_id: status for edit_id, status in rows}

    @staticmethod
    def _payload(s: Session, edit: Edit) -> EditPayload:
        adapter = s.get(EditAdapter, edit.id)
        keys = s.scalars(select(EditKey).where(EditKey.edit_id == edit.id).order_by(EditKey.position)).all()
        if adapter is None:
            raise EditNotFound(f"{edit.id} has no adapter row")
        return EditPayload(
            edit=EditRecord.of(edit),
            adapter=bytes(adapter.weights),
            adapter_sha256=adapter.sha256,
            keys=[KeyRow(kind=k.kind, vector=bytes(k.vector), dim=k.dim) for k in keys],
        )


def _keyset(query: Select[Row], seq: InstrumentedAttribute[int], limit: int, after: int | None) -> Select[Row]:
    """Keyset pagination: the rows after the cursor `after` in `seq` order, one more than a page so that _page
    knows whether another follows."""
    query = query.order_by(seq).limit(limit + 1)
    return query if after is None else query.where(seq > after)


def _page(rows: list[T], limit: int) -> Page[T]:
    has_more = len(rows) > limit
    rows = rows[:limit]
    last = getattr(rows[-1], "seq", None) if rows else None
    return Page(items=rows, has_more=has_more, last_seq=last if has_more else None)
