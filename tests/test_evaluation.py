"""`sola eval` end to end on the real model (3 ZsRE edits), plus its model-free parts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from editors.types import EngineConfig, engine_config
from evaluation.quality import run_eval

FIXTURES = Path(__file__).parent / "fixtures"
RATES = [
    "reliability",
    "generalization",
    "locality",
    "reliability_exact",
    "generalization_exact",
    "routing_precision",
    "edit_routed_rate",
    "rephrase_routed_rate",
    "locality_routed_rate",
    "rollback_exact",
    "revoked_changed_before",
    "retention_after_rollback",
]


def test_layer_and_threshold_override_the_defaults() -> None:
    assert (engine_config(20, 0.5).layer, engine_config(20, 0.5).threshold) == (20, 0.5)
    assert engine_config(None, 0.5).layer == EngineConfig().layer
    assert engine_config(None, None) == EngineConfig()


def test_set_overrides_any_engine_knob_typed_as_its_field() -> None:
    config = engine_config(None, 0.5, ["target_loss=0.02", "max_steps=30", "bank_dtype=none", "layer = 24"])
    assert (config.target_loss, config.max_steps, config.bank_dtype, config.layer) == (0.02, 30, None, 24)
    assert config.threshold == 0.5 and isinstance(config.max_steps, int)
    with pytest.raises(ValueError, match="KEY one of: layer, threshold"):
        engine_config(None, None, ["treshold=0.3"])
    with pytest.raises(ValueError, match="max_steps takes a value of type int"):
        engine_config(None, None, ["max_steps=lots"])
    with pytest.raises(ValueError, match="rank cannot be none"):
        engine_config(None, None, ["rank=none"])
    assert engine_config(None, None, ["layer=none"]).layer is None  # the default share of the depth


def test_bad_file_fails_before_the_model_loads(tmp_path: Path) -> None:
    from evaluation.datasets import DatasetError

    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"src": "q", "rephrase": "r", "loc": "l", "loc_ans": "a"}]))
    with pytest.raises(DatasetError, match=r"record 0: missing field 'alt'"):
        run_eval(path, "zsre", 1, data_dir=tmp_path, out=None, model=str(tmp_path / "no-such-model"))


def test_cli_exits_2_naming_the_record_and_field(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from app.cli import cli

    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"src": "q", "alt": "a", "rephrase": "r", "loc": "l"}]))
    result = CliRunner().invoke(cli, ["eval", "--dataset", str(path), "--format", "zsre", "--n", "1"])
    assert result.exit_code == 2
    assert "record 0: missing field 'loc_ans'" in result.output


@pytest.mark.slow
def test_eval_three_zsre_edits_end_to_end(tmp_path: Path) -> None:
    from editors.model_host import ModelHost
    from tests.server import MODEL_CACHE

    host = ModelHost.load(None, tmp_path, cache_dir=MODEL_CACHE)
    out = tmp_path / "results.json"
    results = run_eval(
        FIXTURES / "zsre_first20.json", "zsre", 3, data_dir=tmp_path, out=out, host=host, cache_dir=MODEL_CACHE
    )
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(results))
    for key in RATES:
        assert saved[key] is not None and 0.0 <= saved[key] <= 1.0, key
    assert (
        saved["n"] == 3 and saved["n_revoked"] == 1 and saved["format"] == "zsre" and saved["prompt_format"] == "chat"
    )
    assert saved["model"] == "SmolLM2-135M-Instruct" and saved["layer"] == 26
    assert 0 < saved["edit_seconds_median"] <= saved["edit_seconds_p90"]
    assert saved["peak_rss_mb"] > 100
    # What the engine guarantees by design, whatever the tuning: exact rollback and untouched locality prompts.
    assert saved["rollback_exact"] == 1.0 and saved["revoked_changed_before"] == 1.0
    assert saved["rollback_counterfactual"] == 1.0  # revoking = an engine where the edit was never made
    assert saved["n_neighbour_prompts"] == 2 * 17  # records 4-20 of the fixture: prompts and paraphrases
    for key in ("neighbour_routed_rate", "neighbour_unchanged", "wrong_edit_rate", "degenerate_rate"):
        assert 0.0 <= saved[key] <= 1.0, key
    assert saved["generalization_in_context"] is not None
    assert saved["reliability"] > 0.5
    assert not math.isnan(saved["locality"])


# Measured per run; they differ between two runs of the same edits.
TIMINGS = {
    "edit_seconds_median",
    "edit_seconds_p90",
    "key_seconds_median",
    "train_seconds_median",
    "activate_seconds_median",
    "peak_rss_mb",
    "rss_mb",
    "eval_seconds",
    "phase_seconds",
    "routing_ms_median",
    "checkpoints",
}


@pytest.mark.slow  # two whole evals (each with its counterfactual engine): 18 min on the loaded 2-core machine
def test_checkpointed_eval_ends_where_a_plain_run_does(tmp_path: Path) -> None:
    from editors.model_host import ModelHost
    from tests.server import MODEL_CACHE

    path = tmp_path / "zsre_first5.json"  # 3 edits, 2 neighbour records: every probe, few rows
    path.write_text(json.dumps(json.loads((FIXTURES / "zsre_first20.json").read_text())[:5]))

    def run(checkpoints: list[int]) -> dict:
        host = ModelHost.load(None, tmp_path, cache_dir=MODEL_CACHE)  # an engine stays on its host: one each
        return run_eval(
            path, "zsre", 3, data_dir=tmp_path, out=None, host=host, cache_dir=MODEL_CACHE, checkpoints=checkpoints
        )

    plain, marked = run([]), run([1])
    assert [c["edits"] for c in marked["checkpoints"]] == [1, 3]
    assert [c["edits"] for c in plain["checkpoints"]] == [3]
    assert {k: v for k, v in marked.items() if k not in TIMINGS} == {k: v for k, v in plain.items() if k not in TIMINGS}
    final = {k: v for k, v in marked["checkpoints"][-1].items() if k not in TIMINGS}
    assert final == {k: v for k, v in plain["checkpoints"][0].items() if k not in TIMINGS}
    assert final["reliability"] == plain["reliability"] and final["keys"] > marked["checkpoints"][0]["keys"]
    # Every mark measures the quality metrics on the edits made so far, and its cost.
    for snapshot in marked["checkpoints"]:
        for key in ("reliability", "locality", "rephrase_routed_rate", "wrong_edit_rate", "neighbour_routed_rate"):
            assert 0.0 <= snapshot[key] <= 1.0, key
        assert snapshot["routing_ms_median"] > 0 and snapshot["rss_mb"] > 100
    assert marked["checkpoints"][0]["n_neighbour_prompts"] == plain["n_neighbour_prompts"] == 2 * 2
    assert marked["phase_seconds"]["editing"] > 0 and "counterfactual logits" in marked["phase_seconds"]


def test_checkpoints_outside_the_run_are_refused(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from app.cli import cli

    path = FIXTURES / "zsre_first20.json"
    args = ["eval", "--dataset", str(path), "--format", "zsre", "--data-dir", str(tmp_path)]
    result = CliRunner().invoke(cli, [*args, "--n", "5", "--checkpoints", "2,10"])
    assert result.exit_code == 2 and "checkpoints [10] outside 1..5" in result.output
    result = CliRunner().invoke(cli, [*args, "--checkpoints", "2,x"])
    assert result.exit_code == 2 and "edit counts separated by commas" in result.output


def test_curves_plot_each_checkpointed_metric_on_a_log_axis(tmp_path: Path) -> None:
    from evaluation.curves import curve, main

    snapshots = [{"edits": e, "reliability": 1.0 - e / 1e4, "rss_mb": 900.0 + e, "locality": None} for e in (10, 100)]
    results = {"format": "zsre", "prompt_format": "chat", "model": "m", "checkpoints": snapshots}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert curve(results, "reliability") == ([10, 100], [0.999, 0.99]) and curve(results, "locality") == ([], [])
    main([str(path), "--out", str(tmp_path / "docs" / "curve.png")])
    assert (tmp_path / "docs" / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path.write_text(json.dumps({**results, "checkpoints": []}))
    with pytest.raises(ValueError, match="no checkpoint measured"):
        main([str(path), "--out", str(tmp_path / "none.png")])
