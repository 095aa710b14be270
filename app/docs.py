"""The API document and its viewers, behind a key (any role) unless SOLA_PUBLIC_DOCS is set.

Swagger UI and ReDoc load their scripts from the app itself (app/console/vendor/), never a CDN, so the docs
render offline. Swagger UI's Authorize button takes a Bearer key: the document declares the scheme (app/auth.py).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from app.auth import require_key_unless
from app.console_routes import FAVICON_URL, VENDOR_URL

docs_router = APIRouter(include_in_schema=False)
DocsReader = Depends(require_key_unless("public_docs"))

# Nothing but this server: ReDoc's footer would fetch its logo from a CDN, and Swagger UI's validator badge an
# image from swagger.io. The inline script is Swagger UI's initialisation (FastAPI's page).
DOCS_CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'none'",
    ]
)


def _offline(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


@docs_router.get("/openapi.json", dependencies=[DocsReader])
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


def install_openapi(app: FastAPI) -> None:
    """Build the document once, as FastAPI does, with /v1's validation errors documented as OpenAI's."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = without_v1_validation_errors(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise the schema


def without_v1_validation_errors(spec: dict[str, Any]) -> dict[str, Any]:
    """FastAPI documents a 422 on every operation that takes parameters; /v1 answers invalid requests with
    400, as OpenAI does (app/errors.py), so its operations must not promise a 422."""
    for path, operations in spec.get("paths", {}).items():
        if path.startswith("/v1/"):
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
    schemas = spec.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        if f"#/components/schemas/{unused}" not in json.dumps(spec.get("paths", {})):
            schemas.pop(unused, None)
    return spec


@docs_router.get("/docs", dependencies=[DocsReader])
async def swagger_ui(request: Request) -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title=f"{request.app.title} - docs",
        swagger_js_url=f"{VENDOR_URL}/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url=f"{VENDOR_URL}/swagger-ui/swagger-ui.css",
        swagger_favicon_url=FAVICON_URL,
        swagger_ui_parameters={"validatorUrl": None},  # no badge from the online validator
    )
    return _offline(page)


@docs_router.get("/redoc", dependencies=[DocsReader])
async def redoc(request: Request) -> HTMLResponse:
    page = get_redoc_html(
        openapi_url="/openapi.json",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{VENDOR_URL}/redoc/redoc.standalone.js",
        redoc_favicon_url=FAVICON_URL,
        with_google_fonts=False,
    )
    return _offline(page)
