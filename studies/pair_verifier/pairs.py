"""Labelled (query, edit wording) pairs for training the pair model, from data no evaluation uses:
CounterFact records 1,500+ (after the 1,000 edited and 500 neighbour records) and hand-written templates."""

from __future__ import annotations

import collections
import json
import random
import re
from pathlib import Path

CF = Path(__file__).resolve().parents[3] / "shared" / "data" / "counterfact" / "counterfact_train.json"
BOUNDARY = re.compile(r"(\n|[.!?][\"')\]]*\s)")


def is_paraphrase(prompt: str, subject: str) -> bool:
    i = prompt.find(subject)
    return bool(BOUNDARY.search(prompt[:i] if i >= 0 else ""))


def counterfact_pairs(rng: random.Random, first: int = 1500) -> list[tuple[str, str, int, str]]:
    """(query, edit prompt, label, kind)."""
    raw = json.loads(CF.read_text())[first:]
    by_template: dict[str, list[dict]] = collections.defaultdict(list)
    template_of = {}
    for r in raw:
        t = r["prompt"].replace(r["subject"], "{}", 1)
        template_of[id(r)] = t
        by_template[t].append(r)
    # relation clusters: templates linked by a record's real paraphrase
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for r in raw:
        find(template_of[id(r)])
    templates = list(by_template)
    pairs = []
    subjects_words = [w for r in raw for w in r["subject"].split()]
    for r in raw:
        s, prompt = r["subject"], r["prompt"]
        if is_paraphrase(r["rephrase_prompt"], s):
            pairs.append((r["rephrase_prompt"], prompt, 1, "cf-para"))
        # same subject, another relation (a template never seen as this record's paraphrase)
        other = rng.choice(templates)
        if other != template_of[id(r)] and "{}" in other:
            pairs.append((other.replace("{}", s, 1), prompt, 0, "cf-same"))
        # sibling: one word of the subject replaced
        words = s.split()
        if len(words) >= 2:
            k = rng.randrange(len(words))
            sib = " ".join(words[:k] + [rng.choice(subjects_words)] + words[k + 1 :])
            if sib != s:
                q = prompt if rng.random() < 0.5 or not is_paraphrase(r["rephrase_prompt"], s) else r["rephrase_prompt"]
                pairs.append((q.replace(s, sib), prompt, 0, "cf-sibling"))
    return pairs


def template_pairs(files: list[Path], rng: random.Random, per_attribute: int = 6) -> list[tuple[str, str, int, str]]:
    pairs = []
    for file in files:
        for line in file.read_text().splitlines():
            if not line.strip():
                continue
            et = json.loads(line)
            attrs = [a for a in et["attributes"] if len(a["questions"]) >= 2]
            for subj in et["subjects"]:
                names = [subj["name"]] + ([subj["short"]] if subj.get("short") else [])
                for a in attrs:
                    qs = a["questions"] + [f"The {a['attribute']} of {{S}} is"]
                    for _ in range(per_attribute // 2):
                        q1, q2 = rng.sample(qs, 2)
                        n1, n2 = rng.choice(names), rng.choice(names)
                        pairs.append((q1.replace("{S}", n1), q2.replace("{S}", n2), 1, "tpl-para"))
                        b = rng.choice([x for x in attrs if x is not a] or [a])
                        if b is not a:
                            q3 = rng.choice(b["questions"])
                            pairs.append((q3.replace("{S}", n1), q2.replace("{S}", n2), 0, "tpl-same"))
                        if subj.get("siblings"):
                            sib = rng.choice(subj["siblings"])
                            q4 = q2 if rng.random() < 0.5 else q1
                            pairs.append((q4.replace("{S}", sib), q2.replace("{S}", n2), 0, "tpl-sibling"))
    return pairs


def identity_pairs(
    pairs: list[tuple[str, str, int, str]], rng: random.Random, n: int
) -> list[tuple[str, str, int, str]]:
    """The edit's own wording, and trivial variants of it (case, punctuation), as positives."""
    edits = sorted({e for _, e, _, _ in pairs})
    out = []
    for e in rng.sample(edits, min(n, len(edits))):
        variant = rng.choice([e, e.lower(), e.rstrip("?.! "), e.rstrip("?.! ").lower() + "?"])
        out.append((variant, e, 1, "identity"))
    return out


def _overlap(a: str, b: str) -> float:
    wa, wb = set(re.findall(r"\w+", a.lower())), set(re.findall(r"\w+", b.lower()))
    return len(wa & wb) / max(1, len(wa | wb))


def hard_template_pairs(
    files: list[Path], rng: random.Random, anchors_per_attribute: int = 3
) -> list[tuple[str, str, int, str]]:
    """Like template_pairs, with minimal pairs: the other attribute's question closest in words to the anchor
    (opening vs closing time in the same frame) as the negative, the same attribute's closest as a positive."""
    pairs = []
    for file in files:
        for line in file.read_text().splitlines():
            if not line.strip():
                continue
            et = json.loads(line)
            attrs = [a for a in et["attributes"] if len(a["questions"]) >= 2]
            for subj in et["subjects"]:
                names = [subj["name"]] + ([subj["short"]] if subj.get("short") else [])
                for a in attrs:
                    own = a["questions"] + [f"The {a['attribute']} of {{S}} is"]
                    others = [(q, b) for b in attrs if b is not a for q in b["questions"]]
                    for q in rng.sample(own, min(anchors_per_attribute, len(own))):
                        n1, n2 = rng.choice(names), rng.choice(names)
                        rest = [x for x in own if x != q]
                        close = max(rest, key=lambda x: _overlap(q, x))
                        pairs.append((close.replace("{S}", n1), q.replace("{S}", n2), 1, "tpl-para-close"))
                        pairs.append((rng.choice(rest).replace("{S}", n1), q.replace("{S}", n2), 1, "tpl-para"))
                        if others:
                            near = max(others, key=lambda x: _overlap(q, x[0]))[0]
                            pairs.append((near.replace("{S}", n1), q.replace("{S}", n2), 0, "tpl-same-close"))
                            pairs.append(
                                (rng.choice(others)[0].replace("{S}", n1), q.replace("{S}", n2), 0, "tpl-same")
                            )
                        if subj.get("siblings"):
                            sib = rng.choice(subj["siblings"])
                            q4 = q if rng.random() < 0.5 else rng.choice(rest)
                            pairs.append((q4.replace("{S}", sib), q.replace("{S}", n2), 0, "tpl-sibling"))
    return pairs
