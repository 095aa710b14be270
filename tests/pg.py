"""PostgreSQL test helpers: each test gets a fresh schema on the shared server, dropped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text

PG_BASE_URL = os.environ.get("SOLA_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def pg_reachable() -> bool:
    try:
        engine = create_engine(PG_BASE_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


PG_UP = pg_reachable()
# In CI PostgreSQL must be there: the tests then run (and fail loudly) instead of being skipped.
requires_pg = pytest.mark.skipif(
    not PG_UP and not os.environ.get("CI"), reason=f"PostgreSQL unreachable at {PG_BASE_URL} (CI unset)"
)


@contextmanager
def pg_schema_url() -> Iterator[str]:
    """A URL whose search_path is a brand-new schema, so every test sees empty tables."""
    schema = f"sola_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_BASE_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_BASE_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
