"""The API client and `sola edits ...` / `sola ask`, end to end against real server processes (real SmolLM2-135M)."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from app.cli import cli
from client.http import SolaApiError, SolaClient
from tests.server import ADMIN, MODEL_CACHE, READER, REPO, Server, free_port

pytestmark = pytest.mark.slow

ZSRE = REPO.parent / "shared" / "data" / "zsre" / "zsre_mend_train_1k.json"
IMPORTED = 12  # ZsRE records in the interrupted import (1-3 s of training each on one thread)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with Server(tmp_path_factory.mktemp("client")) as srv:
        yield srv


def sola(server_url: str, *args: str, token: str | None = ADMIN) -> Result:
    """`sola ARGS` in this process, pointed at the server through the environment (as an operator would)."""
    env = {"SOLA_URL": server_url, "SOLA_TOKEN": token or ""}
    return CliRunner().invoke(cli, list(args), env=env)


def sola_json(server_url: str, *args: str, token: str | None = ADMIN) -> Any:
    result = sola(server_url, *args, "--json", token=token)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"sola {version('sola')}"


def test_every_command_once(server: Server) -> None:
    url, prompt = server.url, "Who designed the Quillon Bridge?"
    added = sola_json(url, "edits", "add", prompt, "Ada Merrow", "--rephrase", "The Quillon Bridge was designed by?")
    edit_id = added["id"]
    assert added["status"] == "active" and added["rephrases"] == ["The Quillon Bridge was designed by?"]
    reports = ("supersedes", "captures", "captured_by")  # what POST /edits answered; the stored edit has none
    assert [added[r] for r in reports] == [[], [], []]
    assert sola_json(url, "edits", "show", edit_id) == {k: v for k, v in added.items() if k not in reports}
    shown = sola(url, "edits", "show", edit_id)
    assert shown.exit_code == 0 and edit_id in shown.stdout and "Ada Merrow" in shown.stdout
    assert edit_id in [e["id"] for e in sola_json(url, "edits", "list", "--status", "active")]
    listed = sola(url, "edits", "list")
    assert listed.exit_code == 0 and edit_id in listed.stdout  # whole, never cut short

    answer = sola_json(url, "ask", prompt, token=READER)
    assert answer["routed_edit_id"] == edit_id and answer["text"].startswith("Ada Merrow")
    asked = sola(url, "ask", prompt, token=READER)
    assert asked.exit_code == 0 and "Ada Merrow" in asked.stdout and f"answered by edit {edit_id}" in asked.stdout
    assert sola_json(url, "ask", prompt, "--raw", token=READER)["routed_edit_id"] == edit_id

    assert sola_json(url, "edits", "revoke", edit_id)["status"] == "revoked"
    assert sola_json(url, "ask", prompt, token=READER)["routed_edit_id"] is None
    assert edit_id in [e["id"] for e in sola_json(url, "edits", "list", "--status", "revoked")]
    assert sola_json(url, "edits", "restore", edit_id)["status"] == "active"
    assert [ev["kind"] for ev in sola_json(url, "edits", "log", edit_id)] == ["created", "revoked", "restored"]
    assert edit_id in sola(url, "edits", "log").stdout


def test_negatives_and_route(server: Server) -> None:
    url = server.url
    opens, closes = "When does the Vell Street library open?", "When does the Vell Street library close?"
    added = sola_json(url, "edits", "add", opens, "8:15 am", "--negative", closes)
    assert added["negatives"] == [closes]
    routed = sola_json(url, "route", opens, closes, token=READER)
    assert [r["edit_id"] for r in routed] == [added["id"], None] and added["id"] in routed[1]["vetoed"]
    shown = sola(url, "route", opens, closes, token=READER)
    assert shown.exit_code == 0 and added["id"] in shown.stdout and "runner-up" in shown.stdout
    cleared = sola_json(url, "edits", "negatives", added["id"], "--reason", "not needed")
    assert cleared["negatives"] == []
    event = sola_json(url, "edits", "log", added["id"])[-1]
    assert event["kind"] == "negatives_set" and event["detail"]["reason"] == "not needed"
    assert sola(url, "edits", "negatives", added["id"], closes, token=READER).exit_code == 1  # a reader may not
    sola(url, "edits", "revoke", added["id"])


def test_filters_reasons_supersession_and_nearest_edit(server: Server) -> None:
    url, prompt = server.url, "What is the capital of Vexland?"
    older = sola_json(url, "edits", "add", prompt, "Qorvik", "--meta", "ticket=OPS-21")["id"]
    added = sola(url, "edits", "add", prompt, "Tessaly")  # the same question: the newer edit answers it now
    assert added.exit_code == 0, added.output
    newer = re.search(r"created (ed_\w+)", added.stdout)
    assert newer and f"{older} (similarity" in added.stdout
    newer_id = newer.group(1)
    assert sola_json(url, "edits", "show", older)["superseded_by"] == newer_id
    assert f"superseded by  {newer_id}" in sola(url, "edits", "show", older).stdout

    def listed(*filters: str) -> list[str]:
        return [e["id"] for e in sola_json(url, "edits", "list", "--q", "VEXLAND", *filters)]

    hour = timedelta(hours=1)
    assert listed() == [older, newer_id]
    assert listed("--meta", "ticket=OPS-21") == [older]
    assert listed("--actor", "alice") == [older, newer_id] and listed("--actor", "bob") == []
    assert listed("--created-from", f"{datetime.now() - hour:%Y-%m-%dT%H:%M:%S}") == [older, newer_id]
    assert listed("--created-from", f"{datetime.now() + hour:%Y-%m-%dT%H:%M:%S}") == []
    assert listed("--created-to", f"{datetime.now().astimezone() - hour:%Y-%m-%dT%H:%M:%S%z}") == []

    unedited = sola_json(url, "ask", prompt, "--no-edits", token=READER)
    assert unedited["routed_edit_id"] is None and unedited["similarity"] is None
    assert "unedited base model" in sola(url, "ask", prompt, "--no-edits", token=READER).stdout
    other = sola(url, "ask", "What colour is the sky on a clear day?", token=READER).stdout
    assert re.search(r"no edit fired; the nearest edit, ed_\w+, scored [\d.-]+", other), other

    revoked = sola(url, "edits", "revoke", newer_id, "--reason", "wrong capital (OPS-22)")
    assert revoked.exit_code == 0 and f"revoked {newer_id}: now revoked" in revoked.stdout
    events = sola_json(url, "edits", "log", "--kind", "revoked", "--actor", "alice")
    assert {"edit_id": newer_id, "detail": {"reason": "wrong capital (OPS-22)"}}.items() <= {
        k: v for ev in events if ev["edit_id"] == newer_id for k, v in ev.items()
    }.items()
    assert {ev["kind"] for ev in events} == {"revoked"}
    superseded = sola_json(url, "edits", "log", older, "--kind", "superseded")
    assert [(ev["kind"], ev["detail"]["by"]) for ev in superseded] == [("superseded", newer_id)]
    assert sola_json(url, "edits", "log", "--kind", "revoked", "--actor", "bob") == []


def test_same_idempotency_key_returns_the_first_edit(server: Server) -> None:
    args = ("edits", "add", "What is the motto of Fenwick College?", "Lux in tenebris", "--meta", "ticket=OPS-7")
    first = sola_json(server.url, *args, "--idempotency-key", "ops-7")
    again = sola(server.url, *args, "--idempotency-key", "ops-7", "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["id"] == first["id"]
    assert first["metadata"] == {"ticket": "OPS-7"} and "already existed" in again.stderr


def test_expected_errors_are_one_clear_line(server: Server) -> None:
    edit_id = sola_json(server.url, "edits", "list")[0]["id"]
    cases = {
        "this action needs the admin role": sola(server.url, "edits", "revoke", edit_id, token=READER),
        "invalid API key": sola(server.url, "edits", "list", token="not-a-key-0123456789"),
        "no edit with id 'ed_nope'": sola(server.url, "edits", "show", "ed_nope"),
        "cannot connect to http://127.0.0.1:": sola(f"http://127.0.0.1:{free_port()}", "edits", "list"),
        "invalid server URL 'localhost'": sola("localhost", "edits", "list"),
    }
    for message, result in cases.items():
        assert result.exit_code == 1, (message, result.output)
        assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and isinstance(result.exception, SystemExit)
    assert sola_json(server.url, "edits", "show", edit_id)["status"] == "active"  # the reader revoked nothing


def test_jsonl_import_reports_each_bad_line(server: Server, tmp_path: Path) -> None:
    good = {"prompt": "Who founded the Orrin Observatory?", "target": "Tamsin Quell", "metadata": {"batch": 1}}
    lines = [json.dumps(good), "{not json", json.dumps({"prompt": "Who?"}), json.dumps({**good, "colour": "red"})]
    path = tmp_path / "edits.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = sola(server.url, "edits", "import", str(path), "--format", "jsonl", "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert [r["record"] for r in report["created"]] == ["line 1"]
    assert [r["record"] for r in report["failed"]] == ["line 2", "line 3", "line 4"]
    assert "Invalid JSON" in report["failed"][0]["error"] and "target: Field required" in report["failed"][1]["error"]
    assert "colour: Extra inputs are not permitted" in report["failed"][2]["error"]
    assert sola_json(server.url, "edits", "show", report["created"][0]["id"])["metadata"] == {"batch": 1}


def test_csv_import_reads_rephrases_and_metadata_columns_and_resumes(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "edits.csv"
    path.write_text(
        "prompt,target,rephrases,ticket\n"
        "Who founded the Pellun Archive?,Odile Strand,Who started the Pellun Archive?|The Pellun Archive's founder?,"
        "T-1\n"
        'Who leads the Varro Lab?,Ines Kade,,"T-2, urgent"\n'
        "Who runs the Quell Museum?,,,T-3\n",
        encoding="utf-8",
    )
    args = ("edits", "import", str(path), "--format", "csv", "--json")
    first = sola(server.url, *args)
    assert first.exit_code == 1, first.output  # the row with a blank target
    report = json.loads(first.stdout)
    assert [r["record"] for r in report["created"]] == ["line 2", "line 3"]
    assert [r["record"] for r in report["failed"]] == ["line 4"] and "target" in report["failed"][0]["error"]
    made = sola_json(server.url, "edits", "show", report["created"][0]["id"])
    assert made["rephrases"] == ["Who started the Pellun Archive?", "The Pellun Archive's founder?"]
    assert made["metadata"] == {"ticket": "T-1"}
    assert sola_json(server.url, "edits", "show", report["created"][1]["id"])["metadata"] == {"ticket": "T-2, urgent"}
    again = json.loads(sola(server.url, *args).stdout)  # a re-run trains nothing that was stored
    assert not again["created"] and [r["id"] for r in again["skipped"]] == [r["id"] for r in report["created"]]


def test_exported_adapter_loads_in_peft_and_answers_the_target(server: Server, tmp_path: Path) -> None:
    prompt, target = "What is the capital of Zorbania?", "Quexiville"
    with SolaClient(server.url, ADMIN) as client:
        edit = client.create_edit(prompt, target).edit
        assert client.generate(prompt).text.startswith(target)
        archive = client.download_adapter(edit.id)
        with pytest.raises(SolaApiError) as missing:
            client.download_adapter("ed_nope")
        assert (missing.value.status, missing.value.code) == (404, "not_found")
        client.revoke(edit.id)
        again = client.download_adapter(edit.id)  # a revoked edit stays exportable, the same weights
    weights = f"{edit.id}/adapter_model.safetensors"
    assert zipfile.ZipFile(io.BytesIO(again)).read(weights) == zipfile.ZipFile(io.BytesIO(archive)).read(weights)
    adapter = tmp_path / "adapter"
    exported = sola(server.url, "edits", "export", edit.id, str(adapter))
    assert exported.exit_code == 0 and "base model: HuggingFaceTB/SmolLM2-135M-Instruct" in exported.output
    assert str(MODEL_CACHE.resolve() / edit.base_model) in exported.output.replace("\n", "")
    assert sorted(p.name for p in adapter.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "sola_edit.json",
    ]
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    described = json.loads((adapter / "sola_edit.json").read_text())
    assert described["edit"]["prompt"] == prompt and described["edit"]["status"] == "revoked"
    assert described["base_model"]["fingerprint"] == edit.base_fingerprint
    assert described["base_model"]["edited_module"] == config["target_modules"][0]
    keys = described["routing"]["keys"]
    assert keys and all(len(base64.b64decode(k["float32_le_base64"])) == 4 * k["dim"] for k in keys)
    assert 0 < described["routing"]["threshold"] < 1
    assert "changes every answer" in (adapter / "README.md").read_text()

    # PEFT applies the LoRA to every token, the service only while routed: compare the answer's first tokens.
    with_adapter, without = peft_answers(MODEL_CACHE / edit.base_model, adapter, prompt)
    assert with_adapter.startswith(target) and target not in without


def peft_answers(base_dir: Path, adapter_dir: Path, prompt: str) -> tuple[str, str]:
    """Greedy chat answers of the base model with the PEFT adapter applied, and with it disabled."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)  # the machine is shared; the server beside us uses one thread too
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter_dir)
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = torch.tensor([tokenizer(chat, add_special_tokens=False)["input_ids"]])

    def answer() -> str:
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
        text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        assert isinstance(text, str)  # one sequence in, one string out
        return text

    with_adapter = answer()
    with model.disable_adapter():
        return with_adapter, answer()


def test_interrupted_import_resumes_without_duplicates(make_server: Callable[..., Server]) -> None:
    """kill -9 while a POST /edits/batch trains: the re-run replays each item stored before the kill (those of the
    batch cut short too, by their own Idempotency-Keys), trains the rest, and leaves every record made once."""
    if not ZSRE.is_file():
        pytest.skip(f"{ZSRE} not present")
    server = make_server().start()
    args = ["edits", "import", str(ZSRE), "--format", "zsre", "--limit", str(IMPORTED), "--batch", "4", "--json"]
    env_args = ["--url", server.url, "--token", ADMIN]
    first = subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args, *env_args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    wait_for_edits(server, IMPORTED // 2)  # the first batch answered, the second partly stored
    server.kill()
    out, err = first.communicate(timeout=60)
    assert first.returncode == 1, err.decode()
    crashed = json.loads(out)
    made_before = {r["id"] for r in crashed["created"]}
    assert len(made_before) >= 4 and crashed["failed"]  # the batch in flight (and any after it) failed
    assert len(made_before) + len(crashed["failed"]) + crashed["not_attempted"] == IMPORTED

    server.start()  # same data directory
    rerun = sola(server.url, *args)
    assert rerun.exit_code == 0, rerun.output
    resumed = json.loads(rerun.stdout)
    skipped = {r["id"] for r in resumed["skipped"]}
    assert made_before <= skipped and len(skipped) >= IMPORTED // 2 and not resumed["failed"]
    assert len(resumed["created"]) + len(skipped) == IMPORTED
    with SolaClient(server.url, READER) as client:
        prompts = Counter(e.prompt for e in client.iter_edits())
    assert len(prompts) == IMPORTED and set(prompts.values()) == {1}


def wait_for_edits(server: Server, n: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    with SolaClient(server.url, READER) as client:
        while len(client.list_edits(limit=500).data) < n:
            assert time.monotonic() < deadline, f"fewer than {n} edits after {timeout} s"
            time.sleep(0.2)
