"""The API document and its viewers, behind a key (any role) unless SOLA_PUBLIC_DOCS is set."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from app.auth import require_key_unless

docs_router = APIRouter(include_in_schema=False)
DocsReader = Depends(require_key_unless("public_docs"))


@docs_router.get("/openapi.json", dependencies=[DocsReader])
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@docs_router.get("/docs", dependencies=[DocsReader])
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{request.app.title} - docs")


@docs_router.get("/redoc", dependencies=[DocsReader])
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(openapi_url="/openapi.json", title=f"{request.app.title} - ReDoc")
