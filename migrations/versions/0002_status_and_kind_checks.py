"""Only known edit statuses and event kinds reach the database.

PostgreSQL gets CHECK constraints. SQLite cannot add a constraint to an existing table without rebuilding
it (and `edits` is referenced under RESTRICT foreign keys, `events` guarded by append-only triggers), so
it gets BEFORE INSERT / UPDATE triggers that refuse the same values.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Self-contained on purpose: the values as of this revision, not storage/models.py's.
CHECKS = {
    # (table, constraint name, column): allowed values
    ("edits", "ck_edits_status", "status"): ("active", "revoked"),
    ("events", "ck_events_kind", "kind"): ("created", "revoked", "restored", "superseded"),
}


def _allowed(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for (table, name, column), values in CHECKS.items():
        if postgres:
            op.create_check_constraint(name, table, f"{column} IN ({_allowed(values)})")
            continue
        for event in ("INSERT", "UPDATE"):
            op.execute(
                f"CREATE TRIGGER {name}_{event.lower()} BEFORE {event} ON {table} "
                f"WHEN NEW.{column} NOT IN ({_allowed(values)}) "
                f"BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: {name}'); END"
            )


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table, name, _ in CHECKS:
        if postgres:
            op.drop_constraint(name, table, type_="check")
        else:
            for event in ("insert", "update"):
                op.execute(f"DROP TRIGGER IF EXISTS {name}_{event}")
