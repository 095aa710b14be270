"""HTTP routes: thin. Validate, authorise, call the service or repository, shape the response."""

from __future__ import annotations

import base64
import binascii
import dataclasses
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AfterValidator

from app.adapter_export import adapter_archive
from app.api_error import ApiError
from app.auth import require_key_unless
from app.deps import Admin, AppSettings, Reader, Repo, Service
from app.errors import documented, service_status
from app.service import CreatedEdit
from app.settings import Settings
from storage.repository import EditFilters, EditNotFound, EventRecord, Page
from wire.kinds import EditStatus, EventKind
from wire.schemas import (
    BulkEditCreate,
    BulkEditOut,
    BulkItemError,
    BulkItemOut,
    Capture,
    CreatedEditOut,
    EditChange,
    EditCreate,
    EditOut,
    EditPage,
    EventOut,
    EventPage,
    GenerateOut,
    GenerateRequest,
    Overlap,
    RevokeRequest,
    RouteOut,
    RouteRequest,
    RoutesOut,
    storable,
)

router = APIRouter()

Limit = Annotated[int, Query(ge=1, le=500)]
# Ids are `ed_` + 32 hex digits; anything unlike an id is refused before it reaches a database (NUL, huge).
EditId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]

_EDIT_CURSOR = "edits:"


def _storable_query(value: str | list[str] | None) -> str | list[str] | None:
    """Query text the databases can hold and compare: no NUL, no lone surrogate (a 422 naming it, not a 500)."""
    for text in [value] if isinstance(value, str) else value or []:
        storable(text)
    return value


QueryText = AfterValidator(_storable_query)


def _seq(digits: str) -> int | None:
    """A sequence number from 1-18 ASCII digits (always fits the databases' 64-bit seq), else None."""
    return int(digits) if digits.isascii() and digits.isdigit() and len(digits) <= 18 else None


def encode_edit_cursor(seq: int | None) -> str | None:
    if seq is None:
        return None
    return base64.urlsafe_b64encode(f"{_EDIT_CURSOR}{seq}".encode()).decode().rstrip("=")


def decode_edit_cursor(cursor: str | None) -> int | None:
    """Opaque to clients; malformed cursors are a 400, never a 500."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        seq = _seq(raw[len(_EDIT_CURSOR) :])
        if raw.startswith(_EDIT_CURSOR) and seq is not None:
            return seq
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise ApiError(400, "invalid_cursor", "`after` is not a cursor returned by this API (next_after)")


def IsoTime(description: str) -> Any:  # noqa: N802 - a Query(...) factory, named like one
    """An ISO 8601 time query parameter (strings only: pydantic would also take 0.5 as a Unix time)."""
    return Query(description=description, json_schema_extra={"format": "date-time"}, max_length=40)


def iso_time(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
        parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)  # the databases compare in UTC: 9999-12-31T23:59-23:59 is past year 9999
    except (ValueError, OverflowError):
        example = "e.g. 2026-11-26T09:30:00Z"
        raise ApiError(422, "validation_error", f"{name}: not an ISO 8601 time in years 1-9999, {example}") from None


def decode_event_cursor(cursor: str | None) -> int | None:
    """Event cursors are the log's sequence numbers, so replicas can follow the log with them."""
    if cursor is None:
        return None
    seq = _seq(cursor)
    if seq is None:
        raise ApiError(400, "invalid_cursor", "`after` must be an event seq (next_after of a previous page)")
    return seq


# ---- edits ---------------------------------------------------------------------------------------------
@router.post(
    "/edits",
    status_code=201,
    response_model=CreatedEditOut,
    responses=documented(400, 401, 403, 409, 413, 415, 422, 500, 503),
)
async def create_edit(
    body: EditCreate,
    response: Response,
    principal: Admin,
    svc: Service,
    limits: AppSettings,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)] = None,
) -> CreatedEditOut:
    _check_edit(body, limits)
    created = await svc.create_edit(body, principal.name, idempotency_key)
    if created.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return _created_out(created)


def _check_edit(body: EditCreate, limits: Settings) -> None:
    """What the body itself may hold; its prompts' characters and tokens are the service's (app/prompt_limits.py)."""
    if len(body.target) > limits.max_target_chars:
        raise ApiError(413, "target_too_long", f"targets are limited to {limits.max_target_chars} characters")
    if len(body.rephrases) > limits.max_rephrases:
        raise ApiError(422, "too_many_rephrases", f"at most {limits.max_rephrases} rephrases per edit")
    _check_negatives(body.negatives, limits)


@router.post(
    "/edits/batch",
    response_model=BulkEditOut,
    responses=documented(400, 401, 403, 413, 415, 422, 503),
)
async def create_edits(body: BulkEditCreate, principal: Admin, svc: Service, limits: AppSettings) -> BulkEditOut:
    """Make many edits in one request: each item is a POST /edits body with its own optional `idempotency_key`,
    and is answered on its own, in order: `created`, `replayed` (its key's edit existed: nothing trained) or
    `refused` with the code and status POST /edits would have given it. The items train together (up to
    SOLA_TRAIN_BATCH_SIZE at once, each edit with its own adapter, keys and `created` audit event); each is
    committed and activated alone as soon as it is learnt, so an item is never half-applied and a refused item
    never blocks the others. Queries are served between training steps. At most SOLA_MAX_BULK_EDITS items;
    sending the same request again after a failure replays what was made and trains only the rest."""
    if len(body.edits) > limits.max_bulk_edits:
        raise ApiError(
            413, "too_many_edits", f"at most {limits.max_bulk_edits} edits per request (SOLA_MAX_BULK_EDITS): split it"
        )
    items: list[BulkItemOut | None] = []
    accepted: list[tuple[int, EditCreate, str | None]] = []
    for index, item in enumerate(body.edits):
        edit = item.edit()
        try:
            _check_edit(edit, limits)
        except ApiError as exc:
            items.append(
                BulkItemOut(
                    index=index,
                    status="refused",
                    error=BulkItemError(code=exc.code, message=exc.message, status=exc.status),
                )
            )
            continue
        items.append(None)
        accepted.append((index, edit, item.idempotency_key))
    outcomes = await svc.create_edits([(edit, key) for _, edit, key in accepted], principal.name) if accepted else []
    for (index, _, _), outcome in zip(accepted, outcomes, strict=True):
        if outcome.created is not None:
            status = "replayed" if outcome.created.replayed else "created"
            items[index] = BulkItemOut(index=index, status=status, edit=_created_out(outcome.created))
        else:
            assert outcome.error is not None
            error = outcome.error
            out = BulkItemError(code=error.code, message=error.message, status=service_status(error))
            items[index] = BulkItemOut(index=index, status="refused", error=out)
    done = [item for item in items if item is not None]
    return BulkEditOut(
        items=done,
        created=sum(i.status == "created" for i in done),
        replayed=sum(i.status == "replayed" for i in done),
        refused=sum(i.status == "refused" for i in done),
    )


def _created_out(created: CreatedEdit) -> CreatedEditOut:
    out = EditOut.model_validate(created.record).model_dump()
    return CreatedEditOut.model_validate(
        {
            **out,
            "supersedes": [Overlap.model_validate(s) for s in created.supersedes],
            "captures": [Capture.model_validate(c, from_attributes=True) for c in created.captures],
            "captured_by": [Capture.model_validate(c, from_attributes=True) for c in created.captured_by],
        }
    )


def _check_negatives(negatives: list[str], limits: Settings) -> None:
    if len(negatives) > limits.max_rephrases:
        raise ApiError(422, "too_many_negatives", f"at most {limits.max_rephrases} negatives per edit")


@router.patch("/edits/{edit_id}", response_model=EditOut, responses=documented(400, 401, 403, 404, 413, 415, 422, 503))
async def change_edit(
    edit_id: EditId, body: EditChange, principal: Admin, svc: Service, settings: AppSettings
) -> EditOut:
    """Replace the edit's negatives: questions it must not answer (each vetoes this edit, and no other, for a
    question closer to it than to the edit's own wordings). Kept with a `negatives_set` event holding the old
    and new lists; no retraining."""
    _check_negatives(body.negatives, settings)
    return EditOut.model_validate(await svc.change(edit_id, body, principal.name))


@router.post("/route", response_model=RoutesOut, responses=documented(400, 401, 403, 413, 415, 422, 503))
async def route(body: RouteRequest, _: Reader, svc: Service, settings: AppSettings) -> RoutesOut:
    """Which edit each question would reach, and how close the runner-up is, without generating: the decision
    generation takes at prefill (check near misses before users ask them)."""
    routes = await svc.route(body)
    return RoutesOut(
        routes=[
            RouteOut(
                question=question,
                edit_id=r.edit_id,
                score=r.similarity,
                nearest_edit_id=r.nearest_edit_id,
                runner_up_id=r.runner_up_id,
                margin=r.margin,
                vetoed=list(r.vetoed),
            )
            for question, r in zip(body.questions, routes, strict=True)
        ]
    )


@router.get("/edits", response_model=EditPage, responses=documented(400, 401, 422))
async def list_edits(
    _: Reader,
    repo: Repo,
    status: EditStatus | None = None,
    limit: Limit = 50,
    after: Annotated[str | None, Query(max_length=200), QueryText] = None,
    actor: Annotated[
        str | None, Query(max_length=200, description="Only edits created by this key name"), QueryText
    ] = None,
    q: Annotated[
        str | None,
        Query(min_length=1, max_length=500, description="Case-insensitive text in the prompt or target"),
        QueryText,
    ] = None,
    metadata: Annotated[
        list[str] | None,
        Query(description="`key=value`, repeatable: metadata[key] equals value (as text)"),
        QueryText,
    ] = None,
    created_from: Annotated[str | None, IsoTime(description="Created at or after (ISO 8601)")] = None,
    created_to: Annotated[str | None, IsoTime(description="Created before (ISO 8601)")] = None,
) -> EditPage:
    pairs = [item.partition("=") for item in metadata or []]
    if any(not key or not sep for key, sep, _ in pairs):
        raise ApiError(422, "validation_error", "metadata: each filter is key=value, e.g. metadata=ticket=OPS-7")
    times = iso_time("created_from", created_from), iso_time("created_to", created_to)
    filters = EditFilters(actor, q, {key: value for key, _, value in pairs}, *times)
    page = await run_in_threadpool(repo.list_edits, status, limit, decode_edit_cursor(after), filters)
    return EditPage(
        data=[EditOut.model_validate(e) for e in page.items],
        has_more=page.has_more,
        next_after=encode_edit_cursor(page.last_seq),
    )


@router.get("/edits/{edit_id}", response_model=EditOut, responses=documented(401, 404, 422))
async def get_edit(edit_id: EditId, _: Reader, repo: Repo) -> EditOut:
    record = await run_in_threadpool(repo.get_edit, edit_id)
    if record is None:
        raise ApiError(404, "not_found", f"no edit with id {edit_id!r}")
    return EditOut.model_validate(record)


@router.delete("/edits/{edit_id}", response_model=EditOut, responses=documented(400, 401, 403, 404, 409, 415, 422, 503))
async def revoke_edit(
    edit_id: EditId,
    principal: Admin,
    svc: Service,
    body: RevokeRequest | None = None,
    reason: Annotated[
        str | None, Query(max_length=2000, description="Why (kept in the `revoked` event)"), QueryText
    ] = None,
) -> EditOut:
    """Take the edit out of service. The reason (a JSON body `{"reason": ...}` or `?reason=`) is kept in the audit
    log. An edit already revoked answers 409 `already_revoked` with its `revocation` (when, by whom, why) in the
    error body, and records nothing."""
    why = (body.reason if body is not None else None) or reason
    return EditOut.model_validate(await svc.revoke(edit_id, principal.name, why))


@router.post(
    "/edits/{edit_id}/restore", response_model=EditOut, responses=documented(400, 401, 403, 404, 409, 415, 422, 503)
)
async def restore_edit(
    edit_id: EditId,
    principal: Admin,
    svc: Service,
    body: RevokeRequest | None = None,
    reason: Annotated[
        str | None, Query(max_length=2000, description="Why (kept in the `restored` event)"), QueryText
    ] = None,
) -> EditOut:
    """Serve a revoked edit again; the reason (`{"reason": ...}` or `?reason=`) is kept in the `restored` event.
    An edit already active answers 409 `already_active` and records nothing."""
    why = (body.reason if body is not None else None) or reason
    return EditOut.model_validate(await svc.restore(edit_id, principal.name, why))


@router.get(
    "/edits/{edit_id}/adapter",
    response_class=Response,  # no default media type: 200 is a zip, the errors the JSON error body
    responses={
        200: {
            "description": "A zip of one folder `<edit_id>/`: adapter_config.json and adapter_model.safetensors "
            "(PEFT), sola_edit.json (base model identity, routing keys and threshold) and README.md",
            "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
        },
        **documented(401, 404, 422),
    },
)
async def export_adapter(edit_id: EditId, _: Reader, repo: Repo, svc: Service) -> Response:
    """The edit's LoRA as a standard PEFT adapter (`PeftModel.from_pretrained(base_model, folder)`), with
    `sola_edit.json` (the base model's identity, the edit's routing keys, threshold, wordings and negatives)
    and a README.

    A revoked edit's adapter is exportable too: revoking stops serving an edit, it does not erase the record.
    PEFT applies the adapter to every token, where the service applies it only while the edit is routed."""
    try:
        payload = await run_in_threadpool(repo.load_payload, edit_id)
    except EditNotFound:
        raise ApiError(404, "not_found", f"no edit with id {edit_id!r}") from None
    archive = await run_in_threadpool(adapter_archive, payload, svc.base_model_identity(payload.edit), svc.threshold)
    disposition = f'attachment; filename="{edit_id}-peft.zip"'  # EditId's pattern keeps the header safe
    return Response(archive, media_type="application/zip", headers={"Content-Disposition": disposition})


# ---- audit log ---------------------------------------------------------------------------------------
@router.get("/edits/{edit_id}/events", response_model=EventPage, responses=documented(400, 401, 404, 422))
async def edit_events(
    edit_id: EditId,
    _: Reader,
    repo: Repo,
    limit: Limit = 100,
    after: Annotated[str | None, Query(max_length=200), QueryText] = None,
) -> EventPage:
    cursor = decode_event_cursor(after)
    if await run_in_threadpool(repo.get_edit, edit_id) is None:
        raise ApiError(404, "not_found", f"no edit with id {edit_id!r}")
    return _event_page(await run_in_threadpool(repo.list_events, edit_id, limit, cursor))


@router.get("/events", response_model=EventPage, responses=documented(400, 401, 422))
async def events(
    _: Reader,
    repo: Repo,
    limit: Limit = 100,
    after: Annotated[str | None, Query(max_length=200), QueryText] = None,
    kind: EventKind | None = None,
    actor: Annotated[str | None, Query(max_length=200), QueryText] = None,
    edit_id: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] = None,
) -> EventPage:
    cursor = decode_event_cursor(after)
    return _event_page(await run_in_threadpool(repo.list_events, edit_id, limit, cursor, kind, actor))


def _event_page(page: Page[EventRecord]) -> EventPage:
    next_after = None if page.last_seq is None else str(page.last_seq)
    return EventPage(
        data=[EventOut.model_validate(e) for e in page.items], has_more=page.has_more, next_after=next_after
    )


# ---- generation ---------------------------------------------------------------------------------------
@router.post("/generate", response_model=GenerateOut, responses=documented(400, 401, 403, 413, 415, 422, 503))
async def generate(body: GenerateRequest, _: Reader, svc: Service, settings: AppSettings) -> GenerateOut:
    if not 1 <= body.max_new_tokens <= settings.max_new_tokens:
        raise ApiError(422, "validation_error", f"max_new_tokens must be between 1 and {settings.max_new_tokens}")
    result = await svc.generate(body)
    counts = {"completion_tokens": len(result.token_ids), "model": svc.loaded_host.name}
    return GenerateOut.model_validate({**dataclasses.asdict(result), **counts})


# ---- operations ---------------------------------------------------------------------------------------
@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        200: {"description": '`{"status": "ready", ...}`: model loaded, database reachable, index built'},
        503: {"description": '`{"status": "not_ready", ...}` with the same fields saying what is missing'},
    },
)
async def readyz(svc: Service) -> JSONResponse:
    ok, detail = await run_in_threadpool(svc.readiness)
    return JSONResponse({"status": "ready" if ok else "not_ready", **detail}, status_code=200 if ok else 503)


@router.get(
    "/metrics",
    response_class=Response,  # no default media type: 200 is text, the 401 the JSON error body
    responses={
        200: {
            "description": "Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **documented(401),
    },
    dependencies=[Depends(require_key_unless("public_metrics"))],
)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
