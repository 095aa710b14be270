"""Which stored edits this process has put into the engine, and which it refused and why.

Every stored edit is checked against the running model before the engine sees it: its adapter bytes
against their sha256, its base model, layer and key width. A refused edit stays out of the index (and is
reported by /readyz) until it is revoked. Runs on the model worker thread only."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from app.bulk_load import batches
from app.metrics import Metrics
from storage.repository import EditPayload, rows_to_keys

if TYPE_CHECKING:  # torch-heavy: loaded with the model, not when the app is imported
    import numpy as np

    from editors.engine import EditingEngine

log = logging.getLogger(__name__)
ACTIVATION_BATCH = 1_000  # edits activated together at startup (one tokenizer call, one index insert)


class ActiveEdits:
    def __init__(self, engine: EditingEngine, metrics: Metrics) -> None:
        self.engine = engine
        self.metrics = metrics
        self.active: set[str] = set()  # edit ids this process put into the engine
        self.refused: dict[str, str] = {}  # edit id -> why it was refused (never used while listed)
        self.negatives: dict[str, list[str]] = {}  # edit id -> the negatives the engine holds for it

    def __contains__(self, edit_id: str) -> bool:
        """Known here: active, or refused (and so not worth loading again until its status changes)."""
        return edit_id in self.active or edit_id in self.refused

    def verify(self, payload: EditPayload) -> str | None:
        """Why this stored edit cannot run on this server, or None."""
        edit, host = payload.edit, self.engine.host
        if hashlib.sha256(payload.adapter).hexdigest() != payload.adapter_sha256:
            return "adapter bytes do not match their stored sha256 (corrupted or tampered)"
        if edit.base_fingerprint != host.fingerprint:
            return (
                f"trained on base model {edit.base_model} ({edit.base_fingerprint[:12]}), "
                f"this server runs {host.name} ({host.fingerprint[:12]})"
            )
        if edit.layer != self.engine.layer:
            return f"trained for layer {edit.layer}, the engine edits layer {self.engine.layer}"
        if not payload.keys or any(k.dim != host.hidden_size for k in payload.keys):
            return f"routing keys missing or not of width {host.hidden_size}"
        return None

    def activate(self, payload: EditPayload) -> bool:
        return self.activate_many([payload]) == 1

    def activate_many(self, payloads: Iterable[EditPayload]) -> int:
        """Verify and activate edits, ACTIVATION_BATCH at a time (engine.activate_many); refuse the others.

        Returns how many became active."""
        from editors.engine import Activation

        active = 0
        for batch in batches(payloads, ACTIVATION_BATCH):
            items = []
            for payload in batch:
                problem = self.verify(payload)
                if problem is not None:
                    self._refuse(payload.edit.id, problem)
                    continue
                edit = payload.edit
                keys, kinds = rows_to_keys(payload.keys), [k.kind for k in payload.keys]
                texts = (edit.prompt, edit.target, edit.rephrases)
                items.append(
                    Activation(edit.id, payload.adapter, keys, kinds, *texts, seq=edit.seq, negatives=edit.negatives)
                )
            refused = self.engine.activate_many(items)  # EditRefused: keys or adapter the engine cannot place
            for item in items:
                if item.edit_id in refused:
                    self._refuse(item.edit_id, str(refused[item.edit_id]))
                else:
                    self.active.add(item.edit_id)
                    self.refused.pop(item.edit_id, None)
                    if item.negatives:
                        self.negatives[item.edit_id] = list(item.negatives)
                    active += 1
        return active

    def revoke(self, edit_id: str) -> None:
        self.engine.revoke(edit_id)
        self.active.discard(edit_id)
        self.refused.pop(edit_id, None)
        self.negatives.pop(edit_id, None)

    def set_negatives(self, edit_id: str, negatives: list[str], keys: np.ndarray | None, kinds: list[str]) -> None:
        """Replace an active edit's negatives (keys [n, D] and kinds from EditingEngine.negative_keys)."""
        self.engine.set_negatives(edit_id, negatives, keys, kinds)
        if negatives:
            self.negatives[edit_id] = list(negatives)
        else:
            self.negatives.pop(edit_id, None)

    def refresh_negatives(self, payload: EditPayload) -> None:
        """Take an active edit's negatives as stored (set by another replica)."""
        rows = [k for k in payload.keys if ":negative:" in k.kind]
        keys = rows_to_keys(rows) if rows else None
        self.set_negatives(payload.edit.id, payload.edit.negatives, keys, [k.kind for k in rows])

    def publish(self) -> None:
        self.metrics.edits_active.set(len(self.active))
        self.metrics.edits_refused.set(len(self.refused))

    def _refuse(self, edit_id: str, problem: str) -> None:
        self.refused[edit_id] = problem
        log.error("REFUSED edit %s: %s; it stays out of the index until revoked", edit_id, problem)
