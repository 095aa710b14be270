"""The FastAPI dependencies the route modules share: the caller's principal at a role, and the service, the
repository and the settings that app/main.py keeps in the app's state."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from app.auth import Principal, require
from app.service import EditService
from app.settings import Settings
from storage.repository import Repository

Reader = Annotated[Principal, Depends(require("reader"))]
Admin = Annotated[Principal, Depends(require("admin"))]


def service(request: Request) -> EditService:
    return cast(EditService, request.app.state.service)


def repository(request: Request) -> Repository:
    return cast(Repository, request.app.state.repo)


def settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)


Service = Annotated[EditService, Depends(service)]
Repo = Annotated[Repository, Depends(repository)]
AppSettings = Annotated[Settings, Depends(settings)]
