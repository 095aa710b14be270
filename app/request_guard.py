"""Refuse what a browser on another site could send: cross-site writes and DNS-rebound requests.

A page on any site can make a visitor's browser POST a form (`application/x-www-form-urlencoded`,
`multipart/form-data`, `text/plain`) to a server on their machine, with no preflight; `POST
/edits/{id}/restore` takes no body, so a form post alone would restore a revoked edit. So writes must not
come with a form content type, nor with an `Origin` other than the server's own (browsers send it on every
cross-site write). A keyless server (loopback only, app/cli.py) also checks `Host`: a rebinding domain that
resolves to 127.0.0.1 still sends its own name there, and Ollama and Jupyter refuse it the same way.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import error_response

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")


def _hostname(host_header: str) -> str:
    """`example.com:8000` -> `example.com`; `[::1]:8000` -> `::1`."""
    return (urlsplit(f"//{host_header}").hostname or "").lower()


def _is_local_name(hostname: str) -> bool:
    if hostname == "localhost" or hostname.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(hostname)  # an address literal cannot be rebound: DNS is not involved
    except ValueError:
        return False
    return True


class RequestGuardMiddleware:
    def __init__(self, app: ASGIApp, keyless: bool, allowed_hosts: frozenset[str]) -> None:
        self.app = app
        self.keyless = keyless
        self.allowed_hosts = allowed_hosts  # lower-case host names; "*" allows any

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is not None:
            status, code, message = refusal
            await error_response(status, code, message)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if self.keyless and "*" not in self.allowed_hosts:
            name = _hostname(host)
            if not _is_local_name(name) and name not in self.allowed_hosts:
                return (
                    403,
                    "host_not_allowed",
                    f"Host {host!r} is not this server's name; a server without API keys answers only to "
                    "localhost and IP addresses (add the name to SOLA_ALLOWED_HOSTS)",
                )
        if scope["method"] not in WRITES:
            return None
        origin = headers.get("origin")
        if origin is not None and origin != "null" and urlsplit(origin).netloc.lower() != host.lower():
            return 403, "cross_origin", f"writes from another site ({origin}) are refused"
        if origin == "null":  # sandboxed frames and file:// pages: never the console
            return 403, "cross_origin", "writes from an opaque origin are refused"
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type in FORM_TYPES:
            return 415, "unsupported_media_type", f"send JSON (Content-Type: application/json), not {content_type}"
        return None
