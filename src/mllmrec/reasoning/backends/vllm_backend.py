"""Offline batched generation with vLLM (GPU): one ``vllm.LLM`` per run, ``LLM.chat`` per chunk.

vLLM is an optional extra (``pip install -e ".[vllm]"`` on a GPU machine) and is imported only
when this backend is built. Images go in as ``image_pil`` content parts so the model's own chat
template places the image tokens; vLLM batches the chunk internally and returns outputs in input
order. Gemma 3 needs ``dtype: bfloat16`` (float16 yields empty text, vllm#14817): the mllm configs
set it.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from mllmrec.reasoning.backends.base import (
    BackendError,
    BackendNotInstalled,
    Generation,
    Request,
    TokenCounter,
)
from mllmrec.reasoning.tokens import TokenizerCounter

log = logging.getLogger(__name__)

__all__ = ["VLLMBackend", "import_vllm", "engine_kwargs"]

INSTALL_HINT = (
    "vLLM is not installed. On a GPU machine run `pip install -e \".[vllm]\"`; elsewhere choose "
    "another backend: `reason.backend=openai` (any OpenAI-compatible server: Ollama, `vllm serve`, "
    "llama.cpp) or `reason.backend=transformers` (in-process Hugging Face generate)."
)


def import_vllm() -> ModuleType:
    """``import vllm`` with an error that says what to do when it is missing."""
    try:
        return importlib.import_module("vllm")
    except ImportError as exc:
        raise BackendNotInstalled(f"{INSTALL_HINT} (import error: {exc})") from exc


def engine_kwargs(
    model_id: str,
    revision: str | None,
    dtype: str | None,
    max_model_len: int | None,
    vision: bool,
    seed: int,
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``vllm.LLM(...)`` arguments: model identity and context from the mllm config, engine
    options (``tensor_parallel_size``, ``gpu_memory_utilization``, ``limit_mm_per_prompt``,
    ``mm_processor_kwargs``, ``max_num_seqs``, ``tokenizer_mode``...) passed through as given."""
    kwargs: dict[str, Any] = {"model": model_id, "seed": seed}
    if revision:
        kwargs["revision"] = revision
    if dtype:
        kwargs["dtype"] = dtype
    if max_model_len:
        kwargs["max_model_len"] = int(max_model_len)
    opts = {k: v for k, v in dict(options).items() if v is not None}
    if not vision:
        # a text-only run must not reserve encoder memory for images it will never get
        opts.pop("limit_mm_per_prompt", None)
        opts.pop("mm_processor_kwargs", None)
    elif "limit_mm_per_prompt" not in opts:
        opts["limit_mm_per_prompt"] = {"image": 1}
    kwargs.update(opts)
    return kwargs


class VLLMBackend:
    """vLLM's offline engine behind the :class:`~mllmrec.reasoning.backends.base.Backend` interface.

    Args:
        identity: model id + revision (cache keys).
        llm_kwargs: arguments of ``vllm.LLM`` (see :func:`engine_kwargs`).
        vision: whether requests may carry images.
    """

    name = "vllm"

    def __init__(self, identity: str, llm_kwargs: Mapping[str, Any], vision: bool) -> None:
        self._vllm = import_vllm()
        self.identity = identity
        self.supports_images = vision
        self.llm_kwargs = dict(llm_kwargs)
        log.info("starting vLLM engine: %s", self.llm_kwargs)
        try:
            self.llm = self._vllm.LLM(**self.llm_kwargs)
        except Exception as exc:  # engine start fails for many reasons (memory, model, driver)
            raise BackendError(
                f"vLLM could not start {self.llm_kwargs.get('model')!r}: {exc}. Check the GPU memory "
                "(mllm.vllm.gpu_memory_utilization, mllm.max_model_len), the model id and access rights."
            ) from exc

    @staticmethod
    def _conversation(request: Request) -> list[dict[str, Any]]:
        conversation = []
        for message in request.messages:
            if message.image is None:
                conversation.append({"role": message.role, "content": message.text})
                continue
            conversation.append({"role": message.role, "content": [
                {"type": "image_pil", "image_pil": message.image.to_pil()},
                {"type": "text", "text": message.text},
            ]})
        return conversation

    def _sampling(self, request: Request) -> Any:
        s = request.sampling
        return self._vllm.SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature,
                                         top_p=s.top_p, seed=s.seed)

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        """One ``LLM.chat`` call for the whole chunk (vLLM schedules it in continuous batches)."""
        if not requests:
            return []
        if not self.supports_images and any(r.images for r in requests):
            raise BackendError("image request sent to a text-only vLLM engine")
        conversations = [self._conversation(r) for r in requests]
        params = [self._sampling(r) for r in requests]
        outputs = self.llm.chat(conversations, sampling_params=params, use_tqdm=False)
        if len(outputs) != len(requests):
            raise BackendError(f"vLLM returned {len(outputs)} outputs for {len(requests)} requests")
        results = []
        for out in outputs:
            completion = out.outputs[0]
            results.append(Generation(
                text=completion.text,
                n_tokens=len(completion.token_ids),
                finish_reason=str(completion.finish_reason or "stop"),
            ))
        return results

    def token_counter(self) -> TokenCounter:
        return TokenizerCounter(self.llm.get_tokenizer())

    def close(self) -> None:
        """Drop the engine so its GPU memory can be released."""
        self.llm = None
