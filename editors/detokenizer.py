"""Turning a row's tokens into text as they come, and ending it at a stop string.

Decoding the whole answer at every step costs O(n^2) over an answer; instead only the tokens since the last
settled point are decoded (a few tokens back, so a multi-byte character or a merge across tokens is decoded
whole). Streamed text holds back only what could still be the start of a stop string, not the length of the
longest one ("###END" holds back "#" after "...#", nothing after "...a").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

CONTEXT = 4  # tokens decoded before the new ones: enough for a split character or a leading-space merge


class Detokenizer:
    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str] = ()) -> None:
        self.decode = decode
        self.stops = tuple(s for s in stops if s)
        self.tokens: list[int] = []
        self.text = ""  # the answer so far (a trailing partial character left out)
        self._settled = 0  # tokens whose text is part of self.text for good
        self.sent = 0  # characters of self.text already emitted

    def add(self, token: int) -> None:
        """Append a token; self.text is the answer's text so far."""
        self.tokens.append(token)
        start = max(0, self._settled - CONTEXT)
        context = self.decode(self.tokens[start : self._settled])
        window = self.decode(self.tokens[start:])
        if window.endswith("\ufffd"):  # a multi-byte character split across tokens: wait for its end
            return
        if window.startswith(context):
            self.text += window[len(context) :]
        else:  # the context decodes otherwise on its own (a merge across the boundary): decode it all
            self.text = self.decode(self.tokens)
        self._settled = len(self.tokens)

    def stop_at(self) -> int | None:
        """Where the first stop string begins in the text (searched only where a new one can be), or None."""
        found = [i for s in self.stops if (i := self.text.find(s, max(0, self.sent - len(s)))) >= 0]
        return min(found) if found else None

    def ready(self) -> str:
        """Text that can no longer change or turn out to start a stop string; marks it sent."""
        end = len(self.text)
        for stop in self.stops:  # hold back a suffix that is a prefix of a stop string
            for k in range(min(len(stop) - 1, end - self.sent), 0, -1):
                if self.text.endswith(stop[:k]):
                    end = min(end, len(self.text) - k)
                    break
        if end <= self.sent:
            return ""
        chunk, self.sent = self.text[self.sent : end], end
        return chunk

    def rest(self, upto: int | None = None) -> str:
        """The unsent text up to `upto` (the whole answer when None); marks it sent."""
        end = len(self.text) if upto is None else upto
        chunk = self.text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return chunk
