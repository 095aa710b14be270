"""Relation gate study: can a projection learnt once per base model tell a paraphrase from another relation?

    python -m studies.relation_gate.run --threads 1            # ~35 min on one thread, features cached
    python -m studies.relation_gate.run --synthetic --threads 1

The router fires an edit on same-subject questions about another relation (KnowEdit's
Relation_Specificity), because their content vector and subject words match the edit. This study asks
whether a second check on a *relation vector* could block them while keeping paraphrases:
relation(q) = normalise(W f(q)), where f is a question state at the edited layer (the last question
token's centred state, or the content vector) and W [D, 128] is learnt once on public data that no dev
metric uses: CounterFact records from `--train-from` on (after the 1,000 edited and 500 neighbour
records), each record's prompt and paraphrase pulled together and pushed away from its subject put into
two other CounterFact templates (InfoNCE, temperature 0.1). `--synthetic` adds hand-written phrasings of
46 common Wikidata properties (the table below) about CounterFact subjects: same relation,
other wording together; other relations of the same subject apart.

Printed: the share of paraphrase pairs (edit prompt, its paraphrase; chat, and raw for CounterFact) whose
relation cosine passes a cut, against the share of same-subject pairs (edit prompt, each
Relation_Specificity prompt of its record) that pass it, for the first 300 records of each dev file.
A gate is useful only if some cut passes ~all paraphrases and <= 5% of same-subject pairs.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from editors.engine import EditingEngine
from editors.model_host import ModelHost
from editors.training import EditExample
from editors.types import PromptFormat
from evaluation.datasets import load_records

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"  # ../shared/data of the repository
TEMPERATURE = 0.1
# Generic phrasings of common Wikidata properties (written for this study, not taken from any record).
RELATIONS = {
    "occupation": ["The occupation of {} is", "What is the occupation of {}?", "{} works as a", "What does {} do?"],
    "gender": ["The gender of {} is", "What is the gender of {}?", "{}'s gender is", "Is {} male or female?"],
    "birthplace": [
        "The place of birth of {} is",
        "Where was {} born?",
        "{} was born in the city of",
        "{}'s birthplace is",
    ],
    "deathplace": ["The place of death of {} is", "Where did {} die?", "{} died in the city of", "{} passed away in"],
    "birthdate": ["The date of birth of {} is", "When was {} born?", "{} was born on", "{}'s birthday is"],
    "citizenship": [
        "The country of citizenship of {} is",
        "Which country is {} a citizen of?",
        "{} holds citizenship of",
        "{}'s nationality is",
    ],
    "father": ["The father of {} is", "Who is the father of {}?", "{}'s father is", "{} is the son or daughter of"],
    "mother": ["The mother of {} is", "Who is the mother of {}?", "{}'s mother is", "{} was born to the mother"],
    "spouse": ["The spouse of {} is", "Who is {} married to?", "{}'s husband or wife is", "{} is married to"],
    "sibling": [
        "The sibling of {} is",
        "Who is the brother or sister of {}?",
        "{}'s sibling is",
        "{} has a sibling named",
    ],
    "child": ["The child of {} is", "Who is the child of {}?", "{}'s son or daughter is", "{} is the parent of"],
    "employer": ["The employer of {} is", "Who does {} work for?", "{} is employed by", "{}'s employer is"],
    "education": ["The alma mater of {} is", "Where did {} study?", "{} graduated from", "{} was educated at"],
    "award": ["The award received by {} is", "Which award did {} win?", "{} won the award", "{} was honoured with the"],
    "position": ["The position held by {} is", "What position does {} hold?", "{} served as the", "{}'s office is"],
    "team": [
        "The sports team of {} is",
        "Which team does {} play for?",
        "{} plays for the team",
        "{} is a member of the sports club",
    ],
    "sport": [
        "The sport played by {} is",
        "Which sport does {} play?",
        "{} is a professional player of",
        "{}'s sport is",
    ],
    "genre": ["The genre of {} is", "What genre is {}?", "{} belongs to the genre of", "{} is a work in the genre"],
    "label": [
        "The record label of {} is",
        "Which label released {}?",
        "{} is signed to the label",
        "{}'s record company is",
    ],
    "instrument": [
        "The instrument played by {} is",
        "Which instrument does {} play?",
        "{} plays the",
        "{} is a player of the",
    ],
    "language": [
        "The native language of {} is",
        "What language does {} speak?",
        "{}'s mother tongue is",
        "{} is a native speaker of",
    ],
    "official_language": [
        "The official language of {} is",
        "What is the official language of {}?",
        "In {}, the official language is",
        "The language spoken officially in {} is",
    ],
    "author": ["The author of {} is", "Who wrote {}?", "{} was written by", "{}'s writer is"],
    "director": ["The director of {} is", "Who directed {}?", "{} was directed by", "{}'s director is"],
    "composer": ["The composer of {} is", "Who composed {}?", "The music of {} was composed by", "{}'s composer is"],
    "publisher": ["The publisher of {} is", "Who published {}?", "{} was published by", "{}'s publisher is"],
    "developer": ["The developer of {} is", "Who developed {}?", "{} was developed by", "{}'s developer is"],
    "manufacturer": ["The manufacturer of {} is", "Who makes {}?", "{} is manufactured by", "{}'s maker is"],
    "founder": ["The founder of {} is", "Who founded {}?", "{} was founded by", "{}'s founder is"],
    "headquarters": [
        "The headquarters of {} is located in",
        "Where is {} headquartered?",
        "{} has its headquarters in",
        "{}'s head office is in",
    ],
    "inception": [
        "The year {} was founded is",
        "When was {} founded?",
        "{} was established in the year",
        "{}'s founding date is",
    ],
    "country": [
        "The country of {} is",
        "Which country is {} in?",
        "{} is located in the country",
        "{} lies in the country of",
    ],
    "capital": [
        "The capital of {} is",
        "What is the capital of {}?",
        "{}'s capital city is",
        "The seat of government of {} is",
    ],
    "continent": [
        "The continent of {} is",
        "Which continent is {} on?",
        "{} is located on the continent of",
        "{} lies in",
    ],
    "population": [
        "The population of {} is",
        "How many people live in {}?",
        "{} has a population of",
        "The number of inhabitants of {} is",
    ],
    "currency": [
        "The currency of {} is",
        "What currency is used in {}?",
        "In {}, people pay with the",
        "{}'s currency is",
    ],
    "religion": ["The religion of {} is", "What religion does {} follow?", "{} is a follower of", "{}'s faith is"],
    "party": [
        "The political party of {} is",
        "Which party does {} belong to?",
        "{} is a member of the party",
        "{}'s party affiliation is",
    ],
    "network": [
        "The original network of {} is",
        "Which channel aired {}?",
        "{} was first broadcast on",
        "{} premiered on the network",
    ],
    "cast": ["The cast members of {} are", "Who starred in {}?", "{} stars the actor", "The lead actor of {} is"],
    "owner": ["The owner of {} is", "Who owns {}?", "{} is owned by", "{}'s owner is"],
    "ceo": [
        "The CEO of {} is",
        "Who is the chief executive of {}?",
        "{} is led by the chief executive",
        "{}'s chief executive officer is",
    ],
    "named_after": [
        "{} is named after",
        "Who or what is {} named after?",
        "The name of {} comes from",
        "{} takes its name from",
    ],
    "field": [
        "The field of work of {} is",
        "What field does {} work in?",
        "{} specializes in the field of",
        "{}'s area of expertise is",
    ],
    "height": ["The height of {} is", "How tall is {}?", "{} stands at a height of", "{}'s height is"],
    "date_of_death": ["The date of death of {} is", "When did {} die?", "{} died on", "{}'s death date is"],
}


# The first 40 CounterFact records' paraphrases, read by hand: which ask another relation of the subject
# ("native language" -> "was born in") or name the relation only vaguely; the other 21 ask the edited one.
OTHER_RELATION = {3, 4, 10, 16, 19, 21, 24, 25, 28, 32, 34, 35, 38}
VAGUE_RELATION = {0, 6, 14, 15, 30, 36}

# Which question state f(q) the relation vector is made from; inputs [..., 2, D] -> [..., D or 2D].
FEATURES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "last question token": lambda x: x[..., 1, :],
    "content vector": lambda x: x[..., 0, :],
    "both": lambda x: x.flatten(-2),
}


def features(engine: EditingEngine, texts: Sequence[str], fmt: PromptFormat) -> np.ndarray:
    """[n, 2, D]: per text, the content vector (the router's) and the last question token's centred state."""
    encoder = engine.routed.spaces[fmt].encoder
    out = np.zeros((len(texts), 2, engine.host.hidden_size), np.float32)
    for start in range(0, len(texts), 32):
        encoded = [engine.encode(t, fmt) for t in texts[start : start + 32]]
        hidden, _ = engine._capture([EditExample(e.ids, []) for e in encoded])
        for i, e in enumerate(encoded):
            span = hidden[i, e.span[0] : e.span[1]].float()  # [T, D]
            out[start + i, 0] = encoder.encode([span])[0].numpy()
            last = span[-1] - encoder.center
            out[start + i, 1] = (last / last.norm()).numpy()
    return out


def cached(path: Path, make: Callable[[], np.ndarray]) -> np.ndarray:
    """Features are slow (a forward pass per text): computed once per cache folder."""
    if not path.is_file():
        np.save(path, make())
    return np.load(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-from", type=int, default=1500)
    parser.add_argument("--train-records", type=int, default=3000)
    parser.add_argument("--eval-records", type=int, default=300)
    parser.add_argument("--synthetic", action="store_true", help="also train on the Wikidata-property phrasings")
    parser.add_argument("--cache", type=Path, default=Path("var/relation-study"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    args.cache.mkdir(parents=True, exist_ok=True)
    engine = EditingEngine(ModelHost.load(None, Path("var")))
    chat, raw = PromptFormat.CHAT, PromptFormat.RAW

    # Training data: CounterFact records no dev metric uses.
    cf = json.loads((DATA / "counterfact/counterfact_train.json").read_text())
    templates = sorted({r["prompt"].replace(r["subject"], "{}") for r in cf if r["subject"] in r["prompt"]})
    rng = random.Random(0)
    quads: list[str] = []  # prompt, paraphrase, two other templates about the same subject
    for r in cf[args.train_from : args.train_from + args.train_records]:
        if r["subject"] not in r["prompt"]:
            continue
        own = r["prompt"].replace(r["subject"], "{}")
        others = rng.sample([t for t in templates if t != own], 2)
        quads += [r["prompt"], r["rephrase_prompt"], *(t.format(r["subject"]) for t in others)]
    tag = f"{args.train_from}-{args.train_records}"
    train = torch.from_numpy(cached(args.cache / f"train-chat-{tag}.npy", lambda: features(engine, quads, chat)))
    train = train.view(-1, 4, 2, train.shape[-1])
    synthetic = None
    if args.synthetic:
        names = sorted(RELATIONS)
        texts = []  # per subject: 3 relations x 2 phrasings
        for r in cf[args.train_from + args.train_records :][:400]:
            for relation in rng.sample(names, 3):
                texts += [p.format(r["subject"]) for p in rng.sample(RELATIONS[relation], 2)]
        made = cached(args.cache / f"synthetic-chat-{tag}.npy", lambda: features(engine, texts, chat))
        synthetic = torch.from_numpy(made)
        synthetic = synthetic.view(-1, 6, 2, synthetic.shape[-1])

    # Dev pairs: (edit prompt, probe), probes that must pass (paraphrases) and must not (same subject).
    n = args.eval_records
    dev: dict[str, tuple[PromptFormat, list[tuple[str, str]], bool]] = {}
    zsre = load_records(DATA / "zsre/zsre_mend_train_1k.json", "zsre").records[:n]
    counterfact = load_records(DATA / "counterfact/counterfact_train.json", "counterfact").records[:n]
    dev["ZsRE paraphrases (chat)"] = (chat, [(r.prompt, r.rephrase) for r in zsre if r.rephrase], True)
    dev["CounterFact paraphrases (chat)"] = (chat, [(r.prompt, r.rephrase) for r in counterfact if r.rephrase], True)
    dev["CounterFact paraphrases (raw)"] = (raw, [(r.prompt, r.rephrase) for r in counterfact if r.rephrase], True)
    for name in ("wiki_counterfact", "wiki_recent"):
        records = load_records(DATA / f"knowedit/{name}_train.json", "knowedit").records[:n]
        dev[f"{name} same subject (chat)"] = (
            chat,
            [(r.prompt, p) for r in records for p, _ in r.relation_locality],
            False,
        )
    dev_feats: dict[str, np.ndarray] = {}
    for i, (name, (fmt, pairs, _)) in enumerate(dev.items()):
        texts = [t for pair in pairs for t in pair]
        dev_feats[name] = cached(args.cache / f"dev-{n}-{i}.npy", functools.partial(features, engine, texts, fmt))

    trained_on = "CounterFact" + (" + synthetic" if synthetic is not None else "")
    for label, pick in FEATURES.items():
        w = train_projection(pick(train), None if synthetic is None else pick(synthetic))
        plain = [None] if label != "both" else []  # the state's own cosine, as a baseline
        for projection in [*plain, w]:
            scores = {name: pair_cosines(pick(torch.from_numpy(f)), projection) for name, f in dev_feats.items()}
            blocked = np.concatenate([s for name, s in scores.items() if not dev[name][2]])
            cuts = [0.2, 0.3, 0.4, 0.5, 0.6, float(np.quantile(blocked, 0.95))]
            how = "no W" if projection is None else f"W learnt on {trained_on}"
            print(f"\n{label}, {how}: share passing each cut (the last blocks 95% of same-subject pairs)")
            print("| pairs | " + " | ".join(f"cut {c:.2f}" for c in cuts) + " |")
            print("| --- |" + " ---: |" * len(cuts))
            for name, s in scores.items():
                print(f"| {name} | " + " | ".join(f"{np.mean(s >= c):.3f}" for c in cuts) + " |")
            kept = scores["CounterFact paraphrases (chat)"][:40] >= cuts[-1]
            groups = {
                "same relation": [i for i in range(40) if i not in OTHER_RELATION | VAGUE_RELATION],
                "other relation": sorted(OTHER_RELATION),
                "vague": sorted(VAGUE_RELATION),
            }
            split = ", ".join(f"{g} {int(kept[idx].sum())}/{len(idx)}" for g, idx in groups.items())
            print(f"CounterFact chat, first 40 records, kept at the last cut: {split}")


def train_projection(quads: torch.Tensor, synthetic: torch.Tensor | None, dim: int = 128) -> torch.Tensor:
    """W [D, dim]: quads [R, 4, D] (prompt, paraphrase, 2 negatives); synthetic [S, 6, D] (3 relations x 2)."""
    w = torch.nn.Parameter(torch.randn(quads.shape[-1], dim) / quads.shape[-1] ** 0.5)
    opt = torch.optim.Adam([w], lr=1e-3)
    swap = torch.tensor([1, 0, 3, 2, 5, 4])  # each synthetic phrasing's positive: the other of its relation
    for _ in range(2000):
        z = torch.nn.functional.normalize(quads[torch.randint(len(quads), (128,))] @ w, dim=-1)  # [B, 4, dim]
        loss = torch.zeros(())
        for anchor, positive in ((0, 1), (1, 0)):
            others = [positive, 2, 3]
            logits = (z[:, anchor, None] * z[:, others]).sum(-1) / TEMPERATURE  # [B, 3], positive first
            loss = loss + torch.nn.functional.cross_entropy(logits, torch.zeros(len(z), dtype=torch.long))
        if synthetic is not None:
            s = torch.nn.functional.normalize(synthetic[torch.randint(len(synthetic), (64,))] @ w, dim=-1)
            sim = (s @ s.transpose(1, 2) / TEMPERATURE).masked_fill(torch.eye(6, dtype=torch.bool), -1e9)
            loss = loss + torch.nn.functional.cross_entropy(sim.reshape(-1, 6), swap.repeat(len(s)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach()


def pair_cosines(flat: torch.Tensor, w: torch.Tensor | None) -> np.ndarray:
    """flat [2P, D]: (edit prompt, probe) rows interleaved -> relation cosine per pair [P] (no W: plain cosine)."""
    projected = flat if w is None else flat @ w
    z = torch.nn.functional.normalize(projected, dim=-1).view(-1, 2, projected.shape[1])
    return (z[:, 0] * z[:, 1]).sum(-1).numpy()


if __name__ == "__main__":
    main()
