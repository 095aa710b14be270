"""Following the audit log by cursor: which edits changed since this process last looked.

Replicas that share one database keep their engines in step this way (EditService.sync)."""

from __future__ import annotations

import time

from storage.repository import Repository

# How long a skipped audit-log number is asked for again before it counts as burned.
GAP_PATIENCE_S = 60.0


class AuditLogFollower:
    """The log seq up to which every change has been applied here, and the numbers skipped on the way.

    Event numbers can become visible out of order on PostgreSQL (a transaction that drew seq 10 may commit
    after seq 11), so a number skipped on the way is asked for again on later polls until it shows up or
    GAP_PATIENCE_S passes (a rolled-back transaction burns its number for good)."""

    def __init__(self, cursor: int = 0) -> None:
        self.cursor = cursor
        self._gaps: dict[int, float] = {}  # event seq skipped below the cursor -> when first missed

    def poll(self, repo: Repository) -> list[str]:
        """Edits with new events, each once, in the order first touched. Nothing new: one indexed query."""
        events = repo.events_since(self.cursor, self._gaps)
        if not events:
            return []
        now = time.monotonic()
        seen = {seq for seq, _ in events}
        newest = max(seen)
        for seq in range(self.cursor + 1, newest):
            if seq not in seen:
                self._gaps.setdefault(seq, now)
        self._gaps = {seq: t for seq, t in self._gaps.items() if seq not in seen and now - t < GAP_PATIENCE_S}
        self.cursor = max(self.cursor, newest)
        return list(dict.fromkeys(edit_id for _, edit_id in events))
