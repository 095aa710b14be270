"""A typed HTTP client for the SoLA API: what `sola edits ...`, `sola ask` and the end-to-end tests speak through.

Every failure is a `SolaError` with a one-line message fit to show an operator: `SolaApiError` carries the API's own
`{"error": {"code", "message"}}`, `SolaConnectionError` a server that could not be reached or dropped the line.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from wire.schemas import (
    BulkEditOut,
    Capture,
    EditOut,
    EditPage,
    EventOut,
    EventPage,
    GenerateOut,
    RouteOut,
    RoutesOut,
)

DEFAULT_URL = "http://127.0.0.1:8000"
# An edit waits for its own training (SOLA_MAX_TRAIN_SECONDS, 30 s by default) behind whatever is queued.
DEFAULT_TIMEOUT = 300.0
PAGE_SIZE = 500  # the API's largest page: fewest round trips when walking a whole listing

M = TypeVar("M", bound=BaseModel)


class SolaError(Exception):
    """A call that did not succeed; str() is a one-line message for an operator."""


class SolaApiError(SolaError):
    """The server answered with an error: its HTTP status and the API's own code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class SolaConnectionError(SolaError):
    """No answer. `sent` is False when no connection was made, so the request certainly did not take effect."""

    def __init__(self, message: str, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class Superseded(BaseModel):
    """An active edit of the same question that a new edit now answers in place of (POST /edits `supersedes`)."""

    edit_id: str
    similarity: float


class _Created(BaseModel):
    # wire.schemas.Overlap reads `edit_id` from the service's `older_id` (a validation alias), so it cannot read
    # back the API's own JSON; this reads just the reports of the answer.
    supersedes: list[Superseded] = []
    captures: list[Capture] = []
    captured_by: list[Capture] = []


@dataclass(frozen=True)
class CreatedEdit:
    edit: EditOut
    replayed: bool  # an Idempotency-Key replay: the edit already existed and nothing was trained
    supersedes: list[Superseded] = field(default_factory=list)
    captures: list[Capture] = field(default_factory=list)  # older edits' wordings that now reach this edit
    captured_by: list[Capture] = field(default_factory=list)  # this edit's wordings that reach an older edit

    def as_json(self) -> dict[str, Any]:
        """The API's own answer: the edit and its reports."""
        return {
            **self.edit.model_dump(mode="json"),
            "supersedes": [s.model_dump() for s in self.supersedes],
            "captures": [c.model_dump() for c in self.captures],
            "captured_by": [c.model_dump() for c in self.captured_by],
        }


@dataclass(frozen=True)
class EditQuery:
    """GET /edits filters beside the status; each left at its default filters nothing."""

    actor: str | None = None  # the key name that created the edit
    q: str | None = None  # case-insensitive text in the prompt or target
    metadata: Mapping[str, str] = field(default_factory=dict)  # metadata[key] equals value (as text)
    created_from: datetime | None = None  # created at or after
    created_to: datetime | None = None  # created before

    def params(self) -> list[tuple[str, str]]:
        """Query parameters (a list: `metadata` repeats). A datetime without a zone is taken as local time."""
        params = [(name, value) for name, value in (("actor", self.actor), ("q", self.q)) if value is not None]
        params += [("metadata", f"{key}={value}") for key, value in self.metadata.items()]
        for name, moment in (("created_from", self.created_from), ("created_to", self.created_to)):
            if moment is not None:
                params.append((name, moment.astimezone().isoformat()))
        return params


def edit_request(
    prompt: str,
    target: str,
    rephrases: Sequence[str] = (),
    metadata: Mapping[str, Any] | None = None,
    negatives: Sequence[str] = (),
) -> dict[str, Any]:
    """The POST /edits body as the server hashes it for idempotency (negatives only when there are some)."""
    body = {"prompt": prompt, "target": target, "rephrases": list(rephrases), "metadata": dict(metadata or {})}
    return body | ({"negatives": list(negatives)} if negatives else {})


def content_key(body: Mapping[str, Any]) -> str:
    """An Idempotency-Key derived from the request itself: sending the same edit again replays, never duplicates."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check_url(url: str) -> str:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise SolaError(f"invalid server URL {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise SolaError(f"invalid server URL {url!r}: expected http(s)://host[:port]")
    return url.rstrip("/")


def _api_error(response: httpx.Response) -> SolaApiError:
    """The API's error body; anything else (a proxy's page, another service) as its status and first line."""
    try:
        error = response.json()["error"]
        return SolaApiError(response.status_code, str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        first_line = response.text.strip().splitlines()[0][:200] if response.text.strip() else response.reason_phrase
        return SolaApiError(response.status_code, f"http_{response.status_code}", first_line)


def _parse(model: type[M], response: httpx.Response) -> M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError:
        raise SolaError(f"{response.request.url} did not answer like a SoLA server") from None


def _edit_path(edit_id: str, *rest: str) -> str:
    return "/".join(["/edits", quote(edit_id, safe=""), *rest])


class SolaClient:
    """One connection pool to one server; use it as a context manager (or call close())."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = _check_url(url)
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> SolaClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise SolaConnectionError(f"cannot connect to {self.url}: {exc}", sent=False) from None
        except httpx.TimeoutException:
            raise SolaConnectionError(f"{self.url} did not answer within {self.timeout:g} s", sent=True) from None
        except httpx.TransportError as exc:
            raise SolaConnectionError(f"connection to {self.url} failed: {exc or type(exc).__name__}", True) from None
        if response.is_error:
            raise _api_error(response)
        return response

    # ---- edits ---------------------------------------------------------------------------------------------
    def create_edit(
        self,
        prompt: str,
        target: str,
        rephrases: Sequence[str] = (),
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        negatives: Sequence[str] = (),
    ) -> CreatedEdit:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = edit_request(prompt, target, rephrases, metadata, negatives)
        response = self._request("POST", "/edits", json=body, headers=headers)
        replayed = response.headers.get("Idempotent-Replayed", "").lower() == "true"
        reports = _parse(_Created, response)
        return CreatedEdit(
            _parse(EditOut, response), replayed, reports.supersedes, reports.captures, reports.captured_by
        )

    def create_edits(
        self, items: Sequence[tuple[Mapping[str, Any], str | None]], timeout: float | None = None
    ) -> BulkEditOut:
        """POST /edits/batch: (POST /edits body, its Idempotency-Key) pairs, trained together on the server; the
        answer says per item whether it was created, replayed or refused. `timeout`: the whole batch's (it trains)."""
        body = {"edits": [dict(edit) | ({"idempotency_key": key} if key else {}) for edit, key in items]}
        kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        return _parse(BulkEditOut, self._request("POST", "/edits/batch", json=body, **kwargs))

    def set_negatives(self, edit_id: str, negatives: Sequence[str], reason: str | None = None) -> EditOut:
        """Replace the edit's negatives (questions it must not answer); kept with a `negatives_set` event."""
        body: dict[str, Any] = {"negatives": list(negatives)} | ({"reason": reason} if reason else {})
        return _parse(EditOut, self._request("PATCH", _edit_path(edit_id), json=body))

    def route(self, questions: Sequence[str], chat: bool = True) -> list[RouteOut]:
        """Which edit each question would reach (score, runner-up, margin), without generating."""
        body = {"questions": list(questions), "chat": chat}
        return _parse(RoutesOut, self._request("POST", "/route", json=body)).routes

    def list_edits(
        self, status: str | None = None, limit: int = 50, after: str | None = None, where: EditQuery | None = None
    ) -> EditPage:
        params = [("limit", str(limit)), *(where or EditQuery()).params()]
        if status is not None:
            params.append(("status", status))
        if after is not None:
            params.append(("after", after))
        return _parse(EditPage, self._request("GET", "/edits", params=params))

    def iter_edits(
        self, status: str | None = None, page_size: int = PAGE_SIZE, where: EditQuery | None = None
    ) -> Iterator[EditOut]:
        """Every edit (of this status, matching `where`), oldest first, page by page."""
        after: str | None = None
        while True:
            page = self.list_edits(status, page_size, after, where)
            yield from page.data
            if not page.has_more or page.next_after is None:
                return
            after = page.next_after

    def get_edit(self, edit_id: str) -> EditOut:
        return _parse(EditOut, self._request("GET", _edit_path(edit_id)))

    def revoke(self, edit_id: str, reason: str | None = None) -> EditOut:
        """Take the edit out of service; the reason, if any, is kept in its `revoked` event."""
        body = {"reason": reason} if reason else None
        return _parse(EditOut, self._request("DELETE", _edit_path(edit_id), json=body))

    def restore(self, edit_id: str, reason: str | None = None) -> EditOut:
        """Serve a revoked edit again; the reason, if any, is kept in its `restored` event."""
        body = {"reason": reason} if reason else None
        return _parse(EditOut, self._request("POST", _edit_path(edit_id, "restore"), json=body))

    def download_adapter(self, edit_id: str) -> bytes:
        """The edit's adapter as a zip of a PEFT adapter directory (see `extract_adapter`)."""
        return self._request("GET", _edit_path(edit_id, "adapter")).content

    # ---- audit log -------------------------------------------------------------------------------------------
    def events(
        self,
        edit_id: str | None = None,
        page_size: int = PAGE_SIZE,
        kind: str | None = None,
        actor: str | None = None,
    ) -> Iterator[EventOut]:
        """The audit log (one edit's, or everyone's; of one kind or actor) in order, following `next_after`."""
        params: dict[str, str | int] = {"limit": page_size}
        if kind is None and actor is None and edit_id is not None:
            path = _edit_path(edit_id, "events")  # an unknown edit is a 404 here, not an empty log
        else:
            path = "/events"
            filters = {"edit_id": edit_id, "kind": kind, "actor": actor}
            params.update({name: value for name, value in filters.items() if value is not None})
        while True:
            page = _parse(EventPage, self._request("GET", path, params=params))
            yield from page.data
            if not page.has_more or page.next_after is None:
                return
            params["after"] = page.next_after

    # ---- generation ----------------------------------------------------------------------------------------
    def generate(self, prompt: str, chat: bool = True, max_new_tokens: int = 32, use_edits: bool = True) -> GenerateOut:
        """`use_edits=False`: the unedited base model answers (nothing is routed)."""
        body = {"prompt": prompt, "chat": chat, "max_new_tokens": max_new_tokens, "use_edits": use_edits}
        return _parse(GenerateOut, self._request("POST", "/generate", json=body))


def extract_adapter(archive: bytes, out_dir: Path) -> list[Path]:
    """Write the files of a downloaded adapter zip straight into `out_dir` (the zip holds one folder of them).

    Only plain file names are taken from the archive, so no member can write outside `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        zf = zipfile.ZipFile(io.BytesIO(archive))
    except zipfile.BadZipFile:
        raise SolaError("the server's adapter download is not a zip archive") from None
    with zf:
        for member in zf.infolist():
            name = PurePosixPath(member.filename).name
            if member.is_dir() or name in ("", ".", ".."):
                continue
            path = out_dir / name
            path.write_bytes(zf.read(member))
            written.append(path)
    return written
