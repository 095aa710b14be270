"""Initial schema: edits, their keys and adapters, and the append-only audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Self-contained on purpose: a migration must not change when storage/models.py does later.
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
UTC_TS = sa.DateTime(timezone=True)

PG_APPEND_ONLY = """
CREATE FUNCTION sola_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only (% refused)', TG_OP;
END;
$$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION sola_events_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION sola_events_append_only();
"""
SQLITE_APPEND_ONLY = [
    "CREATE TRIGGER events_no_update BEFORE UPDATE ON events "
    "BEGIN SELECT RAISE(ABORT, 'events are append-only (UPDATE refused)'); END",
    "CREATE TRIGGER events_no_delete BEFORE DELETE ON events "
    "BEGIN SELECT RAISE(ABORT, 'events are append-only (DELETE refused)'); END",
]


def upgrade() -> None:
    op.create_table(
        "edits",
        sa.Column("seq", SEQ, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("rephrases", JSON, nullable=False),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("revoked_at", UTC_TS, nullable=True),
        sa.Column("revoked_by", sa.String(length=200), nullable=True),
        sa.Column("base_model", sa.String(length=200), nullable=False),
        sa.Column("base_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("layer", sa.Integer(), nullable=False),
        sa.Column("train_steps", sa.Integer(), nullable=False),
        sa.Column("train_loss", sa.Float(), nullable=False),
        sa.Column("train_seconds", sa.Float(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("seq", name="pk_edits"),
        sa.UniqueConstraint("id", name="uq_edits_id"),
        sa.UniqueConstraint("idempotency_key", name="uq_edits_idempotency_key"),
    )
    op.create_index("ix_edits_status_seq", "edits", ["status", "seq"])

    op.create_table(
        "edit_adapters",
        sa.Column("edit_id", sa.String(length=40), nullable=False),
        sa.Column("weights", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["edit_id"], ["edits.id"], name="fk_edit_adapters_edit_id_edits", ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("edit_id", name="pk_edit_adapters"),
    )

    op.create_table(
        "edit_keys",
        sa.Column("id", SEQ, autoincrement=True, nullable=False),
        sa.Column("edit_id", sa.String(length=40), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["edit_id"], ["edits.id"], name="fk_edit_keys_edit_id_edits", ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name="pk_edit_keys"),
        sa.UniqueConstraint("edit_id", "position", name="uq_edit_keys_edit_id_position"),
    )
    op.create_index("ix_edit_keys_edit_id", "edit_keys", ["edit_id"])

    op.create_table(
        "events",
        sa.Column("seq", SEQ, autoincrement=True, nullable=False),
        sa.Column("edit_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("at", UTC_TS, nullable=False),
        sa.Column("detail", JSON, nullable=False),
        sa.ForeignKeyConstraint(["edit_id"], ["edits.id"], name="fk_events_edit_id_edits", ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("seq", name="pk_events"),
    )
    op.create_index("ix_events_edit_id", "events", ["edit_id"])

    # The audit log is append-only in the database itself, not just by convention in the code.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_APPEND_ONLY)
    else:
        for statement in SQLITE_APPEND_ONLY:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS events_no_truncate ON events")
        op.execute("DROP TRIGGER IF EXISTS events_append_only ON events")
        op.execute("DROP FUNCTION IF EXISTS sola_events_append_only()")
    op.drop_index("ix_events_edit_id", table_name="events")
    op.drop_table("events")
    op.drop_index("ix_edit_keys_edit_id", table_name="edit_keys")
    op.drop_table("edit_keys")
    op.drop_table("edit_adapters")
    op.drop_index("ix_edits_status_seq", table_name="edits")
    op.drop_table("edits")
