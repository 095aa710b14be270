"""The operator console (/console) and the offline API docs in headless Chromium, against a real server process
(real SmolLM2-135M): sign in, make an edit through the form, find it, ask it, revoke it; a reader cannot.

The browser is Debian's Chromium (/usr/bin/chromium, which `make setup` installs when it runs as root), driven by
Playwright's Python API: no browser download. Every request to anywhere but the server is refused and recorded,
so the pages are proven to need nothing from a CDN. Each page is screenshotted into the test's tmp dir and copied
to bench-out/console-screenshots/ to look at, and each screenshot must show something (pixel variance).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageStat
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect, sync_playwright

from tests.server import ADMIN, READER, REPO, Server

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("SOLA_TEST_CHROMIUM", "/usr/bin/chromium"))
SHOTS = REPO / "bench-out" / "console-screenshots"
TRAIN_TIMEOUT_MS = 120_000  # one edit trains in seconds on one thread; queued behind other work, longer
ANSWER_TIMEOUT_MS = 30_000  # a generated answer: under a second alone, longer on a busy machine

if not CHROMIUM.is_file():
    pytest.skip(
        f"no Chromium at {CHROMIUM}: `make setup` as root installs it (apt-get install chromium), "
        "or point SOLA_TEST_CHROMIUM at one",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with Server(tmp_path_factory.mktemp("console")) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM))
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Screenshots go here and to bench-out/console-screenshots/ (emptied first: no stale pictures)."""
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    return tmp_path_factory.mktemp("screenshots")


@dataclass
class Offline:
    """A browser context that may reach the server only; what else a page asked for is recorded and refused."""

    context: BrowserContext
    outside: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def page(self) -> Page:
        page = self.context.new_page()
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        return page


@pytest.fixture
def offline(server: Server, browser: Browser) -> Iterator[Offline]:
    def only_the_server(route: Route) -> None:
        if route.request.url.startswith(server.url + "/"):
            route.continue_()
        else:
            recorder.outside.append(route.request.url)
            route.abort()

    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(30_000)
    recorder = Offline(context)
    context.route("**/*", only_the_server)
    yield recorder
    context.close()
    assert not recorder.outside, f"pages asked for files from outside the server: {recorder.outside}"
    assert not recorder.errors, f"uncaught errors in the pages: {recorder.errors}"


def screenshot(page: Page, shots: Path, name: str, full_page: bool = True) -> None:
    """Save the page (whole length, or the window for the long API documents) and check it is not blank."""
    path = shots / f"{name}.png"
    page.screenshot(path=path, full_page=full_page)
    shutil.copy(path, SHOTS / path.name)
    with Image.open(path) as image:
        spread = ImageStat.Stat(image.convert("L")).stddev[0]
    assert spread > 8, f"{name}: the screenshot looks blank (pixel stddev {spread:.1f})"


def sign_in(page: Page, server: Server, key: str) -> None:
    page.goto(server.url + "/")  # redirects to /console/
    page.fill("#login input[name=key]", key)
    page.click("#login button[type=submit]")
    expect(page.locator("#role")).to_be_visible()


def api_error(page: Page, message: str) -> None:
    """The API's own message, shown in an error box."""
    expect(page.locator(".error").filter(has_text=message)).to_be_visible()


def test_admin_makes_finds_asks_and_revokes_an_edit(server: Server, offline: Offline, shots: Path) -> None:
    prompt, target = "Who designed the Varrow Lighthouse?", "Imre Castellane"
    page = offline.page()
    page.goto(server.url + "/")
    assert page.url == server.url + "/console/"
    page.fill("#login input[name=key]", "not-a-key-0123456789")
    page.click("#login button[type=submit]")
    api_error(page, "invalid API key (HTTP 401 unauthorized)")
    screenshot(page, shots, "01-sign-in")
    page.fill("#login input[name=key]", ADMIN)
    page.click("#login button[type=submit]")
    expect(page.locator("#role")).to_have_text("admin key")

    # A 422 from the API is shown as its message, and nothing is made.
    page.goto(server.url + "/console/#/new")
    page.fill("input[name=prompt]", "   ")
    page.fill("input[name=target]", target)
    page.click("#train")
    api_error(page, "must not be empty or only whitespace (HTTP 422 validation_error)")

    page.fill("input[name=prompt]", prompt)
    page.fill("textarea[name=rephrases]", "The Varrow Lighthouse was designed by whom?")
    page.fill("textarea[name=metadata]", "ticket=OPS-12\nsource=console-test")
    page.click("#train")
    result = page.locator("#new-edit-result .success")
    expect(result).to_be_visible(timeout=TRAIN_TIMEOUT_MS)
    expect(result).to_contain_text("steps, loss")
    edit_id = result.locator("h2 a").inner_text()
    assert re.fullmatch(r"ed_[0-9a-f]{32}", edit_id)
    screenshot(page, shots, "02-new-edit")

    # Found in the table by text and by metadata, with its actor, status and training.
    page.goto(server.url + "/console/#/edits")
    page.fill("#edit-filters input[name=q]", "varrow")
    page.fill("#edit-filters input[name=meta]", "ticket=OPS-12")
    page.click("#edit-filters button[type=submit]")
    row = page.locator(f"#edits-table tr[data-id='{edit_id}']")
    expect(row).to_contain_text(prompt)
    expect(row).to_contain_text(target)
    expect(row).to_contain_text("alice")
    expect(row).to_contain_text("active")
    expect(row).to_contain_text(re.compile(r"\d+ steps · [\d.]+ s"))
    screenshot(page, shots, "03-edits")
    page.fill("#edit-filters input[name=q]", "no such words anywhere")
    page.click("#edit-filters button[type=submit]")
    expect(page.locator("#edit-results")).to_contain_text("No edits match")

    # The playground names the edit that answered.
    page.goto(server.url + "/console/#/playground")
    page.fill("textarea[name=prompt]", prompt)
    page.click("#ask")
    answer = page.locator("#answers .answer").first
    expect(answer.locator("blockquote")).to_contain_text(target, timeout=ANSWER_TIMEOUT_MS)
    expect(answer.locator(".routed")).to_contain_text(f"Answered by edit {edit_id}")
    expect(answer.locator(".routed")).to_contain_text("similarity")
    screenshot(page, shots, "04-playground")

    # The edit's page: fields, metadata, and "try it": its own prompt (prefilled) and any other question, each
    # routed and asked with and without edits. This edit fires for its prompt; an unrelated question reaches none.
    answer.locator(".routed a").click()
    facts = page.locator("#edit-facts")
    expect(facts).to_contain_text("OPS-12")
    expect(facts).to_contain_text("The Varrow Lighthouse was designed by whom?")
    questions = page.locator("textarea[name=questions]")
    expect(questions).to_have_value(prompt)
    questions.fill(f"{prompt}\nHow many legs does a spider have?")
    page.click("#try-it")
    tried = page.locator("#try-results .try-result")
    expect(tried).to_have_count(2, timeout=ANSWER_TIMEOUT_MS)
    expect(tried.nth(0)).to_have_attribute("data-fires", "this")
    expect(tried.nth(0).locator(".fires")).to_contain_text("This edit fires")
    expect(tried.nth(0).locator(".answer-with blockquote")).to_contain_text(target)
    expect(tried.nth(0).locator(".answer-without blockquote")).not_to_contain_text(target)
    expect(tried.nth(1)).to_have_attribute("data-fires", "none")
    expect(tried.nth(1).locator(".fires")).to_contain_text("No edit fires")
    expect(tried.nth(1).locator(".answer-with blockquote")).not_to_contain_text(target)
    expect(page.locator("#try-it-card")).to_contain_text("should show “no edit”")
    screenshot(page, shots, "05-edit")

    # Revoke asks first: cancelling changes nothing; confirming with a reason revokes, and the timeline says so.
    page.click("#revoke")
    expect(page.locator("#confirm-dialog")).to_be_visible()
    expect(page.locator("#confirm-dialog")).to_contain_text(target)
    page.click("#cancel")
    expect(page.locator("h1 .badge")).to_have_text("active")
    page.click("#revoke")
    page.fill("#confirm-dialog input[name=reason]", "wrong architect (OPS-13)")
    screenshot(page, shots, "05b-revoke-dialog")
    page.click("#confirm")
    expect(page.locator("h1 .badge")).to_have_text("revoked")
    revoked = page.locator("#timeline li[data-kind=revoked]")
    expect(revoked).to_contain_text("by alice")
    expect(revoked).to_contain_text("wrong architect (OPS-13)")
    expect(page.locator("#timeline li")).to_have_count(2)
    expect(page.locator("textarea[name=questions]")).to_have_value(prompt)
    page.click("#try-it")
    tried = page.locator("#try-results .try-result")
    expect(tried).to_have_attribute("data-fires", "none", timeout=ANSWER_TIMEOUT_MS)
    expect(tried.locator(".fires")).to_contain_text("No edit fires")
    expect(tried.locator(".fires")).to_contain_text("this edit is revoked")
    expect(tried.locator(".answer-with blockquote")).not_to_contain_text(target)
    expect(page.locator("#restore")).to_be_enabled()
    screenshot(page, shots, "06-edit-revoked")
    # Restore asks too, and keeps its reason; a second revoke elsewhere would be refused, not recorded.
    page.click("#restore")
    page.fill("#confirm-dialog input[name=reason]", "architect confirmed (OPS-14)")
    page.click("#confirm")
    expect(page.locator("h1 .badge")).to_have_text("active")
    expect(page.locator("#timeline li[data-kind=restored]")).to_contain_text("architect confirmed (OPS-14)")
    with server.client(ADMIN) as admin:
        admin.delete(f"/edits/{edit_id}", params={"reason": "wrong architect (OPS-13)"}).raise_for_status()

    # The audit log, newest first, filtered by kind; each row names its edit by id (a link) and prompt.
    page.goto(server.url + "/console/#/audit")
    first = page.locator("#events-table tbody tr").first
    expect(first).to_contain_text("revoked")
    expect(first.locator(".edit-ref")).to_contain_text(f"{prompt} → {target}")
    expect(first.locator(".edit-ref a")).to_have_attribute("title", edit_id)
    page.select_option("#audit-filters select[name=kind]", "created")
    expect(page.locator("#events-table tbody tr[data-kind=revoked]")).to_have_count(0)
    expect(page.locator("#events-table tbody tr[data-kind=created]").first).to_be_visible()
    page.select_option("#audit-filters select[name=kind]", "")
    expect(page.locator("#events-table tbody tr").first).to_contain_text("revoked")
    screenshot(page, shots, "07-audit-log")

    # A missing edit is the API's 404 message, not a broken page.
    page.goto(server.url + "/console/#/edits/ed_nope")
    api_error(page, "no edit with id 'ed_nope' (HTTP 404 not_found)")

    # The API document inside the console, with the key authorised.
    page.goto(server.url + "/console/#/api")
    expect(page.locator("#swagger-ui .opblock").first).to_be_visible()
    expect(page.locator("#swagger-ui .authorize.locked")).to_be_visible()
    screenshot(page, shots, "08-console-api", full_page=False)


def test_a_reader_cannot_revoke(server: Server, offline: Offline, shots: Path) -> None:
    with server.client(ADMIN) as admin:
        made = admin.post("/edits", json={"prompt": "What is the motto of Kelby Hall?", "target": "Semper vigilans"})
        assert made.status_code == 201, made.text
        edit_id = made.json()["id"]
    page = offline.page()
    sign_in(page, server, READER)
    expect(page.locator("#role")).to_have_text("reader key")
    page.goto(f"{server.url}/console/#/edits/{edit_id}")
    expect(page.locator("#revoke")).to_be_disabled()
    expect(page.locator(".actions-bar")).to_contain_text("need an admin key")
    screenshot(page, shots, "09-reader-edit")

    # Even with the button forced on, the server refuses, and the page shows its message.
    page.locator("#revoke").evaluate("button => { button.disabled = false; }")
    page.click("#revoke")
    page.click("#confirm")
    api_error(page, "this action needs the admin role; key 'rita' is a reader (HTTP 403 forbidden)")
    with server.client(READER) as reader:
        assert reader.get(f"/edits/{edit_id}").json()["status"] == "active"

    page.goto(server.url + "/console/#/new")
    expect(page.locator("#train")).to_be_disabled()


def test_docs_render_offline(server: Server, offline: Offline, shots: Path) -> None:
    # The docs stay behind a key (any role) when keys are set: a browser gets them with the header.
    assert httpx.get(f"{server.url}/docs").status_code == 401
    offline.context.set_extra_http_headers({"Authorization": f"Bearer {READER}"})
    page = offline.page()
    page.goto(server.url + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("SoLA model-editing service")
    expect(page.locator(".swagger-ui .opblock").first).to_be_visible()
    expect(page.locator(".swagger-ui button.authorize")).to_be_visible()  # the Bearer scheme's Authorize
    screenshot(page, shots, "10-docs", full_page=False)
    page.goto(server.url + "/redoc")
    expect(page.locator("redoc h1").first).to_contain_text("SoLA model-editing service")
    expect(page.locator("redoc").get_by_text("Create Edit").first).to_be_visible()
    screenshot(page, shots, "11-redoc", full_page=False)


def test_negatives_and_routes_in_the_console(server: Server, offline: Offline, shots: Path) -> None:
    opens, closes = "When does the Harrow Lane pharmacy open?", "When does the Harrow Lane pharmacy close?"
    page = offline.page()
    sign_in(page, server, ADMIN)
    page.goto(server.url + "/console/#/new")
    page.fill("input[name=prompt]", opens)
    page.fill("input[name=target]", "7:45 am")
    page.fill("textarea[name=negatives]", closes)
    page.click("#train")
    result = page.locator("#new-edit-result .success")
    expect(result).to_be_visible(timeout=TRAIN_TIMEOUT_MS)
    expect(page.locator("#captures")).to_contain_text("no older edit")
    edit_id = result.locator("h2 a").inner_text()

    # The playground routes each line: the edit's question reaches it, the negative is vetoed.
    page.goto(server.url + "/console/#/playground")
    page.fill("textarea[name=prompt]", f"{opens}\n{closes}")
    page.click("#route")
    rows = page.locator("#route-table tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0).locator("td").nth(1)).to_have_text(edit_id)
    expect(rows.nth(1).locator("td").nth(1)).to_have_text("none")
    expect(rows.nth(1).locator("td").nth(5)).to_have_text(edit_id)
    screenshot(page, shots, "12-playground-routes")

    # The edit's page lists its negatives; clearing them is an audited change.
    page.goto(f"{server.url}/console/#/edits/{edit_id}")
    expect(page.locator("#edit-facts")).to_contain_text(closes)
    page.fill("#negatives textarea", "")
    page.fill("input[name=negatives-reason]", "closing time is fine")
    page.click("#save-negatives")
    expect(page.locator("#timeline li[data-kind=negatives_set]")).to_contain_text("closing time is fine")
    expect(page.locator("#edit-facts")).not_to_contain_text(closes)
    screenshot(page, shots, "13-edit-negatives")


def test_superseded_edits_are_named_by_prompt(server: Server, offline: Offline, shots: Path) -> None:
    prompt = "Which quay does the ferry Saint Orla sail from on weekday mornings in winter?"
    old, new = "Carrick Bay", "Dunmore Quay"
    clipped = "Which quay does the ferry Saint Orla sail from on weekday…"  # cut under 60 characters, whole on hover
    with server.client(ADMIN) as admin:
        made = admin.post("/edits", json={"prompt": prompt, "target": old})
        assert made.status_code == 201, made.text
        older_id = made.json()["id"]
    page = offline.page()
    sign_in(page, server, ADMIN)

    # A new edit of the same question supersedes the older one: the box names it by its prompt and target.
    page.goto(server.url + "/console/#/new")
    page.fill("input[name=prompt]", prompt)
    page.fill("input[name=target]", new)
    page.click("#train")
    result = page.locator("#new-edit-result .success")
    expect(result).to_be_visible(timeout=TRAIN_TIMEOUT_MS)
    newer_id = result.locator("h2 a").inner_text()
    older = page.locator("#supersedes .edit-ref")
    expect(older).to_contain_text(f"{clipped} → {old}")
    expect(older.locator(".ref-prompt")).to_have_attribute("title", prompt)
    expect(older.locator("a")).to_have_attribute("title", older_id)
    screenshot(page, shots, "14-new-edit-supersedes")

    # The older edit's page names its successor, and so does its timeline; "try it" shows the successor firing.
    older.locator("a").click()
    expect(page.locator("#superseded-by .edit-ref")).to_contain_text(f"{clipped} → {new}")
    expect(page.locator("#superseded-by .edit-ref a")).to_have_attribute("href", f"#/edits/{newer_id}")
    expect(page.locator("#timeline li[data-kind=superseded] .edit-ref")).to_contain_text(new)
    page.click("#try-it")
    tried = page.locator("#try-results .try-result")
    expect(tried).to_have_attribute("data-fires", "other", timeout=ANSWER_TIMEOUT_MS)
    expect(tried.locator(".fires .edit-ref a")).to_have_attribute("title", newer_id)
    screenshot(page, shots, "15-edit-superseded")

    # In the audit log, the newer edit's row names the edit it superseded.
    page.goto(f"{server.url}/console/#/audit?edit={newer_id}")
    row = page.locator("#events-table tbody tr[data-kind=created]")
    expect(row.locator(".edit-ref").nth(0)).to_contain_text(f"{clipped} → {new}")
    expect(row.locator(".edit-ref").nth(1)).to_contain_text(f"{clipped} → {old}")
    screenshot(page, shots, "16-audit-supersedes")
