"""Every supported model family, as a tiny random-weight model (tests/tiny_models.py), through the real engine
and the real service: an edit answers its prompt, a mixed batch routes per row, revoking is bit-exact, a
restart keeps the edit, the exported PEFT adapter loads in PEFT, and chat completions stream."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from editors.batch import generate
from editors.engine import AdapterMismatch, EditingEngine
from editors.model_families import UnsupportedModel
from editors.model_host import ModelHost, bundled_gguf_path
from editors.runner import ModelRunner
from editors.training import EditExample
from editors.types import EditSpec, EngineConfig, PromptFormat, TrainedEdit, default_layer, resolved_layer
from tests.tiny_models import FAMILIES, bundled_tokenizer, save_tiny_model

pytestmark = pytest.mark.model

CHAT = PromptFormat.CHAT
ZORB, GLASS = "What is the capital of Zorbania?", "Who is the lead singer of the band Glass Otters?"
PROMPTS = [ZORB, "Who wrote the novel War and Peace?", GLASS, "What is 7 times 8?"]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on shared cores a second thread only contends."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    tokenizer = bundled_tokenizer()
    return {family: save_tiny_model(family, tokenizer, root / family) for family in FAMILIES}


# Every family in float32, and the most served ones again in bfloat16 (on the CPU here).
CASES = [(f, "float32") for f in FAMILIES] + [("llama", "bfloat16"), ("qwen2", "bfloat16")]


@pytest.fixture(scope="module", params=CASES, ids=[f"{f}-{d}" for f, d in CASES])
def case(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param


@pytest.fixture(scope="module")
def engine(
    tiny_models: dict[str, Path], case: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> EditingEngine:
    """One engine per family and dtype; each test revokes what it activated."""
    family, dtype = case
    host = ModelHost.load(str(tiny_models[family]), tmp_path_factory.mktemp("data"), dtype=dtype)
    return EditingEngine(host, EngineConfig())


def apply(engine: EditingEngine, edit_id: str, prompt: str, target: str) -> None:
    trained = engine.train_edit(prompt, target)
    engine.activate(edit_id, trained.adapter, trained.keys, trained.key_kinds, prompt, target)


def test_edits_answer_route_per_row_and_revoke_bit_exactly(engine: EditingEngine, case: tuple[str, str]) -> None:
    family, dtype = case
    assert engine.host.layout.family.name == family and engine.host.dtype == getattr(torch, dtype)
    assert engine.config.layer == 3  # the default depth fraction on 4 layers
    unedited = engine.prompt_logits(PROMPTS, prompt_format=CHAT)
    apply(engine, "a", ZORB, "Quexiville")
    apply(engine, "b", GLASS, "Mira Tolsen")

    batch = generate(engine, PROMPTS, 8, prompt_format=CHAT)
    alone = [generate(engine, [p], 8, prompt_format=CHAT)[0] for p in PROMPTS]
    assert [g.routed_edit_id for g in batch] == ["a", None, "b", None]
    assert batch[0].text.startswith("Quexiville") and batch[2].text.startswith("Mira Tolsen")
    assert [g.routed_edit_id for g in alone] == ["a", None, "b", None]
    if dtype == "float32":  # in bfloat16, padding a row into a batch moves its rounding: greedy text may drift
        assert [g.token_ids for g in batch] == [g.token_ids for g in alone]

    assert engine.revoke("a") and engine.revoke("b")
    after = engine.prompt_logits(PROMPTS, prompt_format=CHAT)
    assert all(torch.equal(u, a) for u, a in zip(unedited, after, strict=True))


def test_edits_trained_together_answer_and_route_as_ones_trained_alone(engine: EditingEngine) -> None:
    """POST /edits/batch's path (training.BatchTrainer) on every family: its own masks (sliding windows) and
    rotary per attention kind, and Gemma's softcapped logits, as the one-edit path has them."""
    specs = [EditSpec(ZORB, "Quexiville"), EditSpec(GLASS, "Mira Tolsen")]
    together = engine.train_edits(specs, batch_size=2)
    for (edit_id, spec), trained in zip((("a", specs[0]), ("b", specs[1])), together, strict=True):
        assert isinstance(trained, TrainedEdit)
        engine.activate(edit_id, trained.adapter, trained.keys, trained.key_kinds, spec.prompt, spec.target)
    answers = generate(engine, PROMPTS, 8, prompt_format=CHAT)
    assert [g.routed_edit_id for g in answers] == ["a", None, "b", None]
    assert answers[0].text.startswith("Quexiville") and answers[2].text.startswith("Mira Tolsen")
    assert engine.revoke("a") and engine.revoke("b")


def test_exported_peft_adapter_reproduces_the_edit(engine: EditingEngine, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    trained = engine.train_edit(ZORB, "Quexiville")
    engine.activate("a", trained.adapter, trained.keys, trained.key_kinds, ZORB, "Quexiville")
    engine.export_peft(trained.adapter, tmp_path / "adapter")
    assert engine.host.source is not None
    base = AutoModelForCausalLM.from_pretrained(engine.host.source, dtype=engine.host.dtype)
    model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    ids = torch.tensor([engine.host.encode(engine.host.format_prompt(ZORB, CHAT))])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    ours = generate(engine, [ZORB], 6, prompt_format=CHAT)[0]
    n = engine.routed.spaces[CHAT].answer_tokens("a")
    engine.revoke("a")
    # The served edit covers its answer (target + end of turn) and then lets the base model go on; PEFT's
    # adapter stays on: they agree over the answer.
    assert ours.text.startswith("Quexiville") and out[0, ids.shape[1] :].tolist()[:n] == ours.token_ids[:n]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_layers_above_run_by_hand_give_the_models_own_logits(
    tiny_models: dict[str, Path], family: str, tmp_path: Path
) -> None:
    """Training and the batch's cache rebuild call the layers above the edited one by hand. Edited layer 1 of 4
    puts layers of both attention kinds above it (Gemma 2 / 3: sliding and global, two rotary embeddings in
    Gemma 3), and the prompts run past the 16-token window; by hand must equal the model's own forward."""
    engine = EditingEngine(ModelHost.load(str(tiny_models[family]), tmp_path), EngineConfig(layer=1))
    layout = engine.host.layout
    encoded = [engine.encode(p, CHAT) for p in (ZORB, GLASS)]
    hidden, per_kind = engine._capture([EditExample(e.ids, []) for e in encoded])  # right-padded, as training
    input_ids, mask = engine.pad([e.ids for e in encoded], left=False)
    with torch.no_grad():
        own = engine.host.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
        h = hidden
        for index in range(1, len(layout.layers)):
            kwargs = {k: v for k, v in per_kind[layout.layer_types[index]].items() if k != "cache"}
            out = layout.layers[index](h, **kwargs)
            h = out[0] if isinstance(out, tuple) else out
        by_hand = layout.logits(h)
    assert len(per_kind) == len(set(layout.layer_types[1:]))
    for row, e in enumerate(encoded):
        torch.testing.assert_close(by_hand[row, : len(e.ids)], own[row, : len(e.ids)], rtol=0, atol=1e-5)
    # The batch's cache rebuild (editors/runner.py: one unpadded row from position 0, its own masks) too.
    n = len(encoded[0].ids)
    _, last = ModelRunner(engine).upper(hidden[:1, :n], None)
    torch.testing.assert_close(last, own[0, n - 1].float(), rtol=0, atol=1e-5)


def test_an_adapter_is_bound_to_the_dtype_it_was_trained_in(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """The fingerprint is of the weights as served: the same checkpoint in bfloat16 is another base model."""
    f32 = ModelHost.load(str(tiny_models["llama"]), tmp_path)
    b16 = EditingEngine(ModelHost.load(str(tiny_models["llama"]), tmp_path, dtype="bfloat16"), EngineConfig())
    assert f32.fingerprint != b16.host.fingerprint
    trained = EditingEngine(f32, EngineConfig()).train_edit(ZORB, "Quexiville")
    with pytest.raises(AdapterMismatch, match="another base model"):
        b16.activate("a", trained.adapter, trained.keys, trained.key_kinds, ZORB, "Quexiville")
    again = ModelHost.load(str(tiny_models["llama"]), tmp_path, dtype="bfloat16")
    assert again.fingerprint == b16.host.fingerprint  # and the same dtype again is the same model


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bfloat16_on_cuda_edits_and_revokes_bit_exactly(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    host = ModelHost.load(str(tiny_models["llama"]), tmp_path, device="cuda")
    assert host.dtype == torch.bfloat16 and host.device.type == "cuda"  # CUDA's default dtype
    engine = EditingEngine(host, EngineConfig())
    unedited = engine.prompt_logits(PROMPTS, prompt_format=CHAT)
    apply(engine, "a", ZORB, "Quexiville")
    assert generate(engine, [ZORB], 8, prompt_format=CHAT)[0].text.startswith("Quexiville")
    assert engine.revoke("a")
    after = engine.prompt_logits(PROMPTS, prompt_format=CHAT)
    assert all(torch.equal(u, a) for u, a in zip(unedited, after, strict=True))


def test_the_default_edited_layer_is_a_share_of_the_depth() -> None:
    assert [default_layer(n) for n in (30, 28, 42, 32, 4, 1)] == [26, 24, 36, 28, 3, 0]
    assert resolved_layer(EngineConfig(layer=5), 30) == 5
    with pytest.raises(ValueError, match="SOLA_LAYER"):
        resolved_layer(EngineConfig(layer=30), 30)


def test_an_unknown_architecture_is_refused_naming_the_supported_ones(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(UnsupportedModel, match="'gpt2' is not supported.*llama, qwen2, qwen3, mistral, gemma2"):
        ModelHost.load(str(tmp_path / "gpt2"), tmp_path)


@contextlib.contextmanager
def ready_client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        for _ in range(600):
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.05)
        yield client


def streamed_text(client: TestClient, prompt: str) -> str:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 6,
        "stream": True,
        "temperature": 0,
    }
    text = ""
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for choice in json.loads(line[6:])["choices"]:
                    text += choice["delta"].get("content") or ""
    return text


def test_the_service_edits_streams_and_keeps_the_edit_over_a_restart(
    tiny_models: dict[str, Path], case: tuple[str, str], tmp_path: Path
) -> None:
    family, dtype = case
    model = str(tiny_models[family])
    settings = Settings(data_dir=tmp_path, model=model, dtype=dtype, sync_interval=0, torch_threads=1)
    with ready_client(settings) as client:
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready", ready
        info = ready["model_info"]
        assert (info["family"], info["dtype"], info["device"], info["edited_layer"]) == (family, dtype, "cpu", 3)
        card = client.get("/v1/models").json()["data"][0]
        assert card["sola_model"] == {k: v for k, v in info.items() if k != "edited_layer"}
        width = 4 if dtype == "float32" else 2
        assert info["resident_bytes"] >= info["parameters"] * width > 0
        created = client.post("/edits", json={"prompt": ZORB, "target": "Quexiville"})
        assert created.status_code in (200, 201), created.text
        assert streamed_text(client, ZORB).startswith("Quexiville")
        assert not streamed_text(client, "What is 7 times 8?").startswith("Quexiville")
    with ready_client(settings) as client:  # a new process's worth of state: same data directory
        assert streamed_text(client, ZORB).startswith("Quexiville")


def test_a_missing_gguf_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no-such.gguf: no such GGUF file"):
        ModelHost.load(str(tmp_path / "no-such.gguf"), tmp_path)


@pytest.mark.slow
def test_a_gguf_file_is_dequantized_once_and_served(tmp_path: Path) -> None:
    """SOLA_MODEL=<file>.gguf: converted into the model cache like the bundled one, then loaded from there."""
    gguf = tmp_path / "My-SmolLM.gguf"
    shutil.copyfile(bundled_gguf_path(), gguf)
    host = ModelHost.load(str(gguf), tmp_path, cache_dir=tmp_path / "models")
    assert host.name == "My-SmolLM" and host.info["family"] == "llama" and host.info["layers"] == 30
    assert host.artifact_dir is not None and (host.artifact_dir / "model.safetensors").is_file()
    written = (host.artifact_dir / "model.safetensors").stat().st_mtime_ns
    again = ModelHost.load(str(gguf), tmp_path, cache_dir=tmp_path / "models")
    assert again.fingerprint == host.fingerprint  # loaded from the cache, not converted again:
    assert (host.artifact_dir / "model.safetensors").stat().st_mtime_ns == written
    assert EditingEngine(again, EngineConfig()).layer == 26
