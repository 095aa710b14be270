"""What a request may ask of the model, checked here and nowhere else.

Characters first (SOLA_MAX_PROMPT_CHARS: a huge text never reaches the tokenizer), then tokens after the chat
template (SOLA_MAX_PROMPT_TOKENS: one training step or prefill over thousands of tokens holds every other
query) and the model's context. The service calls these for every wording of an edit, every routed question
and every asked prompt; PromptTooLong is a 413 `prompt_too_long` at /edits, /route and /generate and a 400
`context_length_exceeded` at /v1, as OpenAI answers (app/openai_api.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from app.service_errors import PromptTooLong


@dataclass(frozen=True)
class PromptLimits:
    max_chars: int  # SOLA_MAX_PROMPT_CHARS, per text (a chat: its messages together)
    max_tokens: int  # SOLA_MAX_PROMPT_TOKENS, per formatted prompt
    max_request_tokens: int  # SOLA_MAX_REQUEST_PROMPT_TOKENS, every prompt of one /v1/completions request
    context: int | None = None  # the model's context window, once it is loaded

    def check_chars(self, texts: Iterable[str], what: str) -> None:
        """`what` names the texts as the caller sent them ("prompt", "negatives", "messages")."""
        longest = max((len(t) for t in texts), default=0)
        if longest > self.max_chars:
            raise PromptTooLong(
                f"{what}: {longest} characters, over this server's {self.max_chars} (SOLA_MAX_PROMPT_CHARS)"
            )

    def check_tokens(self, n: int, what: str, then: int = 0, then_what: str = "") -> None:
        """A formatted prompt of `n` tokens, with `then` more to follow it (a target, new tokens) in context."""
        if n > self.max_tokens:
            raise PromptTooLong(
                f"{what} is {n} tokens (after the chat template); this server takes at most {self.max_tokens} "
                "(SOLA_MAX_PROMPT_TOKENS)"
            )
        if self.context is not None and n + then > self.context:
            raise PromptTooLong(
                f"{what} ({n} tokens) + {then_what} ({then}) exceed the model's context of {self.context} tokens"
            )

    def check_request_tokens(self, total: int) -> None:
        if total > self.max_request_tokens:
            raise PromptTooLong(
                f"prompt: {total} tokens in all, over this server's {self.max_request_tokens} per request "
                "(SOLA_MAX_REQUEST_PROMPT_TOKENS); send fewer prompts per request"
            )
