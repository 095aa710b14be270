"""The service object: orchestrates one edit, revoke, restore or query across engine and storage.

Order of operations is the durability story: train (pure) -> one DB transaction -> only then touch the
engine. Every engine call runs on the single model worker thread; `_state_lock` additionally makes
"DB committed + engine updated" atomic for readiness checks taken from other threads. What the service
refuses it raises as app/service_errors.py errors; the HTTP edge (app/errors.py) gives them a status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Generator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from app.active_edits import ActiveEdits
from app.adapter_export import BaseModelIdentity
from app.bulk_load import release_freed_memory
from app.log_follower import AuditLogFollower
from app.metrics import Metrics
from app.prompt_limits import PromptLimits
from app.service_errors import (
    ActivationFailed,
    AdapterRefused,
    AlreadyActive,
    AlreadyRevoked,
    GenerationFailed,
    IdempotencyKeyReused,
    InvalidPrompt,
    NotReady,
    ServiceError,
    ShuttingDown,
    TrainingTimedOut,
)
from app.settings import Settings, default_torch_threads
from app.worker import ModelWorker
from editors.types import (
    SHUTDOWN,
    ChatContext,
    Generation,
    PromptFormat,
    PromptTokens,
    Row,
    RowEvent,
    RowEventKind,
    Sampling,
    TrainedEdit,
    engine_config,
)
from routing.key_index import Route
from storage.repository import (
    EditNotFound,
    EditPayload,
    EditRecord,
    IdempotencyKeyTaken,
    Repository,
    Supersession,
    keys_to_rows,
    request_hash,
    stored_edit,
)
from wire.kinds import EditStatus, EventKind
from wire.schemas import EditChange, EditCreate, GenerateRequest, RouteRequest

if TYPE_CHECKING:  # torch-heavy: loaded with the model, not when the app is imported
    from editors.engine import EditingEngine
    from editors.model_host import ModelHost

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ask:
    """One generation request, whichever endpoint it came through."""

    prompt: str  # the question: the last user turn in chat, the whole text in raw
    prompt_format: PromptFormat
    sampling: Sampling
    context: ChatContext | None = None  # system prompt and earlier turns (chat only)
    use_edits: bool = True
    encoded: PromptTokens | None = None  # the prompt's tokens, when check_fits has already made them


@dataclass(frozen=True)
class Capture:
    """A wording that reaches another edit than its own (POST /edits `captures` and `captured_by`)."""

    question: str
    edit_id: str  # the wording's own edit (captures) or the edit it reaches (captured_by)
    score: float
    prompt_format: str


BulkItem = tuple[EditCreate, str | None]  # an edit request and its Idempotency-Key


@dataclass(frozen=True)
class CreatedEdit:
    record: EditRecord
    supersedes: list[Supersession]  # active edits of the same question this one now answers in place of
    replayed: bool  # an Idempotency-Key replay: the edit existed already
    captures: list[Capture] = field(default_factory=list)  # older edits' wordings that now reach this edit
    captured_by: list[Capture] = field(default_factory=list)  # this edit's wordings that reach an older edit


@dataclass(frozen=True)
class BulkOutcome:
    """One item of POST /edits/batch: the edit made or replayed, or why it was refused (nothing stored)."""

    created: CreatedEdit | None = None
    error: ServiceError | None = None


def new_edit_id() -> str:
    return f"ed_{uuid.uuid4().hex}"


class EditService:
    def __init__(self, settings: Settings, repo: Repository, worker: ModelWorker, metrics: Metrics) -> None:
        self.settings = settings
        self.repo = repo
        self.worker = worker
        self.metrics = metrics
        self.host: ModelHost | None = None  # once loaded
        self.engine: EditingEngine | None = None
        self.edits: ActiveEdits | None = None  # what the engine holds, once loaded
        self.state = "starting"  # starting -> ready | failed
        self.phase = "waiting for the model worker"  # what loading is doing now (GET /readyz shows it)
        self.startup_error: str | None = None
        self.log = AuditLogFollower()
        self._state_lock = threading.Lock()
        # Read when /metrics is scraped: the requests queued at the door right now (never a stale snapshot).
        metrics.queue_depth.set_function(worker.pending_rows)
        metrics.rows_decoding.set_function(worker.decoding_rows)

    # ---- startup and replica sync (worker thread) --------------------------------------------------
    def load(self) -> None:
        """Load the base model and rebuild index + bank from the active edits in the database."""
        from editors.batch import ContinuousBatch
        from editors.engine import EditingEngine
        from editors.model_host import ModelHost

        s = self.settings
        import torch

        torch.set_num_threads(s.torch_threads or default_torch_threads())
        timings: dict[str, float] = {}
        with self._timed_phase(
            "loading the base model (the first start also converts the bundled weights, ~30 s)", "model", timings
        ):
            host = ModelHost.load(
                s.model, s.data_dir, device=s.device, cache_dir=s.resolved_model_cache_dir, dtype=s.dtype
            )
        info = host.info
        log.info(
            "model %s (%s): %.1f M parameters in %s on %s, %.1f MiB resident",
            info["name"],
            info["family"],
            int(info["parameters"]) / 1e6,
            info["dtype"],
            info["device"],
            int(info["resident_bytes"]) / 2**20,
        )
        with self._timed_phase("building the routing encoders", "encoders", timings):
            engine = EditingEngine(host, engine_config(**s.engine_knobs()))
            self.worker.attach(ContinuousBatch(engine, s.prefill_tokens))
            edits = ActiveEdits(engine, self.metrics)
        with self._timed_phase("activating the stored edits", "edits", timings), self._state_lock:
            self.host, self.engine, self.edits = host, engine, edits
            # The cursor is read first: an edit changed while loading is seen again by sync(), never missed.
            self.log = AuditLogFollower(self.repo.last_event_seq())
            total = self.repo.count_active()
            engine.reserve(total, self.repo.active_key_kinds())
            loaded = edits.activate_many(self._counted(self.repo.active_payloads(), total))
            edits.publish()
        release_freed_memory()
        self.phase = "ready"
        self.state = "ready"
        took = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items())
        log.info(
            "ready: /readyz answers 200 (%s); model %s (fingerprint %s), %d active edits, %d refused",
            took,
            host.name,
            host.fingerprint[:12],
            loaded,
            len(edits.refused),
        )

    @contextlib.contextmanager
    def _timed_phase(self, phase: str, name: str, timings: dict[str, float]) -> Iterator[None]:
        """Say what loading does now (GET /readyz's `phase` and a log line) and time it."""
        self.phase = phase
        log.info("starting: %s", phase)
        started = time.perf_counter()
        yield
        timings[name] = time.perf_counter() - started

    def _counted(self, payloads: Iterator[EditPayload], total: int) -> Iterator[EditPayload]:
        for done, payload in enumerate(payloads):
            if done % 1000 == 0:
                self.phase = f"activating the stored edits: {done} of {total}"
            yield payload

    async def sync(self) -> None:
        """Follow the audit log: every edit with new events gets its current database status here.

        With nothing new this is one primary-key query, however many edits exist (AuditLogFollower). Edits
        revoked elsewhere leave the engine at once (a row answering through one finishes its answer)."""
        if self.edits is None:
            return
        gone = await self.worker.run(self._sync_activations)
        if gone:
            await self.worker.run(self._revoke_here, gone)

    def _sync_activations(self) -> list[str]:
        """Activate the edits that became active elsewhere; the ones to take out of the engine."""
        edits = self._ready_edits()
        touched = self.log.poll(self.repo)
        if not touched:
            return []
        statuses = self.repo.statuses(touched)
        negatives = self.repo.negatives_of([e for e in touched if e in edits.active])
        gone = []
        for edit_id in touched:
            if statuses.get(edit_id) == EditStatus.ACTIVE:
                if edit_id not in edits:
                    self._load_and_activate(edit_id)
                elif negatives.get(edit_id, []) != edits.negatives.get(edit_id, []):  # set on another replica
                    edits.refresh_negatives(self.repo.load_payload(edit_id))
            elif edit_id in edits:  # revoked here or by another replica
                gone.append(edit_id)
        edits.publish()
        return gone

    def _revoke_here(self, edit_ids: list[str]) -> None:
        edits = self._ready_edits()
        with self._state_lock:
            for edit_id in edit_ids:
                edits.revoke(edit_id)
            edits.publish()

    def _load_and_activate(self, edit_id: str) -> None:
        """Activate an edit stored by another replica, if it is still active in the database."""
        assert self.edits is not None
        try:
            payload = self.repo.load_payload(edit_id)
        except EditNotFound:
            return
        with self._state_lock:
            if payload.edit.status == EditStatus.ACTIVE and edit_id not in self.edits.active:
                self.edits.activate(payload)

    def _ready_edits(self) -> ActiveEdits:
        if self.edits is None:
            raise NotReady(self.startup_error or "the model is still loading")
        return self.edits

    @property
    def limits(self) -> PromptLimits:
        """What a request may ask (app/prompt_limits.py); the context bound once the model is loaded."""
        settings = self.settings
        context = self.host.max_context if self.host is not None else None
        return PromptLimits(
            settings.max_prompt_chars, settings.max_prompt_tokens, settings.max_request_prompt_tokens, context
        )

    @property
    def loaded_host(self) -> ModelHost:
        """The model, once loaded (NotReady before: a 503 at the edge)."""
        if self.host is None:
            raise NotReady(self.startup_error or "the model is still loading")
        return self.host

    @property
    def loaded_engine(self) -> EditingEngine:
        if self.engine is None:
            raise NotReady(self.startup_error or "the model is still loading")
        return self.engine

    # ---- edits --------------------------------------------------------------------------------------
    async def create_edit(self, body: EditCreate, actor: str, idempotency_key: str | None) -> CreatedEdit:
        """Runs on the worker a training step at a time, queries decoding in between; the commit and the
        activation are one slice, so no query sees a half-applied edit."""
        self._ready_edits()
        return await self.worker.run_steps(self._create_edit, body, actor, idempotency_key)

    def _create_edit(
        self, body: EditCreate, actor: str, idempotency_key: str | None
    ) -> Generator[None, None, CreatedEdit]:
        self._ready_edits()
        if idempotency_key is not None and (existing := self.repo.find_by_idempotency_key(idempotency_key)):
            return self._replay(existing, body)
        self._check_edit_fits(body)
        from editors.training import TrainingTimeout  # editors (torch) load with the model, not at import

        try:
            trained = yield from self.loaded_engine.train_edit_steps(body.prompt, body.target, body.rephrases)
        except TrainingTimeout as exc:
            raise TrainingTimedOut(
                f"{exc}; nothing was stored. Shorten the prompt, target or rephrases, or raise SOLA_MAX_TRAIN_SECONDS"
            ) from None
        self.metrics.train_seconds.observe(trained.seconds)
        yield
        record, superseded = self._store(body, trained, actor, idempotency_key)
        if superseded is None:  # another replica made this key's edit while we trained: that is the answer
            return self._replay(record, body)
        log.info("edit %s created by %s (%d steps, %.2fs)", record.id, actor, trained.steps, trained.seconds)
        yield
        captures, captured_by = self._captures(record, trained)
        return CreatedEdit(record, superseded, False, captures, captured_by)

    def _store(
        self, body: EditCreate, trained: TrainedEdit, actor: str, idempotency_key: str | None
    ) -> tuple[EditRecord, list[Supersession] | None]:
        """Commit a trained edit, then activate it: one slice, so no query sees it half-applied. Returns the
        stored record and what it supersedes, or (the existing record, None) when another replica committed
        this Idempotency-Key while we trained (theirs is the edit)."""
        edits = self._ready_edits()
        negative_keys = self.loaded_engine.negative_keys(body.negatives)
        superseded = self._supersessions(trained, body.prompt)  # the new edit is not in the index yet
        layer = self.loaded_engine.layer
        new = stored_edit(new_edit_id(), body, trained, self.host, layer, actor, idempotency_key, negative_keys)
        with self._state_lock:
            try:
                record = self.repo.create_edit(new, superseded)
            except IdempotencyKeyTaken:
                existing = self.repo.find_by_idempotency_key(idempotency_key or "")
                assert existing is not None
                return existing, None
            # committed: from here on the edit exists. Only now may the engine change.
            activated = edits.activate(EditPayload(record, new.adapter, new.adapter_sha256, new.keys))
            edits.publish()
        if not activated:
            raise ActivationFailed(f"edit {record.id} was stored but refused: {edits.refused.get(record.id)}")
        return record, superseded

    async def create_edits(self, items: Sequence[BulkItem], actor: str) -> list[BulkOutcome]:
        """POST /edits/batch: train the items together (EditingEngine.train_edits_steps, up to
        SOLA_TRAIN_BATCH_SIZE at once), each committed and activated on its own as soon as it is learnt, so an
        item is never half-applied and one refused item leaves the others as they would be alone. Runs on the
        worker a training step at a time, queries decoding in between."""
        self._ready_edits()
        return await self.worker.run_steps(self._create_edits, items, actor)

    def _create_edits(self, items: Sequence[BulkItem], actor: str) -> Generator[None, None, list[BulkOutcome]]:
        from editors.training import TrainingTimeout
        from editors.types import EditSpec

        outcomes: dict[int, BulkOutcome] = {}
        training: list[int] = []
        seen_keys: set[str] = set()
        for i, (body, key) in enumerate(items):
            try:
                if key is not None and key in seen_keys:
                    raise IdempotencyKeyReused("this Idempotency-Key is used by an earlier item of this batch")
                if key is not None:
                    seen_keys.add(key)
                if key is not None and (existing := self.repo.find_by_idempotency_key(key)):
                    outcomes[i] = BulkOutcome(self._replay(existing, body))
                    continue
                self._check_edit_fits(body)
            except ServiceError as exc:
                outcomes[i] = BulkOutcome(error=exc)
                continue
            training.append(i)
        specs = [EditSpec(items[i][0].prompt, items[i][0].target, items[i][0].rephrases) for i in training]
        steps = self.loaded_engine.train_edits_steps(specs, self.settings.train_batch_size)
        for finished in steps:
            for j, result in finished:
                i = training[j]
                body, key = items[i]
                if isinstance(result, TrainingTimeout):
                    message = f"{result}; nothing was stored. Shorten the prompt, target or rephrases, or raise "
                    outcomes[i] = BulkOutcome(error=TrainingTimedOut(message + "SOLA_MAX_TRAIN_SECONDS"))
                    continue
                self.metrics.train_seconds.observe(result.seconds)
                try:
                    record, superseded = self._store(body, result, actor, key)
                    if superseded is None:
                        outcomes[i] = BulkOutcome(self._replay(record, body))
                    else:
                        outcomes[i] = BulkOutcome(CreatedEdit(record, superseded, False))
                except ServiceError as exc:
                    outcomes[i] = BulkOutcome(error=exc)
            yield
        made = sum(1 for o in outcomes.values() if o.created is not None and not o.created.replayed)
        log.info("batch of %d edits by %s: %d created", len(items), actor, made)
        return [outcomes[i] for i in range(len(items))]

    def _captures(self, record: EditRecord, trained: TrainedEdit) -> tuple[list[Capture], list[Capture]]:
        """With the new edit active: the older edits' wordings near its keys that now reach it, and its own
        wordings that reach another edit. Read by routing them as queries (a partial forward each)."""
        from editors.engine import parse_kind

        captures: list[Capture] = []
        captured_by: list[Capture] = []
        own = [record.prompt, *record.rephrases]
        for prompt_format, space in self.loaded_engine.routed.spaces.items():
            rows = [i for i, k in enumerate(trained.key_kinds) if parse_kind(k).prompt_format == prompt_format]
            candidates = self.settings.capture_candidates
            near: list[list[int]] = space.index.nearest_keys(trained.keys[rows], candidates).tolist() if rows else []
            neighbours = {space.index.owner(int(k)) for ids in near for k in ids if k >= 0} - {record.id, None}
            wordings = [(e, w) for e in sorted(n for n in neighbours if n) for w in space.gate.wordings.get(e, ())]
            asked = [w for _, w in wordings] + own
            routes = self.loaded_engine.route(asked, prompt_format) if asked else []
            for (edit_id, question), route in zip(wordings, routes, strict=False):
                if route.edit_id == record.id and route.similarity is not None:
                    captures.append(Capture(question, edit_id, round(route.similarity, 6), str(prompt_format)))
            for question, route in zip(own, routes[len(wordings) :], strict=True):
                if route.edit_id not in (None, record.id) and route.similarity is not None:
                    captured_by.append(Capture(question, route.edit_id, round(route.similarity, 6), str(prompt_format)))
        return captures, captured_by

    def _replay(self, existing: EditRecord, body: EditCreate) -> CreatedEdit:
        """The edit an Idempotency-Key already made. Made by another replica, it is loaded here at once, so
        the client that was told "this edit exists" is answered through it by this replica too."""
        if existing.request_hash != request_hash(body):
            raise IdempotencyKeyReused("this Idempotency-Key was already used with a different request body")
        edits = self._ready_edits()
        if existing.status == EditStatus.ACTIVE and existing.id not in edits:
            self._load_and_activate(existing.id)
            edits.publish()
        created = self.repo.list_events(existing.id, limit=1, kind=EventKind.CREATED).items
        overlaps = created[0].detail.get("supersedes", []) if created else []
        superseded = [Supersession(older_id=o["edit_id"], similarity=o["similarity"]) for o in overlaps]
        return CreatedEdit(existing, superseded, replayed=True)

    def _check_edit_fits(self, body: EditCreate) -> None:
        """Every wording, in each prompt format it is keyed and trained in, with its target in context."""
        self.limits.check_chars([body.prompt, *body.rephrases, *body.negatives], "prompt, rephrases and negatives")
        host = self.loaded_host
        target_tokens = len(host.encode(" " + body.target)) + 2  # + end-of-turn marker
        for text in [body.prompt, *body.rephrases, *body.negatives]:
            for prompt_format in host.prompt_formats:
                n = host.count_tokens(text, prompt_format)
                self.limits.check_tokens(n, "a wording", target_tokens, "its target")

    def _supersessions(self, trained: TrainedEdit, prompt: str) -> list[Supersession]:
        """The active edit answering this very prompt now, if the router scores it (near-)identical to the new
        edit's (same content and every subject word): the new edit takes over (newest wins ties); the older
        one answers again if the newer is revoked. Read from the keys training made (no forward pass)."""
        best: dict[str, float] = {}
        for route in self.loaded_engine.prompt_routes(trained, prompt):
            edit_id, similarity = route.edit_id, route.similarity
            if edit_id is not None and similarity is not None and similarity >= self.settings.supersede_similarity:
                best[edit_id] = max(float(similarity), best.get(edit_id, -1.0))
        return [Supersession(older_id=k, similarity=round(v, 6)) for k, v in best.items()]

    async def change(self, edit_id: str, change: EditChange, actor: str) -> EditRecord:
        """PATCH /edits/{id}: replace the edit's negatives (their keys computed here, no retraining)."""
        self._ready_edits()
        self.limits.check_chars(change.negatives, "negatives")
        return await self.worker.run(self._change, edit_id, change, actor)

    def _change(self, edit_id: str, change: EditChange, actor: str) -> EditRecord:
        edits = self._ready_edits()
        keys, kinds = self.loaded_engine.negative_keys(change.negatives)
        with self._state_lock:
            record = self.repo.set_negatives(edit_id, change.negatives, keys_to_rows(keys, kinds), actor, change.reason)
            if edit_id in edits.active:
                edits.set_negatives(edit_id, record.negatives, keys, kinds)
            edits.publish()
        log.info("edit %s negatives set by %s (%d)", edit_id, actor, len(change.negatives))
        return record

    async def route(self, request: RouteRequest) -> list[Route]:
        """POST /route: where each question would go, decided as generation decides it at prefill."""
        self._ready_edits()
        prompt_format = PromptFormat.CHAT if request.chat and self.loaded_host.has_chat_template else PromptFormat.RAW
        context = None
        if prompt_format is PromptFormat.CHAT and (request.system is not None or request.history):
            context = ChatContext(request.system, tuple((t.role, t.content) for t in request.history))
        for question in request.questions:
            self.check_fits(Ask(question, prompt_format, Sampling(max_new_tokens=1), context))
        return await self.worker.run(self.loaded_engine.route, request.questions, prompt_format, context)

    async def revoke(self, edit_id: str, actor: str, reason: str | None = None) -> EditRecord:
        """At once for every row that arrives after it; a row already answering through this edit keeps its
        adapter until its answer is out (it holds the edit's bank slot), and no other row waits."""
        return await self.worker.run(self._revoke, edit_id, actor, reason)

    def _revoke(self, edit_id: str, actor: str, reason: str | None) -> EditRecord:
        with self._state_lock:
            record, changed = self.repo.revoke(edit_id, actor, reason)
            if self.edits is not None:  # also on a repeat: heals an index that missed an earlier revoke
                self.edits.revoke(edit_id)
                self.edits.publish()
        if not changed:
            previous = self.repo.last_event(edit_id, EventKind.REVOKED)
            revocation = {
                "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None,
                "revoked_by": record.revoked_by,
                "reason": (previous.detail.get("reason") if previous else None),
            }
            why = f" (reason: {revocation['reason']})" if revocation["reason"] else ""
            raise AlreadyRevoked(
                f"edit {edit_id} was already revoked at {revocation['revoked_at']} by {record.revoked_by}{why}; "
                "nothing changed and this request's reason was not recorded",
                {"revocation": revocation},
            )
        log.info("edit %s revoked by %s", edit_id, actor)
        return record

    async def restore(self, edit_id: str, actor: str, reason: str | None = None) -> EditRecord:
        self._ready_edits()
        return await self.worker.run(self._restore, edit_id, actor, reason)

    def _restore(self, edit_id: str, actor: str, reason: str | None = None) -> EditRecord:
        edits = self._ready_edits()
        payload = self.repo.load_payload(edit_id)
        problem = edits.verify(payload)
        if problem is not None:  # checked before commit: a restore never activates a bad adapter
            raise AdapterRefused(f"edit {edit_id} cannot be restored: {problem}")
        with self._state_lock:
            record, changed = self.repo.restore(edit_id, actor, reason)
            activated = edit_id in edits.active or edits.activate(replace(payload, edit=record))
            edits.publish()
        if not activated:
            raise AdapterRefused(f"edit {edit_id} refused by the engine: {edits.refused.get(edit_id)}")
        if not changed:
            raise AlreadyActive(
                f"edit {edit_id} is already active; nothing changed and this request's reason was not recorded"
            )
        log.info("edit %s restored by %s", edit_id, actor)
        return record

    # ---- generation: rows of the worker's continuous batch (editors/batch.py) ------------------------
    async def generate(self, request: GenerateRequest) -> Generation:
        """POST /generate: greedy, in the model's chat format unless the request says otherwise."""
        chat = request.chat if request.chat is not None else bool(self.host and self.host.has_chat_template)
        ask = Ask(
            prompt=request.prompt,
            prompt_format=PromptFormat.CHAT if chat else PromptFormat.RAW,
            sampling=Sampling(max_new_tokens=request.max_new_tokens),
            use_edits=request.use_edits,
        )
        return await self.complete(ask)

    async def complete(self, ask: Ask) -> Generation:
        """The whole answer of one request."""
        return Generation.from_events([event async for event in self.stream(ask)])

    async def stream(self, ask: Ask) -> AsyncGenerator[RowEvent, None]:
        """One request's events as the worker decodes it: its route (first), text as it comes, its end.

        Leaving the iteration early (a client that went away) frees its batch slot at the next decode step."""
        self._ready_edits()
        encoded = ask.encoded if ask.encoded is not None else await asyncio.to_thread(self.check_fits, ask)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[RowEvent] = asyncio.Queue()

        def emit(event: RowEvent) -> None:  # on the model thread
            loop.call_soon_threadsafe(events.put_nowait, event)

        row = Row(
            ask.prompt,
            ask.prompt_format,
            ask.sampling,
            emit,
            context=ask.context,
            use_edits=ask.use_edits,
            encoded=encoded,
        )
        try:
            self.worker.submit_row(row)
        except RuntimeError as exc:
            raise ShuttingDown("the server is shutting down") from exc
        route: Route | None = None
        try:
            while True:
                event = await events.get()
                if event.kind == RowEventKind.ERROR:
                    if event.finish_reason == SHUTDOWN:
                        raise ShuttingDown("the server is shutting down")
                    self.metrics.generate_failures.inc()
                    raise GenerationFailed(f"generation failed: {event.text}")
                if event.kind == RowEventKind.START:
                    route = event.route
                if event.kind == RowEventKind.END:
                    self._count(route, event)
                yield event
                if event.kind == RowEventKind.END:
                    return
        finally:
            row.cancelled = True  # finished, or the client left: either way the slot is free from now on

    def _count(self, route: Route | None, end: RowEvent) -> None:
        edit_id = route.edit_id if route is not None else None
        self.metrics.queries.labels(routed=str(edit_id is not None).lower()).inc()
        self.metrics.tokens_generated.inc(end.completion_tokens)
        if edit_id is not None:
            self.metrics.edit_hits.hit(edit_id)

    def check_fits(self, ask: Ask) -> PromptTokens:
        """The prompt's tokens, encoded once for the decoder too; raises
        InvalidPrompt or PromptTooLong for a request the model cannot take as it is."""
        context = ask.context or ChatContext()
        texts = [ask.prompt, context.system or "", *(content for _, content in context.history)]
        self.limits.check_chars(["".join(texts)], "prompt" if ask.context is None else "messages")
        from editors.model_host import PromptFormatError

        try:
            encoded = self.loaded_engine.encode(ask.prompt, ask.prompt_format, ask.context)
            n = len(encoded.ids)
        except PromptFormatError as exc:  # chat on a model without a chat template
            raise InvalidPrompt(str(exc)) from None
        except Exception:  # the tokenizer refused this text
            log.exception("could not tokenize a prompt")
            self.metrics.generate_failures.inc()
            raise InvalidPrompt("prompt: the tokenizer cannot encode this text") from None
        self.limits.check_tokens(n, "the prompt", ask.sampling.max_new_tokens, "max new tokens")
        return encoded

    # ---- readiness ---------------------------------------------------------------------------------
    @property
    def threshold(self) -> float:
        """The routing threshold edits answer at (the engine's, or the configured one before it loads)."""
        config = self.loaded_engine.config if self.engine is not None else engine_config(**self.settings.engine_knobs())
        return float(config.threshold)

    def base_model_identity(self, edit: EditRecord) -> BaseModelIdentity:
        """What an exported adapter names as its base: this server's model when the edit was trained on it."""
        from editors.model_host import DEFAULT_MODEL_HUB_ID, DEFAULT_MODEL_NAME

        host = self.host
        ours = host is not None and host.fingerprint == edit.base_fingerprint
        bundled = edit.base_model == DEFAULT_MODEL_NAME and self.settings.model is None
        return BaseModelIdentity(
            name=edit.base_model,
            hub_id=DEFAULT_MODEL_HUB_ID if bundled else None,
            fingerprint=edit.base_fingerprint,
            dtype=str(host.model.dtype).removeprefix("torch.") if host is not None else "float32",
            local_path=str(host.source) if ours and host is not None and host.source else None,
        )

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready = model loaded, database answers, index holds exactly the active edits' keys."""
        detail: dict[str, Any] = {"model": self.state, "phase": self.phase}
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
            engine_ids = set(self.loaded_engine.active_edit_ids()) if self.engine is not None else set()
            engine_keys = int(self.loaded_engine.num_keys()) if self.engine is not None else 0
            refused = dict(self.edits.refused) if self.edits is not None else {}
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
        if self.host is not None:
            layer = {"edited_layer": self.loaded_engine.layer} if self.engine is not None else {}
            detail["model_info"] = {**self.host.info, **layer}
        if refused:
            detail["refused"] = [{"edit_id": k, "reason": v} for k, v in sorted(refused.items())]
        ok = self.state == "ready" and counts is not None and index_ok
        return ok, detail
