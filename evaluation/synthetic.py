"""Synthetic edits of the real shapes, written straight into a database (scale and serving benchmarks).

Each is a rank-r adapter for the edited layer, serialised exactly as training does, with one chat and one
raw key of the model's width, clustered like real keys (2,000 topic directions), and its `created` event.
Their prompts name subjects no real question mentions ("Zorbania17"), so they never answer one: they are
load on the index and the bank, not answers.
"""

from __future__ import annotations

import hashlib
import sys
import uuid
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import insert
from tqdm import tqdm

from editors.adapter_io import serialize_adapter
from editors.model_host import ModelHost
from editors.types import EngineConfig, resolved_layer
from routing.key_index import normalise
from storage.db import make_db_engine
from storage.migrate import upgrade
from storage.models import Edit, EditAdapter, EditKey, Event, utcnow
from wire.kinds import EditStatus, EventKind

CHUNK = 2_000


def fill_synthetic_edits(
    url: str, n: int, cache: Path, seed: int = 0, stored_dtype: torch.dtype = torch.float16
) -> None:
    """n synthetic active edits, each with its `created` event, inserted in bulk."""
    host = ModelHost.load(None, cache.parent, cache_dir=cache)
    config = EngineConfig()
    layer = resolved_layer(config, len(host.layout.layers))
    down = host.layout.edited_projection(host.layout.layers[layer])
    dim = host.hidden_size
    rng = np.random.default_rng(seed)
    topics = normalise(rng.standard_normal((2_000, dim)))
    db = make_db_engine(url)
    upgrade(db)
    now = utcnow()
    with db.begin() as conn, tqdm(total=n, desc="synthetic edits", unit="edit", file=sys.stderr) as bar:
        for start in range(0, n, CHUNK):
            size = min(CHUNK, n - start)
            ids = [f"ed_{uuid.uuid4().hex}" for _ in range(size)]
            keys = normalise(
                np.repeat(topics[rng.integers(0, len(topics), size)], 2, axis=0)
                + rng.standard_normal((2 * size, dim)).astype(np.float32) / np.sqrt(dim)
            ).astype("<f4")
            adapters = [
                serialize_adapter(
                    torch.from_numpy(rng.standard_normal((config.rank, down.in_features), dtype=np.float32) * 0.01),
                    torch.from_numpy(rng.standard_normal((down.out_features, config.rank), dtype=np.float32) * 0.01),
                    layer=layer,
                    alpha=config.alpha,
                    fingerprint=host.fingerprint,
                    dtype=stored_dtype,  # as the default engine (float16 bank) stores what it trains
                )
                for _ in range(size)
            ]
            conn.execute(
                insert(Edit),
                [
                    {
                        "id": edit_id,
                        "status": EditStatus.ACTIVE,
                        "prompt": f"What is the motto of Zorbania{start + i}?",
                        "target": f"Quexiville {start + i}",
                        "rephrases": [],
                        "meta": {},
                        "created_at": now,
                        "created_by": "scale-bench",
                        "base_model": host.name,
                        "base_fingerprint": host.fingerprint,
                        "layer": layer,
                        "train_steps": 5,
                        "train_loss": 0.01,
                        "train_seconds": 0.8,
                    }
                    for i, edit_id in enumerate(ids)
                ],
            )
            conn.execute(
                insert(EditKey),
                [
                    {"edit_id": edit_id, "position": p, "kind": kind, "dim": dim, "vector": keys[2 * i + p].tobytes()}
                    for i, edit_id in enumerate(ids)
                    for p, kind in enumerate(("chat:prompt", "raw:prompt"))
                ],
            )
            conn.execute(
                insert(EditAdapter),
                [
                    {"edit_id": edit_id, "weights": blob, "sha256": hashlib.sha256(blob).hexdigest()}
                    for edit_id, blob in zip(ids, adapters, strict=True)
                ],
            )
            conn.execute(
                insert(Event),
                [
                    {"edit_id": edit_id, "kind": EventKind.CREATED, "actor": "scale-bench", "at": now, "detail": {}}
                    for edit_id in ids
                ],
            )
            bar.update(size)
    with db.connect() as conn:  # everything into the main file: it is renamed without its -wal next
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db.dispose()
