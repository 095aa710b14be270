"""The FastAPI dependencies the route modules share: the caller's principal at a role, and the service, the
repository and the settings that app/main.py keeps in the app's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.auth import Principal, require
from app.service import EditService
from app.settings import Settings
from storage.repository import Repository

Reader = Annotated[Principal, Depends(require("reader"))]
Admin = Annotated[Principal, Depends(require("admin"))]


def service(request: Request) -> EditService:
    return request.app.state.service


def repository(request: Request) -> Repository:
    return request.app.state.repo


def settings(request: Request) -> Settings:
    return request.app.state.settings


Service = Annotated[EditService, Depends(service)]
Repo = Annotated[Repository, Depends(repository)]
AppSettings = Annotated[Settings, Depends(settings)]
