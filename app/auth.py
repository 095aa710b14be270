"""Bearer API keys with two roles: admin (edit, revoke, restore + everything) and reader (generate, read)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.api_error import ApiError
from app.settings import ApiKey, Role

ANONYMOUS = "anonymous"
# Declares the Bearer scheme in the OpenAPI document; the checks and their error bodies stay ours.
BEARER = HTTPBearer(
    scheme_name="bearer",
    auto_error=False,
    description="An API key from SOLA_API_KEYS: `Authorization: Bearer <secret>`",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]
_RANK: dict[Role, int] = {"reader": 0, "admin": 1}


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role


def authenticate(keys: list[ApiKey], token: str | None) -> Principal:
    """`token`: the bearer token of the Authorization header, None when there is none."""
    if not keys:  # no keys configured: local development only (serve() refuses non-loopback binds)
        return Principal(ANONYMOUS, "admin")
    challenge = {"WWW-Authenticate": "Bearer"}
    token = (token or "").strip()
    if not token:
        raise ApiError(401, "unauthorized", "missing bearer token (Authorization: Bearer <key>)", challenge)
    match = None
    for key in keys:  # compare against every key in constant time: no early exit that leaks which matched
        if hmac.compare_digest(key.secret.encode(), token.encode()):
            match = key
    if match is None:
        raise ApiError(401, "unauthorized", "invalid API key", challenge)
    return Principal(match.name, match.role)


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, for code outside FastAPI's dependencies."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" else None


def _caller(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    return authenticate(request.app.state.settings.keys, credentials.credentials if credentials else None)


def require(role: Role) -> Callable[..., Awaitable[Principal]]:
    """FastAPI dependency: the caller's principal, with at least `role`."""

    async def dependency(request: Request, credentials: Credentials) -> Principal:
        principal = _caller(request, credentials)
        if _RANK[principal.role] < _RANK[role]:
            raise ApiError(
                403,
                "forbidden",
                f"this action needs the {role} role; key {principal.name!r} is a {principal.role}",
            )
        return principal

    return dependency


def require_key_unless(public_setting: str) -> Callable[..., Awaitable[None]]:
    """FastAPI dependency: any valid key (reader or admin), unless the named boolean setting is true."""

    async def dependency(request: Request, credentials: Credentials) -> None:
        if not getattr(request.app.state.settings, public_setting):
            _caller(request, credentials)

    return dependency
