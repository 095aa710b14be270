"""The values an edit's status and an audit-log event's kind take: the same in the API's JSON, the client and
the database's columns (storage/models.py checks them there)."""

from __future__ import annotations

from enum import StrEnum


class EditStatus(StrEnum):
    """An edit is served (active) or not (revoked); revoking and restoring switch between the two."""

    ACTIVE = "active"
    REVOKED = "revoked"


class EventKind(StrEnum):
    """What an audit-log event records (the migrations refuse any other value: 0002, 0003)."""

    CREATED = "created"
    REVOKED = "revoked"
    RESTORED = "restored"
    SUPERSEDED = "superseded"
    NEGATIVES_SET = "negatives_set"  # the questions an edit must not answer were set (0003)
