"""Generation backends behind one small interface (:mod:`.base`), built by :func:`make_backend`.

Each backend module imports its heavy dependency (vllm, torch/transformers) only when built.
"""

from __future__ import annotations

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
    """Build the backend named by ``reason.backend`` from the mllm config and the typed
    ``reason.<backend>`` options. Every argument is passed explicitly: the defaults live in
    conf/reason.yaml only (validated once by :class:`~mllmrec.reasoning.settings.ReasonSettings`)."""
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
            base_url=o.base_url,
            identity=mllm.identity,
            model=o.model,
            candidates=[c for c in (mllm.ollama, mllm.model_id) if c],
            vision=mllm.vision,
            api_key=o.api_key,
            concurrency=o.concurrency,
            timeout_s=o.timeout_s,
            max_retries=o.max_retries,
            backoff_s=o.backoff_s,
            backoff_max_s=o.backoff_max_s,
            probe_timeout_s=o.probe_timeout_s,
        )
    if settings.backend == "transformers":
        from mllmrec.reasoning.backends.transformers_backend import TransformersBackend

        t = settings.transformers
        return TransformersBackend(
            identity=mllm.identity,
            model_id=mllm.model_id,
            revision=mllm.revision,
            gguf=mllm.gguf,
            vision=mllm.vision,
            chat_format=mllm.chat_format,
            device=t.device,
            dtype=t.dtype,
            model_dtype=mllm.dtype,
            batch_size=t.batch_size,
            cache_dir=t.cache_dir,
            trust_remote_code=t.trust_remote_code,
            num_threads=t.num_threads,
        )
    if settings.backend == "fake":
        from mllmrec.reasoning.backends.fake import FakeBackend

        return FakeBackend(mllm.identity, supports_images=mllm.vision, delay_s=settings.fake.delay_s,
                           chars_per_token=settings.chars_per_token)
    raise BackendError(f"unknown backend {settings.backend!r}")
