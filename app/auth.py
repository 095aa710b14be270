"""Bearer API keys with two roles: admin (edit, revoke, restore + everything) and reader (generate, read)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request

from app.errors import ApiError
from app.settings import ApiKey, Role

ANONYMOUS = "anonymous"
_RANK: dict[Role, int] = {"reader": 0, "admin": 1}


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role


def authenticate(keys: list[ApiKey], authorization: str | None) -> Principal:
    if not keys:  # no keys configured: local development only (serve() refuses non-loopback binds)
        return Principal(ANONYMOUS, "admin")
    challenge = {"WWW-Authenticate": "Bearer"}
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "missing bearer token (Authorization: Bearer <key>)", challenge)
    token = token.strip()
    match = None
    for key in keys:  # compare against every key in constant time: no early exit that leaks which matched
        if hmac.compare_digest(key.secret.encode(), token.encode()):
            match = key
    if match is None:
        raise ApiError(401, "unauthorized", "invalid API key", challenge)
    return Principal(match.name, match.role)


def require(role: Role) -> Callable[[Request], Awaitable[Principal]]:
    """FastAPI dependency: the caller's principal, with at least `role`."""

    async def dependency(request: Request) -> Principal:
        principal = authenticate(request.app.state.settings.keys, request.headers.get("authorization"))
        if _RANK[principal.role] < _RANK[role]:
            raise ApiError(
                403,
                "forbidden",
                f"this action needs the {role} role; key {principal.name!r} is a {principal.role}",
            )
        return principal

    return dependency
