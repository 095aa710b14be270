"""Alembic environment. Runs from an installed package: storage.migrate builds the Config in code and
hands over an open connection; the `alembic` CLI works too via -x url=... or SOLA_DATABASE_URL."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection, text

from storage.db import make_db_engine
from storage.models import Base

config = context.config
target_metadata = Base.metadata
# Several replicas may start at once against one PostgreSQL: serialise their upgrades on this lock.
PG_MIGRATION_LOCK = 0x50_4C_41  # "SOLA"-ish constant, any fixed bigint works


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite needs table rebuilds for ALTERs
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_MIGRATION_LOCK})
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("SOLA_DATABASE_URL")
    if not url:
        raise SystemExit("set SOLA_DATABASE_URL or pass -x url=... to run migrations from the alembic CLI")
    engine = make_db_engine(url)
    with engine.connect() as conn:
        _configure(conn)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run them against a database")
run_migrations_online()
