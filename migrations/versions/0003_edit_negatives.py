"""Negatives: questions an edit must not answer, and the event that records changing them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Self-contained on purpose: the values as of this revision, not storage/models.py's.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
KINDS_BEFORE = ("created", "revoked", "restored", "superseded")
KINDS_AFTER = (*KINDS_BEFORE, "negatives_set")
NAME = "ck_events_kind"


def _allowed(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _event_kinds(values: tuple[str, ...]) -> None:
    """Replace the check on events.kind (a CHECK on PostgreSQL, triggers on SQLite: migration 0002)."""
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(NAME, "events", type_="check")
        op.create_check_constraint(NAME, "events", f"kind IN ({_allowed(values)})")
        return
    for event in ("INSERT", "UPDATE"):
        op.execute(f"DROP TRIGGER IF EXISTS {NAME}_{event.lower()}")
        op.execute(
            f"CREATE TRIGGER {NAME}_{event.lower()} BEFORE {event} ON events "
            f"WHEN NEW.kind NOT IN ({_allowed(values)}) "
            f"BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: {NAME}'); END"
        )


def upgrade() -> None:
    # A plain ADD COLUMN, not a batch (a batch rebuilds the table on SQLite, dropping migration 0002's triggers)
    op.add_column("edits", sa.Column("negatives", JSON, nullable=False, server_default=sa.text("'[]'")))
    _event_kinds(KINDS_AFTER)


def downgrade() -> None:
    _event_kinds(KINDS_BEFORE)
    op.drop_column("edits", "negatives")  # SQLite 3.35+ drops a column in place
