"""The error an HTTP handler or dependency raises to answer with a given status and error body.

Its own module so that app/auth.py (which raises it) and app/errors.py (which turns it into the response, and
authenticates a request before describing what was wrong with it) import it without importing each other."""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
