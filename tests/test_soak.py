"""`sola bench --soak-seconds` and `--crash-rounds` on a tiny scale: real servers, real kill -9."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from evaluation.crash import CrashOptions, Ledger, Tracked, check_audit_log, check_ledger, run_crash
from evaluation.facts import FACTS
from evaluation.soak import OVERSIZED, POISON, SoakOptions, oversized, plan, run_soak, split_ttft
from tests.pg import pg_schema_url, requires_pg
from tests.server import MODEL_CACHE

SOAK_FIELDS = {
    "seconds", "clients", "torch_threads", "wall_s", "requests", "requests_per_s", "tokens_per_s", "poisoned",
    "oversized", "edits_created", "revokes", "restores", "revoke_latency", "ttft", "rss_mb", "statuses",
    "server_errors_5xx", "hung_streams", "streams_without_done", "transport_errors", "unexpected_status",
    "stale_routes_after_revoke", "unrouted_after_restore", "ok", "samples", "shutdown_exit_code",
}  # fmt: skip


def model_home(tmp_path: Path) -> Path:
    """A data folder whose models/ is the suite's shared model cache."""
    home = tmp_path / "home"
    home.mkdir()
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(MODEL_CACHE.resolve(), target_is_directory=True)
    return home


# ---- pieces, no server ------------------------------------------------------------------------------------


def test_ttft_is_split_by_overlap_with_a_revoke() -> None:
    revokes = [(10.0, 11.0)]
    ttft = [(9.0, 10.5), (10.2, 10.4), (10.9, 12.0), (8.0, 9.0), (11.5, 12.0)]
    during, otherwise = split_ttft(ttft, revokes)
    assert during == pytest.approx([1.5, 0.2, 1.1]) and otherwise == pytest.approx([1.0, 0.5])


def test_oversized_requests_exceed_the_limits_they_aim_at() -> None:
    opts = SoakOptions(seconds=1, max_prompt_chars=4000, max_prompt_tokens=2048, max_body_bytes=256 * 1024)
    for kind in OVERSIZED:
        req = oversized(kind, opts)
        assert req.want_4xx and req.kind == kind
    chars = oversized("oversize_chars", opts).body
    assert isinstance(chars, dict) and len(chars["messages"][0]["content"]) > 4000
    tokens = oversized("oversize_tokens", opts).body
    assert isinstance(tokens, dict) and len(tokens["messages"][0]["content"]) <= 4000  # over tokens, not chars
    assert len(oversized("oversize_body", opts).body) > 256 * 1024
    kinds = {plan(random.Random(i), ["q?"], opts).kind for i in range(400)}
    assert {"stream", *POISON} <= kinds and kinds & set(OVERSIZED)


def test_crash_checks_catch_lost_revived_and_unasked_edits() -> None:
    ledger = Ledger(edits={"a": Tracked(FACTS[0]), "b": Tracked(FACTS[1], status="revoked")})
    edit = {"prompt": FACTS[0].prompt, "target": FACTS[0].target}
    stored = {"a": {**edit, "status": "active"}}
    assert check_ledger(ledger, stored) == ["acknowledged edit b ('Who wrote the novel Glass Harbor?') is missing"]
    stored["b"] = {"prompt": FACTS[1].prompt, "target": FACTS[1].target, "status": "active"}
    assert check_ledger(ledger, stored) == ["edit b is active, but the API acknowledged revoked"]
    ledger.edits["b"].pending = True  # the revoke was unanswered at the kill: either state is fine
    assert check_ledger(ledger, stored) == []
    stored["c"] = {**edit, "status": "active"}
    assert "nobody was told of" in check_ledger(ledger, stored)[0]
    ledger.unanswered_creates = 1
    assert check_ledger(ledger, stored) == []

    events = [
        {"seq": 1, "edit_id": "a", "kind": "created"},
        {"seq": 2, "edit_id": "b", "kind": "created"},
        {"seq": 3, "edit_id": "b", "kind": "revoked"},
    ]
    both = {"a": {"status": "active"}, "b": {"status": "revoked"}}
    assert check_audit_log(events, both) == []
    assert check_audit_log([events[0], events[2], events[1]], both)[0].startswith("audit log seqs")
    assert "replay" in check_audit_log(events, {**both, "b": {"status": "active"}})[0]


# ---- real servers -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_soak_has_no_5xx_hangs_or_stale_routes(tmp_path: Path) -> None:
    opts = SoakOptions(
        seconds=6, clients=3, data_dir=model_home(tmp_path), threads=1, first_edits=1, poison_share=0.25,
        oversize_share=0.25, stream_timeout=60,
    )  # fmt: skip
    result = run_soak(opts, tmp_path / "soak.json")
    assert set(result) >= SOAK_FIELDS and (tmp_path / "soak.json").is_file()
    assert result["server_errors_5xx"] == 0 and result["hung_streams"] == 0, result["samples"]
    assert result["ok"], result["samples"]
    assert result["edits_created"] >= 1 and result["revokes"] >= 1 and result["restores"] >= 1
    ttft = result["ttft"]
    assert result["revoke_latency"]["p50_ms"] > 0 and ttft["during_revoke"]["n"] + ttft["otherwise"]["n"] > 0
    assert result["rss_mb"]["start"] > 100 and result["shutdown_exit_code"] == 0


@pytest.mark.slow
def test_crash_rounds_on_sqlite_keep_every_invariant(tmp_path: Path) -> None:
    home, data = model_home(tmp_path), tmp_path / "data"
    opts = CrashOptions(2, home, threads=1, work_dir=data, setup_edits=1, edits_per_round=1, kill_after=(1.0, 3.0))
    result = run_crash(opts, tmp_path / "crash.json")
    assert result["ok"], result["rounds"]
    assert [r["round"] for r in result["rounds"]] == [1, 2] and result["database"] == "sqlite"


@pytest.mark.slow
@pytest.mark.postgres
@requires_pg
def test_crash_round_on_postgres_keeps_every_invariant(tmp_path: Path) -> None:
    with pg_schema_url() as url:
        home = model_home(tmp_path)
        opts = CrashOptions(
            1, home, threads=1, database_url=url, work_dir=tmp_path / "data", setup_edits=1, kill_after=(1.0, 3.0)
        )
        result = run_crash(opts, tmp_path / "crash.json")
    assert result["ok"], result["rounds"]
    assert result["database"] == "postgresql"
