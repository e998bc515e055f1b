"""A deterministic stand-in for a model: the ``fake`` backend (``reason.backend=fake``).

It answers every request with a short text derived from a hash of the request, so a dry run
exercises everything around the model (dataset checks, image scan, prompts, truncation, cache,
shards, merge, tables) in seconds. Like vLLM's engine it streams (:class:`~.base.StreamingBackend`):
submitted requests advance one "token" per engine step and finish after as many steps as their
answer has tokens, so shorter answers come back first, out of input order. Its outputs are marked as such: the backend's identity starts
with ``fake/`` (so its generations never share cache keys with a real model's) and the pipeline
writes its tables to ``reasoning/<mllm>-fake/`` where the training app does not look.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence

from mllmrec.cache import stable_hash
from mllmrec.reasoning.backends.base import Generation, Request, TokenCounter
from mllmrec.reasoning.tokens import CharEstimateCounter

__all__ = ["FakeBackend"]

_WORDS = ("soft", "durable", "cotton", "bright", "classic", "compact", "sturdy", "elegant", "warm",
          "lightweight", "practical", "colourful", "minimal", "versatile", "comfortable", "modern")


class FakeBackend:
    """Deterministic pseudo-generations.

    Args:
        model_identity: the real model's identity, prefixed with ``fake/`` in :attr:`identity`.
        supports_images: whether to accept image requests (to mimic a vision model).
        delay_s: seconds to sleep per ``generate`` or ``collect`` call (lets tests kill a run mid-chunk).
        respond: optional ``Request -> Generation`` override (tests: empty outputs, errors).
        max_in_flight: requests the caller keeps submitted (the engine's batch, twice over).
    """

    name = "fake"

    def __init__(
        self,
        model_identity: str = "model",
        supports_images: bool = True,
        delay_s: float = 0.0,
        respond: Callable[[Request], Generation] | None = None,
        chars_per_token: float = 3.0,
        max_in_flight: int = 8,
    ) -> None:
        self.identity = f"fake/{model_identity}"
        self.supports_images = supports_images
        self.delay_s = delay_s
        self.respond = respond
        self.calls: list[list[Request]] = []  # each generate() / submit() call's requests
        self.max_in_flight = max_in_flight
        self._counter = CharEstimateCounter(chars_per_token)
        self._in_flight: dict[str, tuple[Generation, int]] = {}  # ticket -> (answer, steps left)
        self._tickets = itertools.count()

    def _answer(self, request: Request) -> Generation:
        parts = [(m.role, m.text, m.image.sha256 if m.image else None) for m in request.messages]
        # the model's identity is part of the answer, so that two MLLMs' dry runs differ (a Table 4
        # dry run would otherwise show identical rows)
        digest = stable_hash(self.identity, parts, request.sampling.as_dict(), length=32)
        kind = "image" if request.images else "profile"
        n = min(request.sampling.max_tokens, 6 + int(digest[:2], 16) % 10)
        words = [_WORDS[int(digest[2 * i : 2 * i + 2], 16) % len(_WORDS)] for i in range(n - 2)]
        text = " ".join([f"fake-{kind}", digest[:6], *words])
        return Generation(text=text, n_tokens=n, finish_reason="length" if n == request.sampling.max_tokens else "stop")

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        self.calls.append(list(requests))
        if self.delay_s:
            time.sleep(self.delay_s)
        for request in requests:
            if request.images and not self.supports_images:
                raise ValueError("the fake backend was built text-only but got an image request")
        answer = self.respond or self._answer
        return [answer(r) for r in requests]

    def submit(self, requests: Sequence[Request]) -> list[str]:
        """Queue requests: each finishes after as many :meth:`collect` steps as its answer has tokens."""
        self.calls.append(list(requests))
        for request in requests:
            if request.images and not self.supports_images:
                raise ValueError("the fake backend was built text-only but got an image request")
        answer = self.respond or self._answer
        tickets = []
        for request in requests:
            ticket = str(next(self._tickets))
            out = answer(request)
            self._in_flight[ticket] = (out, max(1, out.n_tokens))
            tickets.append(ticket)
        return tickets

    def collect(self) -> list[tuple[str, Generation]]:
        """Advance every request one step at a time until at least one has finished."""
        if not self._in_flight:
            return []
        if self.delay_s:
            time.sleep(self.delay_s)
        while True:
            self._in_flight = {t: (out, left - 1) for t, (out, left) in self._in_flight.items()}
            done = [(t, out) for t, (out, left) in self._in_flight.items() if left <= 0]
            if done:
                for ticket, _ in done:
                    del self._in_flight[ticket]
                return done

    def cancel(self) -> None:
        self._in_flight.clear()

    def token_counter(self) -> TokenCounter:
        return self._counter

    def close(self) -> None:
        """Nothing to release."""
