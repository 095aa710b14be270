"""Do edits fire in real chat traffic through the OpenAI-compatible endpoint? (studies/chat_traffic/README.md)

    python -m studies.chat_traffic.run --n 30 --threads 1

Makes the first N ZsRE records edits on a real server (through POST /edits), then asks each record's
paraphrase through POST /v1/chat/completions three ways: alone, after the operator's own system prompt, and
as the last user turn after one unrelated exchange (the contexts `sola eval` uses for
generalization_in_context). Reported per way: the share routed to the paraphrase's own edit, to another
edit, and the share of answers that contain the target. The endpoint must not do worse in context than
alone (the routing issue's in-context figures come from the same path: the question is the last user turn).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import httpx
import openai

from evaluation.datasets import load_records
from evaluation.edit_metrics import contains_target
from evaluation.quality import IN_CONTEXT
from evaluation.server_process import ServerProcess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dataset", default="../shared/data/zsre/zsre_mend_train_1k.json")
    args = parser.parse_args()
    records = [r for r in load_records(args.dataset, "zsre", args.n).records if r.rephrase]
    env = {"SOLA_API_KEYS": "", "SOLA_TORCH_THREADS": str(args.threads), "SOLA_LOG_LEVEL": "warning"}
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(Path(tmp), Path("var/models"), **env) as server:
        own: dict[str, str] = {}
        with httpx.Client(base_url=server.url, timeout=600) as http:
            for r in records:
                made = http.post("/edits", json={"prompt": r.prompt, "target": r.target})
                made.raise_for_status()
                own[r.rephrase or ""] = made.json()["id"]
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=600)
        ways: dict[str, list[dict[str, str]]] = {"alone": []}
        for name, context in IN_CONTEXT.items():
            before = [{"role": "system", "content": context.system}] if context.system else []
            before += [{"role": role, "content": text} for role, text in context.history]
            ways[name] = before
        print(f"{len(records)} ZsRE edits; each paraphrase asked through /v1/chat/completions (greedy, 24 tokens)\n")
        print("| asked | routed to own edit | routed to another | answer contains target |")
        print("| --- | ---: | ---: | ---: |")
        for name, before in ways.items():
            hits = wrong = contains = 0
            for r in records:
                messages: list[Any] = [*before, {"role": "user", "content": r.rephrase or ""}]
                answer = client.chat.completions.create(model="m", messages=messages, temperature=0, max_tokens=24)
                edit = (answer.model_extra or {}).get("sola_edit")
                hits += int(edit is not None and edit["id"] == own[r.rephrase or ""])
                wrong += int(edit is not None and edit["id"] != own[r.rephrase or ""])
                contains += int(contains_target(answer.choices[0].message.content or "", r.target))
            n = len(records)
            print(f"| {name} | {hits / n:.3f} | {wrong / n:.3f} | {contains / n:.3f} |", flush=True)


if __name__ == "__main__":
    main()
