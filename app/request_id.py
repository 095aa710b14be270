"""Every response carries an `X-Request-Id`: the caller's own (if it sent a sane one) or a fresh one, so a
client's report and the server's log can be matched."""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "x-request-id"
_SANE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope.get("headers") or []).get(HEADER.encode(), b"").decode("latin-1")
        request_id = sent if _SANE.match(sent) else f"req-{uuid.uuid4().hex}"

        async def with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if HEADER not in headers:  # an endpoint that names its own id (the /v1 completion id) keeps it
                    headers[HEADER] = request_id
            await send(message)

        await self.app(scope, receive, with_id)
