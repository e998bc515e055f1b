"""Token counting for the context budget of Prompt 2: the model's tokenizer when the backend has
one, else an estimate of ``chars_per_token`` characters per token.

The estimate is deliberately conservative (3 characters per token by default, where English BPE
text averages about 4): overshooting the context makes a server reject the request, while
undershooting only drops a few more of a user's oldest items.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["TokenizerCounter", "CharEstimateCounter"]


class TokenizerCounter:
    """Counts with a Hugging Face tokenizer (anything with ``encode``/``decode``)."""

    exact = True

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def _ids(self, text: str) -> list[int]:
        # special tokens belong to the chat template, which the budget's margin covers
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def count(self, text: str) -> int:
        return len(self._ids(text))

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest token prefix of ``text`` with at most ``max_tokens`` tokens."""
        if max_tokens <= 0:
            return ""
        ids = self._ids(text)
        if len(ids) <= max_tokens:
            return text
        return self.tokenizer.decode(ids[:max_tokens], skip_special_tokens=True).rstrip()


class CharEstimateCounter:
    """``ceil(len(text) / chars_per_token)`` tokens; truncation cuts at a word boundary."""

    exact = False

    def __init__(self, chars_per_token: float = 3.0) -> None:
        if chars_per_token <= 0:
            raise ValueError(f"chars_per_token must be > 0, got {chars_per_token}")
        self.chars_per_token = float(chars_per_token)

    def count(self, text: str) -> int:
        return math.ceil(len(text) / self.chars_per_token)

    def truncate(self, text: str, max_tokens: int) -> str:
        if max_tokens <= 0:
            return ""
        limit = int(max_tokens * self.chars_per_token)
        if len(text) <= limit:
            return text
        cut = text[:limit]
        space = cut.rfind(" ")
        # a cut inside the first word would leave nothing: keep the hard cut then
        return (cut[:space] if space > 0 else cut).rstrip()
