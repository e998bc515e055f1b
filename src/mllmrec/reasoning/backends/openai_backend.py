"""Generation through any OpenAI-compatible ``/v1/chat/completions`` server (Ollama, vLLM's
OpenAI server, llama.cpp's server, hosted APIs), with the official ``openai`` client.

Images travel as base64 ``data:`` URLs. Requests run ``concurrency`` at a time. Retries, backoff
and timeouts are the client's: 408, 409, 429, 5xx, timeouts and dropped connections are retried
``max_retries`` times with exponential backoff (0.5 s doubling to 8 s, minus up to 25 % jitter; a
``Retry-After`` header up to a minute wins); other 4xx answers fail that request only. A request
whose retries all end in "connection refused/reset" means the server is gone: that raises
:class:`BackendUnavailable` and stops the run (finished chunks are kept; a rerun continues) rather
than record every remaining request as failed. A probe of ``GET /models`` at start turns an
unreachable server into one clear error before any work and picks the served model name.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mllmrec.reasoning.backends.base import (
    BackendError,
    BackendNotInstalled,
    BackendUnavailable,
    Generation,
    Request,
    TokenCounter,
)

log = logging.getLogger(__name__)

__all__ = ["OpenAIBackend", "NO_KEY"]

#: the API key sent to servers that need none (the client insists on one; Ollama and vLLM ignore it)
NO_KEY = "not-needed"


def _import_openai() -> Any:
    try:
        import openai
    except ImportError as exc:  # a dependency of the project: only a broken install lacks it
        raise BackendNotInstalled(f"the OpenAI backend needs `pip install openai` (import error: {exc})") from exc
    return openai


class OpenAIBackend:
    """Chat completions over HTTP through ``openai.OpenAI``.

    Args:
        base_url: e.g. ``http://localhost:11434/v1`` (Ollama) or ``http://host:8000/v1`` (vLLM).
        model: the served model name; ``None`` picks the first of ``candidates`` the server lists.
        candidates: names to look for when ``model`` is None (the mllm's Ollama tag, HF id).
        identity: model id + revision for cache keys (backend-independent).
        vision: whether requests may carry images.
        api_key: sent as a Bearer token (``None``: a placeholder, for servers without keys).
        concurrency: requests in flight at once.
        timeout_s: per-request timeout (each try).
        max_retries: retries after the first try of one request (the client's backoff).
        probe: check the server (``GET /models``) at construction.
        probe_timeout_s: timeout of that probe (not retried: a missing server fails at once).
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
        probe: bool = True,
        probe_timeout_s: float = 10.0,
    ) -> None:
        if not base_url:
            raise BackendError("reason.openai.base_url is empty: set it or OPENAI_BASE_URL")
        self._openai = _import_openai()
        self.base_url = base_url.rstrip("/")
        self.identity = identity
        self.supports_images = vision
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max(0, int(max_retries))
        self._client = self._openai.OpenAI(base_url=self.base_url, api_key=api_key or NO_KEY,
                                           timeout=float(timeout_s), max_retries=self.max_retries)
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
        openai = self._openai
        url = f"{self.base_url}/models"
        try:
            page = self._client.with_options(timeout=timeout_s, max_retries=0).models.list()
            served = [m.id for m in page.data if getattr(m, "id", None)]
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise BackendUnavailable(
                f"{url} refused the API key (HTTP {exc.status_code}): set OPENAI_API_KEY or "
                "reason.openai.api_key"
            ) from exc
        except openai.APIConnectionError as exc:
            raise BackendUnavailable(
                f"cannot reach the OpenAI-compatible server at {url}: {exc.__class__.__name__}: {exc}. "
                "Start it (e.g. `ollama serve`, `python -m vllm.entrypoints.openai.api_server --model ...`) "
                "or point reason.openai.base_url (or OPENAI_BASE_URL) at it."
            ) from exc
        except openai.APIStatusError as exc:
            log.warning("%s answered HTTP %d; going on without the served model list", url, exc.status_code)
            served = []
        except (openai.APIError, AttributeError, TypeError, ValueError) as exc:  # not a model list
            log.warning("%s sent no model list (%s); going on without it", url, exc)
            served = []
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
        """The arguments of ``chat.completions.create`` (= the JSON body) for one request."""
        s = request.sampling
        return {
            "model": self.model,
            "messages": [{"role": m.role, "content": self._content(m)} for m in request.messages],
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": s.seed,
        }

    def _one(self, request: Request) -> Generation:
        openai = self._openai
        tries = f"after {self.max_retries + 1} tries"
        try:
            raw = self._client.chat.completions.with_raw_response.create(**self.payload(request))
        except openai.APITimeoutError as exc:  # slow, not gone: this request fails, the run goes on
            return Generation("", 0, "error", error=f"gave up {tries}: timeout: {exc}")
        except openai.APIConnectionError as exc:
            raise BackendUnavailable(
                f"the server at {self.base_url} stopped answering ({exc.__class__.__name__}: {exc} {tries}). "
                "Finished chunks are saved: restart the server and rerun to continue."
            ) from exc
        except openai.APIStatusError as exc:
            retried = exc.status_code in (408, 409, 429) or exc.status_code >= 500
            prefix = f"gave up {tries}: " if retried and self.max_retries else ""
            return Generation("", 0, "error",
                              error=f"{prefix}HTTP {exc.status_code}: {exc.response.text[:300]}")
        return self._parse(raw)

    @staticmethod
    def _parse(raw: Any) -> Generation:
        text_of_body = raw.http_response.text[:300]
        try:
            completion = raw.parse()
            choice = completion.choices[0]
            text = choice.message.content or ""
        except Exception as exc:  # noqa: BLE001 - any shape the client cannot read is "malformed"
            return Generation("", 0, "error", error=f"malformed response ({exc!r}): {text_of_body}")
        usage = getattr(completion, "usage", None)
        n_tokens = getattr(usage, "completion_tokens", None)
        if n_tokens is None:
            n_tokens = len(text.split())  # servers without usage: words are the honest proxy
        return Generation(text=text, n_tokens=int(n_tokens), finish_reason=str(choice.finish_reason or "stop"))

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        """One generation per request, in input order; raises :class:`BackendUnavailable` (after
        cancelling the requests not yet sent) when the server is gone."""
        if not self.supports_images and any(r.images for r in requests):
            raise BackendError("image request sent to a text-only model")
        if len(requests) <= 1 or self.concurrency == 1:
            return [self._one(r) for r in requests]
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            futures = [pool.submit(self._one, r) for r in requests]
            return [f.result() for f in futures]  # in input order
        finally:
            # on an error, requests not yet sent are dropped instead of retried against a dead server
            pool.shutdown(wait=True, cancel_futures=True)

    def token_counter(self) -> TokenCounter | None:
        return None  # the server's tokenizer is not reachable through this API

    def close(self) -> None:
        self._client.close()
