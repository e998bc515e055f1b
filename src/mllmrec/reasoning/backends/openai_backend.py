"""Generation through any OpenAI-compatible ``/v1/chat/completions`` server (Ollama, ``vllm
serve``, llama.cpp's server, hosted APIs).

Images travel as base64 ``data:`` URLs. Requests run ``concurrency`` at a time; 429, 5xx,
timeouts and dropped connections are retried with exponential backoff (a ``Retry-After`` header
wins when the server sends one); other 4xx answers fail that request only. A probe of
``GET /models`` at start turns an unreachable server into one clear error before any work.
"""

from __future__ import annotations

import base64
import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from mllmrec.reasoning.backends.base import (
    BackendError,
    BackendUnavailable,
    Generation,
    Request,
    TokenCounter,
)

log = logging.getLogger(__name__)

__all__ = ["OpenAIBackend", "RETRY_STATUS"]

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class OpenAIBackend:
    """Chat completions over HTTP.

    Args:
        base_url: e.g. ``http://localhost:11434/v1`` (Ollama) or ``http://host:8000/v1`` (vLLM).
        model: the served model name; ``None`` picks the first of ``candidates`` the server lists.
        candidates: names to look for when ``model`` is None (the mllm's Ollama tag, HF id).
        identity: model id + revision for cache keys (backend-independent).
        vision: whether requests may carry images.
        api_key: sent as a Bearer token when set.
        concurrency: requests in flight at once.
        timeout_s: per-request timeout (connect + read).
        max_retries: retries after the first try of one request.
        backoff_s, backoff_max_s: first retry delay and its cap (doubling, with jitter).
        probe: check the server (``GET /models``) at construction.
        transport, sleep: test hooks (an ``httpx`` transport, a sleep function).
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        identity: str,
        model: str | None = None,
        candidates: Sequence[str] = (),
        vision: bool = True,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        backoff_max_s: float = 60.0,
        probe: bool = True,
        probe_timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not base_url:
            raise BackendError("reason.openai.base_url is empty: set it or OPENAI_BASE_URL")
        self.base_url = base_url.rstrip("/")
        self.identity = identity
        self.supports_images = vision
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max(0, int(max_retries))
        self.backoff_s = float(backoff_s)
        self.backoff_max_s = float(backoff_max_s)
        self._sleep = sleep
        self._rng = random.Random(0)  # jitter only: spreads retries of concurrent requests
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout_s),
            transport=transport,  # concurrency is bounded by the thread pool in generate()
        )
        self.model = model
        if probe:
            self.model = self._probe(model, candidates, probe_timeout_s)
        if not self.model:
            candidates = [c for c in candidates if c]
            if not candidates:
                raise BackendError("no model name for the OpenAI backend: set reason.openai.model")
            self.model = candidates[0]

    # -- start-up -------------------------------------------------------------------------------
    def _probe(self, model: str | None, candidates: Sequence[str], timeout_s: float) -> str | None:
        """Check the server is there and, when ``model`` is None, choose the served name."""
        url = f"{self.base_url}/models"
        try:
            response = self._client.get("/models", timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(
                f"cannot reach the OpenAI-compatible server at {url}: {exc.__class__.__name__}: {exc}. "
                "Start it (e.g. `ollama serve`, `vllm serve <model>`) or point reason.openai.base_url "
                "(or OPENAI_BASE_URL) at it."
            ) from exc
        if response.status_code in (401, 403):
            raise BackendUnavailable(
                f"{url} refused the API key (HTTP {response.status_code}): set OPENAI_API_KEY or "
                "reason.openai.api_key"
            )
        served: list[str] = []
        if response.status_code == 200:
            try:
                served = [m.get("id", "") for m in response.json().get("data", [])]
            except (ValueError, AttributeError):
                served = []
        else:
            log.warning("%s answered HTTP %d; going on without the served model list", url,
                        response.status_code)
        if model:
            if served and model not in served:
                log.warning("model %r is not in the list served at %s (%s)", model, url, served[:10])
            return model
        for name in candidates:
            if name and name in served:
                return name
        if served:
            raise BackendError(
                f"none of {[c for c in candidates if c]} is served at {url} (it serves {served[:10]}); "
                "pull/serve the model or set reason.openai.model"
            )
        return None

    # -- requests -------------------------------------------------------------------------------
    @staticmethod
    def _content(message: Any) -> Any:
        if message.image is None:
            return message.text
        data = base64.b64encode(message.image.data).decode("ascii")
        return [
            {"type": "image_url", "image_url": {"url": f"data:{message.image.mime};base64,{data}"}},
            {"type": "text", "text": message.text},
        ]

    def payload(self, request: Request) -> dict[str, Any]:
        s = request.sampling
        return {
            "model": self.model,
            "messages": [{"role": m.role, "content": self._content(m)} for m in request.messages],
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": s.seed,
            "stream": False,
        }

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            retry_after = response.headers.get("retry-after")
            if retry_after:
                try:
                    return min(float(retry_after), self.backoff_max_s)
                except ValueError:
                    pass  # an HTTP date: fall back to our own schedule
        base = min(self.backoff_s * (2 ** attempt), self.backoff_max_s)
        return base * (0.75 + 0.5 * self._rng.random())

    def _one(self, request: Request) -> Generation:
        body = self.payload(request)
        last_error = ""
        for attempt in range(self.max_retries + 1):
            response: httpx.Response | None = None
            try:
                response = self._client.post("/chat/completions", json=body)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last_error = f"{exc.__class__.__name__}: {exc}"
            else:
                if response.status_code == 200:
                    return self._parse(response)
                last_error = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code not in RETRY_STATUS:
                    return Generation("", 0, "error", error=last_error)
            if attempt < self.max_retries:
                delay = self._delay(attempt, response)
                log.debug("retrying in %.2fs after %s", delay, last_error)
                self._sleep(delay)
        return Generation("", 0, "error", error=f"gave up after {self.max_retries + 1} tries: {last_error}")

    @staticmethod
    def _parse(response: httpx.Response) -> Generation:
        try:
            body = response.json()
            choice = body["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            return Generation("", 0, "error", error=f"malformed response ({exc}): {response.text[:300]}")
        usage = body.get("usage") or {}
        n_tokens = usage.get("completion_tokens")
        if n_tokens is None:
            n_tokens = len(text.split())  # servers without usage: words are the honest proxy
        return Generation(text=text, n_tokens=int(n_tokens), finish_reason=str(choice.get("finish_reason") or "stop"))

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        if not self.supports_images and any(r.images for r in requests):
            raise BackendError("image request sent to a text-only model")
        if len(requests) <= 1 or self.concurrency == 1:
            return [self._one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, requests))  # map keeps input order

    def token_counter(self) -> TokenCounter | None:
        return None  # the server's tokenizer is not reachable through this API

    def close(self) -> None:
        self._client.close()
