"""Service settings from the environment (prefix SOLA_): SOLA_DATA_DIR, SOLA_DATABASE_URL, SOLA_API_KEYS..."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Role = Literal["admin", "reader"]
ROLES: tuple[Role, ...] = ("admin", "reader")


@dataclass(frozen=True)
class ApiKey:
    name: str  # recorded as the actor / created_by
    secret: str
    role: Role


def default_torch_threads() -> int:
    """Half the cores, at least one. torch's own default (one thread per core) oversubscribes whenever anything
    else runs: the event loop, the tokenizer, the database, a neighbour process. On 2 shared cores it made an
    edit take 5x longer than one thread did; a thread per spare core keeps most of the speed without that."""
    return max(1, (os.cpu_count() or 2) // 2)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SOLA_", extra="ignore", protected_namespaces=())

    data_dir: Path = Path("./var")
    database_url: str | None = None  # default: SQLite file under data_dir
    # None: the bundled SmolLM2-135M-Instruct; else a local HF model directory or a single .gguf file
    model: str | None = None
    model_cache_dir: Path | None = None  # default: data_dir/models (tests share one across servers)
    # cpu, cuda or cuda:N (None: cuda when torch sees one); float32, bfloat16 or float16 (None: float32 on
    # the CPU, bfloat16 on CUDA). Edits are bound to the dtype (editors/model_host.py, the fingerprint).
    device: str | None = Field(None, pattern=r"^(cpu|cuda(:\d+)?)$")
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    # Intra-op CPU threads for torch; None: half the cores (default_torch_threads).
    torch_threads: int | None = Field(None, ge=1)
    # Editing method knobs; None keeps editors.types.EngineConfig's measured defaults.
    layer: int | None = None
    threshold: float | None = None  # routing score an edit needs to fire (chat and raw prompts)
    rank: int | None = None
    # Active adapters' storage in memory (unset: the engine's default, float16; "model": the model's dtype).
    bank_dtype: Literal["float16", "bfloat16", "model"] | None = None
    # Bounds on training one edit: it runs on the model worker, so every query waits while it does. An edit
    # not learnt within max_train_seconds fails with 422 training_timeout and commits nothing.
    max_train_steps: int | None = Field(None, ge=1)
    max_train_seconds: float = Field(30.0, gt=0.0)
    # POST /edits/batch: the most edits one request may hold, and how many train together in one batch.
    max_bulk_edits: int = Field(256, ge=1, le=10000)
    train_batch_size: int = Field(16, ge=1, le=256)
    # Keys at least this similar to an older active edit's key mark the older one as superseded.
    supersede_similarity: float = Field(0.999, gt=0.0, le=1.0)
    # A new edit's `captures` are read among the active edits owning its keys' this many nearest keys.
    capture_candidates: int = Field(16, ge=1, le=256)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_keys: str = ""  # "name:secret:role,..." with role admin|reader
    # With API keys set, the API document (/docs, /redoc, /openapi.json) and /metrics need a key (any role)
    # unless made public here; /healthz and /readyz are always public (probes carry no credentials).
    public_docs: bool = False
    public_metrics: bool = False
    # Without API keys the server answers only to Host localhost or an IP address (DNS rebinding): more
    # names here, comma-separated ("*": any; keys, when set, protect instead).
    allowed_hosts: str = ""

    max_new_tokens: int = Field(512, ge=1)  # upper bound a request may ask for
    max_prompt_chars: int = Field(4000, ge=1)
    max_target_chars: int = Field(1000, ge=1)
    max_rephrases: int = Field(16, ge=0)
    max_body_bytes: int = Field(256 * 1024, ge=1024)
    max_batch_size: int = Field(16, ge=1)  # generate requests decoded together in one forward pass
    # Prompt tokens one turn of the model thread prefills: a long prompt is prefilled in stretches of this
    # size between decode steps, so it delays the other rows by about one stretch (editors/batch.py).
    prefill_tokens: int = Field(96, ge=16)  # editors/batch.py PREFILL_TOKENS says why 96
    # The longest prompt, in tokens after the chat template, and the most prompt tokens one request may send
    # (a list of completion prompts counts all of them): characters bound nothing (combining marks).
    max_prompt_tokens: int = Field(2048, ge=16)
    max_request_prompt_tokens: int = Field(8192, ge=16)
    # Seconds between audit-log polls (0: off), for replicas. One poll with nothing new is one primary-key
    # query (under 1 ms with 100,000 edits), so a short interval is cheap and bounds the replica lag.
    sync_interval: float = Field(1.0, ge=0.0)
    log_level: str = "info"
    access_log: bool = True

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: str) -> str:
        parse_api_keys(value)  # fail at startup, not on the first request
        return value

    @property
    def allowed_host_names(self) -> frozenset[str]:
        return frozenset(h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip())

    @property
    def keys(self) -> list[ApiKey]:
        return parse_api_keys(self.api_keys)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'sola.db').resolve()}"

    @property
    def resolved_model_cache_dir(self) -> Path:
        return self.model_cache_dir or self.data_dir / "models"

    def engine_knobs(self) -> dict[str, Any]:
        """The editing engine's knobs set here, by EngineConfig field, for editors.types.engine_config; an unset
        one is left out, so it keeps its measured default."""
        knobs = {
            "layer": self.layer,
            "threshold": self.threshold,
            "rank": self.rank,
            "max_steps": self.max_train_steps,
            "max_train_seconds": self.max_train_seconds,
            "bank_dtype": self.bank_dtype,
        }
        knobs = {name: value for name, value in knobs.items() if value is not None}
        if knobs.get("bank_dtype") == "model":
            knobs["bank_dtype"] = None  # the model's own dtype
        return knobs


MIN_SECRET_CHARS = 16  # a short secret can be guessed online; `openssl rand -hex 16` gives 32


def parse_api_keys(spec: str) -> list[ApiKey]:
    keys: list[ApiKey] = []
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        parts = entry.split(":")
        if len(parts) != 3 or not all(parts):
            raise ValueError("SOLA_API_KEYS entries must look like name:secret:role")
        name, secret, role = parts
        if len(secret) < MIN_SECRET_CHARS:
            raise ValueError(f"API key {name!r}: secrets must be at least {MIN_SECRET_CHARS} characters")
        if role not in ROLES:
            raise ValueError(f"API key {name!r}: role must be one of {', '.join(ROLES)}, not {role!r}")
        if any(k.name == name for k in keys) or any(k.secret == secret for k in keys):
            raise ValueError(f"API key {name!r}: names and secrets must be unique")
        keys.append(ApiKey(name=name, secret=secret, role=role))
    return keys


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
