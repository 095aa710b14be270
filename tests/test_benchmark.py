"""`sola bench` on a tiny configuration: every section runs on the real model and real server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.serving import BenchOptions, bench_routing, run_bench
from tests.server import MODEL_CACHE

FIXTURES = Path(__file__).parent / "fixtures"


def test_routing_section_reports_one_point_per_index_size() -> None:
    opts = BenchOptions(routing_sizes=(1_000, 3_000))
    points = bench_routing(opts, dim=16)
    assert [p["keys"] for p in points] == [1_000, 3_000]
    assert all(p[f"{i}_batch{b}"] > 0 for p in points for i in ("flat", "default") for b in ("1_ms", "8_ms_per_query"))
    # Below the size where the default index turns approximate, it is the exact scan: full recall.
    assert all(not p["approximate"] and p["recall_at_1"] == p["recall_at_8"] == 1.0 for p in points)
    assert points[1]["index_mb"] > points[0]["index_mb"]


def test_make_keeps_defaults_for_unset_cli_options() -> None:
    full, quick = BenchOptions.make(False, repeats=None, real_edits=7), BenchOptions.make(True, repeats=None)
    assert full.repeats == BenchOptions().repeats and full.real_edits == 7
    assert quick.edit_counts == BenchOptions.quick().edit_counts


@pytest.mark.slow
def test_tiny_bench_writes_json_and_plot(tmp_path: Path) -> None:
    # Share the suite's model cache: the bench loads the model from <data_dir>/models.
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    (data_dir / "models").symlink_to(MODEL_CACHE.resolve(), target_is_directory=True)
    opts = BenchOptions(
        out_dir=tmp_path / "out",
        data_dir=data_dir,
        dataset=FIXTURES / "zsre_first20.json",
        edit_counts=(0, 2, 5),
        real_edits=2,
        routing_sizes=(1_000,),
        max_new_tokens=4,
        repeats=1,
        http_clients=(1, 2),
        http_seconds=1.0,
        http_edits=1,
        stream_tokens=4,
        synthetic_edits=10,
    )
    results = run_bench(opts)
    saved = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert (tmp_path / "out" / "bench.png").stat().st_size > 10_000

    points = saved["generation"]["points"]
    assert [(p["active_edits"], p["batch"]) for p in points] == [(0, 1), (0, 8), (2, 1), (2, 8), (5, 1), (5, 8)]
    # With real edits active, every row of both batches reaches its own edit (random filler never fires).
    assert all(p["rows_routed_as_expected"] == 1.0 for p in points)
    assert [p["distinct_edits"] for p in points] == [0, 0, 1, 2, 1, 2]
    assert all(p["edited_ms"] > 0 and p["unedited_ms"] > 0 for p in points)

    edits = saved["edit_latency"]
    assert edits["n"] == 2 and all(edits[f"{phase}_ms_median"] > 0 for phase in ("key", "train", "commit"))
    http = saved["http"]
    assert (http["edited"]["active_edits"], http["unedited"]["active_edits"]) == (11, 0)
    for run in (http["edited"], http["unedited"]):
        assert [lv["clients"] for lv in run["levels"]] == [1, 2]
        for lv in run["levels"]:
            assert lv["requests"] > 0 and lv["errors"] == 0 and lv["tokens_per_s"] > 0
            assert 0 < lv["ttft_p50_ms"] <= lv["ttft_p99_ms"] and 0 < lv["gap_p50_ms"] <= lv["gap_p99_ms"]
    assert http["query_while_training"]["idle_ms_median"] > 0
