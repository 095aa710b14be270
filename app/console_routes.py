"""The operator console at /console and the Swagger UI / ReDoc assets behind /docs and /redoc, all served from
app/console/ (plain HTML, CSS and JavaScript modules: no build step, nothing from a CDN).

These files hold no data and no secrets: every console view asks the HTTP API with the operator's key, which the
page sends as a Bearer token itself. So they are served without a key, like the probes; the API stays the one
way in to the data.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

CONSOLE_DIR = Path(__file__).with_name("console")
CONSOLE_URL = "/console"
VENDOR_URL = f"{CONSOLE_URL}/vendor"  # Swagger UI and ReDoc, as published on npm (see vendor/README.md)
FAVICON_URL = f"{CONSOLE_URL}/favicon.svg"

# The console keeps an API key in sessionStorage: run only its own scripts, so injected markup cannot read it.
# Inline styles are allowed because Swagger UI (the console's API view) sets them; inline scripts never are.
CONSOLE_CSP = "; ".join(
    [
        "default-src 'self'",
        "img-src 'self' data:",
        "style-src 'self' 'unsafe-inline'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ]
)


class ConsoleFiles(StaticFiles):
    """The console's files, each with the console's Content-Security-Policy."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.setdefault("Content-Security-Policy", CONSOLE_CSP)
        # Revalidate every time (a 304 when unchanged): after an upgrade no tab runs a stale mix of old modules.
        response.headers.setdefault("Cache-Control", "no-cache")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response


def mount_console(app: FastAPI) -> None:
    """`/console/` serves index.html (html=True); `/` and `/console` redirect there."""
    app.mount(CONSOLE_URL, ConsoleFiles(directory=CONSOLE_DIR, html=True), name="console")

    async def to_console() -> RedirectResponse:
        return RedirectResponse(f"{CONSOLE_URL}/")

    for path in ("/", CONSOLE_URL):
        app.add_api_route(path, to_console, methods=["GET"], include_in_schema=False)
