"""One error shape for every failure: {"error": {"code", "message", "type", "param"}} (OpenAI's, so its
clients read ours; `type` is derived from the status; `param` names the invalid field on /v1, else null).

The service raises domain errors (app/service_errors.py, storage's EditNotFound); this module alone decides
their HTTP status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app import service_errors as se
from app.api_error import ApiError
from app.auth import authenticate, bearer_token
from storage.repository import EditNotFound
from wire.schemas import ErrorOut

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    503: "unavailable",
}


# What each error status means on this API, for the OpenAPI document (every body is ErrorOut).
_DOCUMENTED = {
    400: "Malformed request: the body is not JSON, or `after` is not a cursor this API returned",
    401: "No API key, or an unknown one (sent with WWW-Authenticate: Bearer)",
    403: "The key's role may not do this (reader keys cannot edit, revoke or restore), a write from another "
    "site's page (`cross_origin`), or a Host this keyless server does not answer to (`host_not_allowed`)",
    404: "No edit with this id",
    409: "Conflict: an Idempotency-Key used with another body, an edit already revoked (`already_revoked`, with "
    "the revocation) or already active (`already_active`), an adapter this server cannot run",
    413: "Body, prompt or target over its limit, or prompt + tokens over the model's context",
    415: "A write sent as a form or text/plain (what another site's page can send): send JSON",
    422: "A field is missing or invalid; the message names it. Also `training_timeout` (nothing stored)",
    500: "The edit was stored but the engine refused to activate it (`activation_failed`); never otherwise",
    503: "The model is still loading, failed to load, or the server is shutting down",
}


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, all with the one error body."""
    return {status: {"model": ErrorOut, "description": _DOCUMENTED[status]} for status in statuses}


# Domain error -> HTTP status. A subclass not listed takes its nearest listed base's status.
SERVICE_STATUS: dict[type[se.ServiceError], int] = {
    se.NotReady: 503,
    se.ShuttingDown: 503,
    se.PromptTooLong: 413,
    se.InvalidPrompt: 422,
    se.TrainingTimedOut: 422,
    se.IdempotencyKeyReused: 409,
    se.AlreadyRevoked: 409,
    se.AlreadyActive: 409,
    se.AdapterRefused: 409,
    se.ActivationFailed: 500,
    se.GenerationFailed: 500,
}


def service_status(exc: se.ServiceError) -> int:
    return next((SERVICE_STATUS[cls] for cls in type(exc).__mro__ if cls in SERVICE_STATUS), 500)


def error_type(status: int) -> str:
    """OpenAI's error `type` for a status: clients of /v1 (the official SDKs) read it, the others ignore it."""
    if status >= 500:
        return "server_error"
    return {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}.get(
        status, "invalid_request_error"
    )


def error_response(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    """The error body; `extra` adds fields beside the standard four (already_revoked: the revocation)."""
    body = {"code": code, "message": message, "type": error_type(status), "param": None, **(extra or {})}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _param(errors: list[Any]) -> str | None:
    """The first invalid field as OpenAI names it: `messages.0.content`, `temperature`."""
    loc = [str(p) for p in errors[0].get("loc", ()) if p != "body"] if errors else []
    return ".".join(loc) or None


def _describe(errors: list[Any]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app serves at this request's path."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(se.ServiceError)
    async def _service_error(_: Request, exc: se.ServiceError) -> JSONResponse:
        retry = {"Retry-After": "5"} if isinstance(exc, se.NotReady) else None  # loading takes seconds
        return error_response(service_status(exc), exc.code, exc.message, retry, exc.detail)

    @app.exception_handler(EditNotFound)
    async def _not_found(_: Request, exc: EditNotFound) -> JSONResponse:
        return error_response(404, "not_found", f"no edit with id {exc.args[0]!r}")

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI parses the body before it runs the auth dependency: authenticate here first, so a caller
        # without a valid key is told only that, never anything about what it sent.
        try:
            authenticate(request.app.state.settings.keys, bearer_token(request))
        except ApiError as denied:
            return error_response(denied.status, denied.code, denied.message, denied.headers)
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "invalid_json", "the request body is not valid JSON")
        if request.url.path.startswith("/v1/"):  # OpenAI answers every bad request with 400 and names the field
            return error_response(400, "invalid_request_error", _describe(errors), extra={"param": _param(errors)})
        return error_response(422, "validation_error", _describe(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # Starlette names only the first route of the path; list them all
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return error_response(exc.status_code, code, str(exc.detail), headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error")
