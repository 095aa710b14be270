"""Build routing/data/relation_templates.json: known phrasings of one relation, subject-masked and clustered.

    .venv/bin/python -m studies.relation_templates.build

Two sources, neither used by any evaluation:
- CounterFact records 1,500 onward (after the 1,000 edited and 500 neighbour records an n=1000 eval uses):
  each record's prompt template is linked to the template of its rephrase when that rephrase is one of
  ROME's paraphrase prompts (a sentence boundary before the subject: the same relation, another wording).
  A link needs two records behind it, so one mislabelled row cannot merge two relations.
- the attribute questions in this folder (part-*.jsonl: 30 entity types, about 400 attributes, 8 wordings
  each, written for this project): the wordings of one attribute are one relation.
A template must keep at least one content word besides the subject ("{} is" says nothing).
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

from editors.model_host import ModelHost
from routing import lexical
from routing.relation import TEMPLATES, masked, relation_words

HERE = Path(__file__).parent
COUNTERFACT = Path(__file__).resolve().parents[3] / "shared" / "data" / "counterfact" / "counterfact_train.json"
FIRST_UNUSED = 1500
SUPPORT = 2


def main() -> None:
    host = ModelHost.load(None, Path("var"))
    is_common = host.is_common_word
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def specific(template: str | None) -> bool:
        return template is not None and bool(relation_words(template.replace("{}", " "), frozenset()))

    links: collections.Counter[tuple[str, str]] = collections.Counter()
    for r in json.loads(COUNTERFACT.read_text())[FIRST_UNUSED:]:
        subject = lexical.subject_words(r["prompt"], is_common)
        a = masked(r["prompt"], subject, is_common)
        at = r["rephrase_prompt"].find(r["subject"])
        if not specific(a) or not (at > 0 and lexical.sentence_cuts(r["rephrase_prompt"][:at] + " ")):
            continue
        b = masked(r["rephrase_prompt"], subject, is_common)
        if specific(b) and a != b:
            links[tuple(sorted((a, b)))] += 1  # type: ignore[arg-type]
    for (a, b), n in links.items():
        if n >= SUPPORT:
            parent[find(a)] = find(b)
    for file in sorted(HERE.glob("part-*.jsonl")):
        for line in file.read_text().splitlines():
            if not line.strip():
                continue
            kind = json.loads(line)
            for subj in kind["subjects"][:3]:
                subject = lexical.subject_words(subj["name"], is_common)
                for attribute in kind["attributes"]:
                    wordings = [
                        masked(q.replace("{S}", subj["name"]), subject, is_common) for q in attribute["questions"]
                    ]
                    kept = [w for w in wordings if specific(w)]
                    for w in kept[1:]:
                        parent[find(kept[0])] = find(w)  # type: ignore[index]
    clusters: dict[str, list[str]] = collections.defaultdict(list)
    for template in parent:
        clusters[find(template)].append(template)
    kept = sorted(sorted(members) for members in clusters.values() if len(members) >= 2)
    TEMPLATES.parent.mkdir(exist_ok=True)
    TEMPLATES.write_text(json.dumps({"source": __doc__.split("\n")[0], "clusters": kept}, indent=0) + "\n")
    print(f"{sum(map(len, kept))} templates in {len(kept)} relations -> {TEMPLATES}")


if __name__ == "__main__":
    main()
