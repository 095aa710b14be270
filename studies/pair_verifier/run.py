"""Train the pair model on one encoder's features and show its routing on the study sets (dev only)."""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from routing import lexical
from studies.pair_verifier import features as F
from studies.pair_verifier.pairmodel import PairModel, predict, prepare, train
from studies.pair_verifier.pairs import counterfact_pairs, hard_template_pairs, identity_pairs, template_pairs
from studies.routing_precision.analyse import Study, fmt, is_common, report

CACHE = Path("var/study/feat")


def encoder(kind: str):
    if kind == "smol":
        return F.SmolEncoder("chat")
    if kind == "smol-static":
        return F.SmolEncoder("chat", static=True)
    if kind == "minilm":
        return F.MiniLMEncoder()
    if kind == "minilm-static":
        return F.MiniLMEncoder(static=True)
    if kind.startswith("minilm"):
        return F.MiniLMEncoder(layers=int(kind[len("minilm") :]))
    raise SystemExit(kind)


class FeatStore:
    def __init__(self, kind: str):
        self.kind = kind
        self.path = CACHE / f"{kind}.pt"
        self.feats: dict[str, F.TextFeat] = torch.load(self.path, weights_only=False) if self.path.exists() else {}
        self._enc = None

    def need(self, texts) -> None:
        missing = sorted({t for t in texts if t not in self.feats})
        if missing:
            self._enc = self._enc or encoder(self.kind)
            t0 = time.time()
            for i in range(0, len(missing), 512):
                chunk = missing[i : i + 512]
                self.feats.update(zip(chunk, self._enc(chunk), strict=True))
                print(f"  features {min(i + 512, len(missing))}/{len(missing)} ({time.time() - t0:.0f}s)", flush=True)
            CACHE.mkdir(parents=True, exist_ok=True)
            torch.save(self.feats, self.path)

    def __getitem__(self, t: str) -> F.TextFeat:
        return self.feats[t]


def subject(text: str) -> frozenset[str]:
    return lexical.subject_words(text, is_common)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", default="smol")
    ap.add_argument("--sets", default="opdev-chat,kecf-chat,kere-chat,zsre-chat,cf-chat")
    ap.add_argument("--cf", type=int, default=4000)
    ap.add_argument("--templates", default="")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=0.40)
    ap.add_argument("--save", default="")
    ap.add_argument("--hard", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = random.Random(0)
    pairs = counterfact_pairs(rng)
    rng.shuffle(pairs)
    pairs = pairs[: args.cf]
    if args.templates:
        files = [Path(p) for p in args.templates.split(",")]
        pairs += (hard_template_pairs if args.hard else template_pairs)(files, rng)
    pairs += identity_pairs(pairs, rng, len(pairs) // 10)
    import collections

    print(collections.Counter(k for *_, k in pairs))
    store = FeatStore(args.encoder)
    store.need([t for q, e, _, _ in pairs for t in (q, e)])
    studies = [Study(n) for n in args.sets.split(",") if (Path("var/study") / f"{n}.pt").exists()]
    for s in studies:
        store.need(s.texts)
    data = [prepare(store[q], store[e], subject(e)) for q, e, _, _ in pairs]
    labels = [float(y) for _, _, y, _ in pairs]
    d_in = data[0][0].shape[1]
    model = PairModel(d_in, positions=args.encoder.endswith("static"))
    t0 = time.time()
    train(model, data, labels, steps=args.steps)
    print(f"trained in {time.time() - t0:.0f}s")
    if args.save:
        torch.save(model.state_dict(), args.save)
    for s in studies:
        cache: dict[tuple[int, int], float] = {}
        wanted = set()
        for text, _, _ in s.probes:
            for c in s.candidates(text):
                if c.score >= args.threshold * 0.75:
                    wanted.add((text, c.key))
        wanted = sorted(wanted)
        probs = predict(model, [(store[s.texts[q]], store[s.texts[k]], subject(s.texts[k])) for q, k in wanted])
        cache = dict(zip(wanted, probs.tolist(), strict=True))
        print(s.name, "stage 1 only:", fmt(report(s, args.threshold)))
        for t1 in (args.threshold, args.threshold * 0.75):
            for tau in (0.5, 0.7, 0.8, 0.9, 0.95):
                r = report(s, t1, lambda st, q, c, cache=cache, tau=tau: cache.get((q, c.key), 0.0) >= tau)
                print(f"  t1={t1:.2f} tau={tau}: {fmt(r)}")


if __name__ == "__main__":
    main()
