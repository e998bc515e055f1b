"""Generation backends behind one small interface (:mod:`.base`), built by :func:`make_backend`.

Each backend module imports its heavy dependency (vllm, torch/transformers) only when built.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from mllmrec.reasoning.backends.base import (
    Backend,
    BackendError,
    BackendNotInstalled,
    BackendUnavailable,
    Generation,
    ImagePart,
    Message,
    Request,
    Sampling,
)

if TYPE_CHECKING:
    from mllmrec.reasoning.settings import ReasonSettings

__all__ = [
    "Backend",
    "BackendError",
    "BackendNotInstalled",
    "BackendUnavailable",
    "Generation",
    "ImagePart",
    "Message",
    "Request",
    "Sampling",
    "make_backend",
]


def make_backend(settings: "ReasonSettings") -> Backend:
    """Build the backend named by ``reason.backend`` from the mllm config and ``reason.<backend>``."""
    mllm = settings.mllm
    if settings.backend == "vllm":
        from mllmrec.reasoning.backends.vllm_backend import VLLMBackend, engine_kwargs

        options = {**mllm.vllm, **settings.vllm}
        kwargs = engine_kwargs(mllm.model_id, mllm.revision, mllm.dtype, mllm.max_model_len,
                               mllm.vision, settings.seed, options)
        return VLLMBackend(mllm.identity, kwargs, mllm.vision)
    if settings.backend == "openai":
        from mllmrec.reasoning.backends.openai_backend import OpenAIBackend

        o = settings.openai
        return OpenAIBackend(
            base_url=str(o.get("base_url") or os.environ.get("OPENAI_BASE_URL") or ""),
            identity=mllm.identity,
            model=o.get("model"),
            candidates=[c for c in (mllm.ollama, mllm.model_id) if c],
            vision=mllm.vision,
            api_key=o.get("api_key") or os.environ.get("OPENAI_API_KEY") or None,
            concurrency=int(o.get("concurrency", 8)),
            timeout_s=float(o.get("timeout_s", 120.0)),
            max_retries=int(o.get("max_retries", 5)),
            backoff_s=float(o.get("backoff_s", 1.0)),
            backoff_max_s=float(o.get("backoff_max_s", 60.0)),
            probe_timeout_s=float(o.get("probe_timeout_s", 10.0)),
        )
    if settings.backend == "transformers":
        from mllmrec.reasoning.backends.transformers_backend import TransformersBackend

        t = settings.transformers
        cache_dir = t.get("cache_dir")
        return TransformersBackend(
            identity=mllm.identity,
            model_id=mllm.model_id,
            revision=mllm.revision,
            gguf=mllm.gguf,
            vision=mllm.vision,
            chat_format=mllm.chat_format,
            device=str(t.get("device", "auto")),
            dtype=t.get("dtype"),
            model_dtype=mllm.dtype,
            batch_size=int(t.get("batch_size", 8)),
            cache_dir=Path(os.path.expanduser(str(cache_dir))) if cache_dir else None,
            trust_remote_code=bool(t.get("trust_remote_code", False)),
            num_threads=t.get("num_threads"),
        )
    if settings.backend == "fake":
        from mllmrec.reasoning.backends.fake import FakeBackend

        f = settings.fake
        return FakeBackend(mllm.identity, supports_images=mllm.vision,
                           delay_s=float(f.get("delay_s", 0.0)),
                           chars_per_token=settings.chars_per_token)
    raise BackendError(f"unknown backend {settings.backend!r}")
