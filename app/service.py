"""The service object: orchestrates one edit, revoke, restore or query across engine and storage.

Order of operations is the durability story: train (pure) -> one DB transaction -> only then touch the
engine. Every engine call runs on the single model worker thread; `_state_lock` additionally makes
"DB committed + engine updated" atomic for readiness checks taken from other threads.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import queue
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from app.bulk_load import batches, release_freed_memory
from app.errors import ApiError
from app.metrics import Metrics
from app.schemas import EditCreate, GenerateRequest
from app.settings import Settings
from app.worker import ModelWorker
from editors.types import Generation, TrainedEdit  # plain dataclasses: no torch at import
from storage.models import EditStatus
from storage.repository import (
    EditNotFound,
    EditPayload,
    EditRecord,
    IdempotencyKeyTaken,
    KeyRow,
    NewEdit,
    Repository,
    Supersession,
)

log = logging.getLogger(__name__)
# How long a skipped audit-log number is asked for again before it counts as burned (EditService.sync).
GAP_PATIENCE_S = 60.0
ACTIVATION_BATCH = 1_000  # edits activated together at startup (one tokenizer call, one index insert)


def new_edit_id() -> str:
    return f"ed_{uuid.uuid4().hex}"


def request_hash(body: EditCreate) -> str:
    """Canonical hash of an edit request: an idempotency key replays only the very same request."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def keys_to_rows(keys: np.ndarray, kinds: list[str]) -> list[KeyRow]:
    keys = np.ascontiguousarray(keys, dtype="<f4")
    return [
        KeyRow(kind=kind, vector=row.tobytes(), dim=int(keys.shape[1])) for kind, row in zip(kinds, keys, strict=True)
    ]


def rows_to_keys(rows: list[KeyRow]) -> np.ndarray:
    dim = rows[0].dim
    return np.frombuffer(b"".join(r.vector for r in rows), dtype="<f4").reshape(len(rows), dim).astype(np.float32)


def engine_config(settings: Settings) -> Any:
    """EngineConfig with the knobs set in the environment; unset ones keep the measured defaults."""
    from editors.types import EngineConfig

    knobs: dict[str, Any] = {
        "layer": settings.layer,
        "threshold": settings.threshold,
        "rank": settings.rank,
        "max_steps": settings.max_train_steps,
        "max_train_seconds": settings.max_train_seconds,
        "bank_dtype": settings.bank_dtype,  # "model" is resolved below
    }
    config = replace(EngineConfig(), **{k: v for k, v in knobs.items() if v is not None})
    return replace(config, bank_dtype=None) if config.bank_dtype == "model" else config


@dataclass
class _GenerateJob:
    request: GenerateRequest
    future: asyncio.Future[Generation]
    loop: asyncio.AbstractEventLoop


def _resolve(future: asyncio.Future[Any], result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # the client went away and its await was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class EditService:
    def __init__(self, settings: Settings, repo: Repository, worker: ModelWorker, metrics: Metrics) -> None:
        self.settings = settings
        self.repo = repo
        self.worker = worker
        self.metrics = metrics
        self.host: Any = None  # editors.model_host.ModelHost once loaded (imported lazily: torch is heavy)
        self.engine: Any = None  # editors.engine.EditingEngine
        self.state = "starting"  # starting -> ready | failed
        self.startup_error: str | None = None
        self.refused: dict[str, str] = {}  # edit id -> why it was refused (never used while listed)
        self._active: set[str] = set()  # edit ids this process put into the engine
        self._cursor = 0  # audit-log seq up to which this process has applied every change (sync)
        self._gaps: dict[int, float] = {}  # event seqs skipped below the cursor -> when first missed
        self._pending: queue.SimpleQueue[_GenerateJob] = queue.SimpleQueue()
        self._state_lock = threading.Lock()

    # ---- startup and replica sync (worker thread) --------------------------------------------------
    def load(self) -> None:
        """Load the base model and rebuild index + bank from the active edits in the database."""
        from editors.engine import EditingEngine
        from editors.model_host import ModelHost

        s = self.settings
        if s.torch_threads:
            import torch

            torch.set_num_threads(s.torch_threads)
        host = ModelHost.load(s.model, s.data_dir, device=s.device, cache_dir=s.resolved_model_cache_dir)
        engine = EditingEngine(host, engine_config(s))
        with self._state_lock:
            self.host, self.engine = host, engine
            # The cursor is read first: an edit changed while loading is seen again by sync(), never missed.
            self._cursor = self.repo.last_event_seq()
            engine.reserve(self.repo.count_active(), self.repo.active_key_kinds())
            loaded = self._activate_payloads(self.repo.active_payloads())
            self._publish()
        release_freed_memory()
        self.state = "ready"
        log.info(
            "model %s loaded (fingerprint %s); %d active edits loaded, %d refused",
            host.name,
            host.fingerprint[:12],
            loaded,
            len(self.refused),
        )

    def sync(self) -> None:
        """Follow the audit log from the cursor: every edit with new events gets its current status here.

        With nothing new this is one primary-key query, however many edits exist. Event numbers can become
        visible out of order on PostgreSQL (a transaction that drew seq 10 may commit after seq 11), so a
        number skipped on the way is asked for again on later polls until it shows up or GAP_PATIENCE_S
        passes (a rolled-back transaction burns its number for good)."""
        if self.engine is None:
            return
        events = self.repo.events_since(self._cursor, self._gaps)
        if not events:
            return
        now = time.monotonic()
        seen = {seq for seq, _ in events}
        newest = max(seen)
        for seq in range(self._cursor + 1, newest):
            if seq not in seen:
                self._gaps.setdefault(seq, now)
        self._gaps = {seq: t for seq, t in self._gaps.items() if seq not in seen and now - t < GAP_PATIENCE_S}
        self._cursor = max(self._cursor, newest)
        touched = list(dict.fromkeys(edit_id for _, edit_id in events))  # first-touched order, once each
        statuses = self.repo.statuses(touched)
        for edit_id in touched:
            if statuses.get(edit_id) == EditStatus.ACTIVE:
                if edit_id not in self._active and edit_id not in self.refused:
                    self._load_and_activate(edit_id)
            elif edit_id in self._active or edit_id in self.refused:  # revoked here or by another replica
                with self._state_lock:
                    self._revoke_in_engine(edit_id)
        self._publish()

    # ---- engine bookkeeping (worker thread) -------------------------------------------------------
    def _load_and_activate(self, edit_id: str) -> None:
        """Activate an edit stored by another replica, if it is still active in the database."""
        try:
            payload = self.repo.load_payload(edit_id)
        except EditNotFound:
            return
        with self._state_lock:
            if payload.edit.status == EditStatus.ACTIVE and edit_id not in self._active:
                self._activate_payload(payload)

    def _verify(self, payload: EditPayload) -> str | None:
        edit = payload.edit
        if hashlib.sha256(payload.adapter).hexdigest() != payload.adapter_sha256:
            return "adapter bytes do not match their stored sha256 (corrupted or tampered)"
        if edit.base_fingerprint != self.host.fingerprint:
            return (
                f"trained on base model {edit.base_model} ({edit.base_fingerprint[:12]}), "
                f"this server runs {self.host.name} ({self.host.fingerprint[:12]})"
            )
        if edit.layer != self.engine.config.layer:
            return f"trained for layer {edit.layer}, the engine edits layer {self.engine.config.layer}"
        if not payload.keys or any(k.dim != self.host.hidden_size for k in payload.keys):
            return f"routing keys missing or not of width {self.host.hidden_size}"
        return None

    def _activate_payload(self, payload: EditPayload) -> bool:
        return self._activate_payloads([payload]) == 1

    def _activate_payloads(self, payloads: Iterable[EditPayload]) -> int:
        """Verify and activate edits, ACTIVATION_BATCH at a time (engine.activate_many); refuse the others.

        Returns how many are active afterwards."""
        from editors.engine import Activation

        active = 0
        for batch in batches(payloads, ACTIVATION_BATCH):
            items = []
            for payload in batch:
                problem = self._verify(payload)
                if problem is not None:
                    self._refuse(payload.edit.id, problem)
                    continue
                edit = payload.edit
                keys, kinds = rows_to_keys(payload.keys), [k.kind for k in payload.keys]
                texts = (edit.prompt, edit.target, edit.rephrases)
                items.append(Activation(edit.id, payload.adapter, keys, kinds, *texts, seq=edit.seq))
            refused = self.engine.activate_many(items)  # AdapterMismatch, or keys the engine cannot place
            for item in items:
                if item.edit_id in refused:
                    self._refuse(item.edit_id, str(refused[item.edit_id]))
                else:
                    self._active.add(item.edit_id)
                    self.refused.pop(item.edit_id, None)
                    active += 1
        return active

    def _refuse(self, edit_id: str, problem: str) -> None:
        self.refused[edit_id] = problem
        log.error("REFUSED edit %s: %s; it stays out of the index until revoked", edit_id, problem)

    def _revoke_in_engine(self, edit_id: str) -> None:
        if self.engine is not None:
            self.engine.revoke(edit_id)
        self._active.discard(edit_id)
        self.refused.pop(edit_id, None)

    def _publish(self) -> None:
        self.metrics.edits_active.set(len(self._active))
        self.metrics.edits_refused.set(len(self.refused))

    def _require_model(self) -> None:
        if self.engine is None:
            detail = self.startup_error or "the model is still loading"
            raise ApiError(503, "not_ready", detail, {"Retry-After": "5"})

    # ---- edits --------------------------------------------------------------------------------------
    async def create_edit(self, body: EditCreate, actor: str, idempotency_key: str | None) -> tuple[EditRecord, bool]:
        """Returns (edit, replayed). Runs whole on the worker: edits are serialised with everything else."""
        self._require_model()
        return await self.worker.run(self._create_edit, body, actor, idempotency_key, request_hash(body))

    def _create_edit(
        self, body: EditCreate, actor: str, idempotency_key: str | None, req_hash: str
    ) -> tuple[EditRecord, bool]:
        if idempotency_key is not None and (existing := self.repo.find_by_idempotency_key(idempotency_key)):
            return self._replay(existing, req_hash), True
        self._check_edit_fits(body)
        from editors.training import TrainingTimeout  # editors (torch) load with the model, not at import

        try:
            trained = self.engine.train_edit(body.prompt, body.target, body.rephrases)
        except TrainingTimeout as exc:
            raise ApiError(
                422,
                "training_timeout",
                f"{exc}; nothing was stored. Shorten the prompt, target or rephrases, or raise SOLA_MAX_TRAIN_SECONDS",
            ) from None
        self.metrics.train_seconds.observe(trained.seconds)
        superseded = self._supersessions(trained, body.prompt)  # the new edit is not in the index yet
        new = NewEdit(
            id=new_edit_id(),
            prompt=body.prompt,
            target=body.target,
            rephrases=body.rephrases,
            metadata=body.metadata,
            created_by=actor,
            base_model=self.host.name,
            base_fingerprint=self.host.fingerprint,
            layer=self.engine.config.layer,
            train_steps=int(trained.steps),
            train_loss=float(trained.loss),
            train_seconds=float(trained.seconds),
            adapter=trained.adapter,
            adapter_sha256=trained.adapter_sha256,
            keys=keys_to_rows(trained.keys, trained.key_kinds),
            idempotency_key=idempotency_key,
            request_hash=req_hash if idempotency_key else None,
        )
        with self._state_lock:
            record: EditRecord | None
            try:
                record = created = self.repo.create_edit(new, superseded)
            except IdempotencyKeyTaken:
                record = None
            else:  # committed: from here on the edit exists. Only now may the engine change.
                payload = EditPayload(created, new.adapter, new.adapter_sha256, new.keys)
                activated = self._activate_payload(payload)
                self._publish()
        if record is None:  # another replica committed this key while we trained: theirs is the edit
            existing = self.repo.find_by_idempotency_key(idempotency_key or "")
            assert existing is not None
            return self._replay(existing, req_hash), True
        if not activated:
            raise ApiError(
                500,
                "activation_failed",
                f"edit {record.id} was stored but refused: {self.refused.get(record.id)}",
            )
        log.info("edit %s created by %s (%d steps, %.2fs)", record.id, actor, trained.steps, trained.seconds)
        return record, False

    def _replay(self, existing: EditRecord, req_hash: str) -> EditRecord:
        """The edit an Idempotency-Key already made. Made by another replica, it is loaded here at once, so
        the client that was told "this edit exists" is answered through it by this replica too."""
        if existing.request_hash != req_hash:
            raise ApiError(
                409,
                "idempotency_key_reused",
                "this Idempotency-Key was already used with a different request body",
            )
        if existing.status == EditStatus.ACTIVE and existing.id not in self._active and existing.id not in self.refused:
            self._load_and_activate(existing.id)
            self._publish()
        return existing

    def _check_edit_fits(self, body: EditCreate) -> None:
        chat = bool(self.host.has_chat_template)
        target_tokens = len(self.host.encode(" " + body.target)) + 2  # + end-of-turn marker
        for text in [body.prompt, *body.rephrases]:
            total = self.host.count_tokens(text, chat) + target_tokens
            if total > self.host.max_context:
                raise ApiError(
                    413,
                    "prompt_too_long",
                    f"prompt + target take {total} tokens; the model's context is {self.host.max_context}",
                )

    def _supersessions(self, trained: TrainedEdit, prompt: str) -> list[Supersession]:
        """The active edit answering this very prompt now, if the router scores it (near-)identical to the new
        edit's (same content and every subject word): the new edit takes over (newest wins ties); the older
        one answers again if the newer is revoked. Read from the keys training made (no forward pass)."""
        best: dict[str, float] = {}
        for route in self.engine.prompt_routes(trained, prompt):
            edit_id, similarity = route.edit_id, route.similarity
            if edit_id is not None and similarity is not None and similarity >= self.settings.supersede_similarity:
                best[edit_id] = max(float(similarity), best.get(edit_id, -1.0))
        return [Supersession(older_id=k, similarity=round(v, 6)) for k, v in best.items()]

    async def revoke(self, edit_id: str, actor: str) -> EditRecord:
        return await self.worker.run(self._revoke, edit_id, actor)

    def _revoke(self, edit_id: str, actor: str) -> EditRecord:
        with self._state_lock:
            record, changed = self._or_404(self.repo.revoke, edit_id, actor)
            self._revoke_in_engine(edit_id)  # also on a repeat: heals an index that missed an earlier revoke
            self._publish()
        if changed:
            log.info("edit %s revoked by %s", edit_id, actor)
        return record

    async def restore(self, edit_id: str, actor: str) -> EditRecord:
        self._require_model()
        return await self.worker.run(self._restore, edit_id, actor)

    def _restore(self, edit_id: str, actor: str) -> EditRecord:
        payload = self._or_404(self.repo.load_payload, edit_id)
        problem = self._verify(payload)
        if problem is not None:  # checked before commit: a restore never activates a bad adapter
            raise ApiError(409, "adapter_mismatch", f"edit {edit_id} cannot be restored: {problem}")
        with self._state_lock:
            record, changed = self._or_404(self.repo.restore, edit_id, actor)
            activated = edit_id in self._active or self._activate_payload(replace(payload, edit=record))
            self._publish()
        if not activated:
            raise ApiError(
                409, "adapter_mismatch", f"edit {edit_id} refused by the engine: {self.refused.get(edit_id)}"
            )
        if changed:
            log.info("edit %s restored by %s", edit_id, actor)
        return record

    @staticmethod
    def _or_404(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except EditNotFound:
            raise ApiError(404, "not_found", f"no edit with id {args[0]!r}") from None

    # ---- generation: requests arriving together are decoded as one batch --------------------------
    async def generate(self, request: GenerateRequest) -> Generation:
        self._require_model()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Generation] = loop.create_future()
        self._pending.put(_GenerateJob(request, future, loop))
        try:
            self.worker.submit(self._drain_generate)  # one drain per job: none is ever left waiting
        except RuntimeError as exc:  # the worker is shutting down
            raise ApiError(503, "shutting_down", "the server is shutting down") from exc
        return await future

    def _drain_generate(self) -> None:
        jobs: list[_GenerateJob] = []
        while len(jobs) < self.settings.max_batch_size:
            try:
                jobs.append(self._pending.get_nowait())
            except queue.Empty:
                break
        try:
            self._answer(jobs)
        except BaseException as exc:  # a bug here must not leave a client waiting forever
            log.exception("generation job failed for %d requests", len(jobs))
            self.metrics.generate_failures.inc()
            for job in jobs:
                job.loop.call_soon_threadsafe(_resolve, job.future, None, exc)
            if not isinstance(exc, Exception):
                raise

    def _answer(self, jobs: list[_GenerateJob]) -> None:
        """Decode `jobs` in batches of one format and length; every future gets a result or an error."""
        groups: dict[tuple[bool, int], list[_GenerateJob]] = defaultdict(list)
        for job in jobs:
            if job.future.cancelled():
                continue
            error = self._check_prompt_fits(job.request)
            if error is not None:
                job.loop.call_soon_threadsafe(_resolve, job.future, None, error)
            else:
                groups[(job.request.chat, job.request.max_new_tokens)].append(job)
        for (chat, max_new_tokens), group in groups.items():
            self.metrics.batch_size.observe(len(group))
            try:
                outs = self.engine.generate([j.request.prompt for j in group], max_new_tokens=max_new_tokens, chat=chat)
            except Exception as exc:
                log.exception("generation failed for a batch of %d", len(group))
                self.metrics.generate_failures.inc()
                for job in group:
                    job.loop.call_soon_threadsafe(_resolve, job.future, None, exc)
                continue
            for job, out in zip(group, outs, strict=True):
                job.loop.call_soon_threadsafe(_resolve, job.future, out)

    def _check_prompt_fits(self, request: GenerateRequest) -> ApiError | None:
        try:
            n = self.host.count_tokens(request.prompt, request.chat)
        except ValueError as exc:  # e.g. chat=true on a model without a chat template
            return ApiError(422, "validation_error", str(exc))
        except Exception:  # the tokenizer refused this text: fail this row, answer the others
            log.exception("could not tokenize a prompt")
            self.metrics.generate_failures.inc()
            return ApiError(422, "validation_error", "prompt: the tokenizer cannot encode this text")
        if n + request.max_new_tokens > self.host.max_context:
            return ApiError(
                413,
                "prompt_too_long",
                f"prompt ({n} tokens) + max_new_tokens ({request.max_new_tokens}) exceed the model's context "
                f"of {self.host.max_context} tokens",
            )
        return None

    # ---- readiness ---------------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready = model loaded, database answers, index holds exactly the active edits' keys."""
        detail: dict[str, Any] = {"model": self.state}
        if self.startup_error:
            detail["startup_error"] = self.startup_error
        # The lock makes "database committed + engine updated" one step for this check. It is held only
        # briefly after training, but for a whole rebuild at startup: never let a probe hang on it.
        if not self._state_lock.acquire(timeout=2.0):
            detail["index"] = "busy: the model worker is applying changes"
            return False, detail
        try:
            try:
                counts: dict[str, int] | None = self.repo.active_key_counts()
                detail["database"] = "ok"
            except Exception as exc:
                detail["database"] = f"error: {type(exc).__name__}: {exc}"[:500]
                counts = None
            engine_ids = set(self.engine.active_edit_ids()) if self.engine is not None else set()
            engine_keys = int(self.engine.num_keys()) if self.engine is not None else 0
            refused = dict(self.refused)
        finally:
            self._state_lock.release()
        index_ok = False
        if counts is not None:
            expected_keys = sum(counts.values())
            index_ok = engine_ids == set(counts) and engine_keys == expected_keys
            detail["index"] = {
                "active_edits": len(counts),
                "indexed_edits": len(engine_ids),
                "expected_keys": expected_keys,
                "indexed_keys": engine_keys,
                "missing": sorted(set(counts) - engine_ids)[:50],
                "unexpected": sorted(engine_ids - set(counts))[:50],
            }
        if refused:
            detail["refused"] = [{"edit_id": k, "reason": v} for k, v in sorted(refused.items())]
        ok = self.state == "ready" and counts is not None and index_ok
        return ok, detail
