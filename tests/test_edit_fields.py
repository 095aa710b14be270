"""The edit's fields are declared by the edits table (storage/models.py); the other shapes of an edit derive
from it or are checked here, so adding a column without carrying it through fails a test."""

from __future__ import annotations

from dataclasses import fields

from storage.models import Edit
from storage.repository import EDIT_COLUMNS, EditRecord, NewEdit
from wire.schemas import EditOut

ASSIGNED_BY_THE_DATABASE = {"seq", "status", "created_at", "revoked_at", "revoked_by"}
NOT_COLUMNS_OF_NEW_EDIT = {"adapter", "adapter_sha256", "keys"}  # their own tables
NOT_SHOWN_BY_THE_API = {"seq", "idempotency_key", "request_hash", "train_steps", "train_loss", "train_seconds"}


def test_the_edits_table_names_every_column_once() -> None:
    assert len(EDIT_COLUMNS) == len(set(EDIT_COLUMNS)) and "metadata" in EDIT_COLUMNS


def test_a_stored_edit_record_is_the_tables_columns() -> None:
    record = {f.name for f in fields(EditRecord)} - {"superseded_by"}  # superseded_by: read from the audit log
    assert record == set(EDIT_COLUMNS)


def test_a_new_edit_carries_every_column_the_database_does_not_assign() -> None:
    new = {f.name for f in fields(NewEdit)} - NOT_COLUMNS_OF_NEW_EDIT
    assert new == set(EDIT_COLUMNS) - ASSIGNED_BY_THE_DATABASE


def test_the_api_shows_the_record_less_its_internals_with_training_as_one_object() -> None:
    shown = set(EditOut.model_fields) - {"train", "superseded_by"}
    assert shown == set(EDIT_COLUMNS) - NOT_SHOWN_BY_THE_API
    assert set(EditOut.model_fields["train"].annotation.model_fields) == {"steps", "loss", "seconds"}  # type: ignore[union-attr]


def test_an_orm_row_and_its_record_agree_column_for_column() -> None:
    row = Edit(id="e1", prompt="p", target="t", rephrases=["r"], negatives=[], meta={"k": "v"}, status="active")
    record = EditRecord.from_row(row.columns())
    assert record.metadata == {"k": "v"} and record.rephrases == ["r"] and record.id == "e1"
    assert Edit.from_columns(row.columns()).meta == {"k": "v"}
