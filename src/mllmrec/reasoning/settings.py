"""Typed, checked settings of one reasoning run, read from the Hydra config (``reason.*``,
``mllm``, ``dataset``). Every check that can fail runs here, before data or a model is loaded."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mllmrec.errors import MllmrecError
from mllmrec.reasoning.backends.base import Sampling
from mllmrec.reasoning.outputs import check_history
from mllmrec.reasoning.prompts import LIST_STYLES

__all__ = [
    "ReasonConfigError",
    "MllmSpec",
    "DatasetSpec",
    "OpenAIOptions",
    "TransformersOptions",
    "FakeOptions",
    "ReasonSettings",
    "BACKENDS",
]

BACKENDS = ("vllm", "openai", "transformers", "fake")


class ReasonConfigError(MllmrecError, ValueError):
    """A bad ``reason.*`` / ``mllm.*`` setting; the message names the key and the fix."""


def _container(node: Any) -> dict[str, Any]:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    return dict(node or {})


def _opt_int(value: Any, key: str, minimum: int = 0) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise ReasonConfigError(f"{key} must be an integer or null, got {value!r}") from exc
    if number < minimum:
        raise ReasonConfigError(f"{key} must be >= {minimum}, got {number}")
    return number


@dataclass(frozen=True)
class MllmSpec:
    """One ``conf/mllm/*.yaml``."""

    name: str
    vision: bool
    model_id: str
    revision: str | None
    backend: str
    dtype: str | None
    max_model_len: int
    chat_format: str
    sampling: Sampling
    ollama: str | None = None
    gguf: dict[str, Any] | None = None
    vllm: dict[str, Any] = field(default_factory=dict)

    @property
    def identity(self) -> str:
        """Model id + revision: what the cache keys call "the model", whatever the backend."""
        return f"{self.model_id}@{self.revision or 'main'}"

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], seed: int) -> MllmSpec:
        name = str(raw.get("name") or "")
        if name == "none":
            raise ReasonConfigError(
                "mllm=none means no MLLM: there is nothing to reason with. Pick a model, e.g. "
                "`python reason.py mllm=qwen25vl` (see conf/mllm/)."
            )
        missing = [k for k in ("name", "vision", "model_id", "max_model_len", "sampling") if raw.get(k) is None]
        if missing:
            raise ReasonConfigError(f"mllm config {name or '?'!r} lacks {missing} (see conf/mllm/gemma3_4b.yaml)")
        s = dict(raw["sampling"])
        sampling = Sampling(
            max_tokens=_opt_int(s.get("max_tokens", 160), "mllm.sampling.max_tokens", 1) or 160,
            temperature=float(s.get("temperature", 0.0)),
            top_p=float(s.get("top_p", 1.0)),
            seed=int(s["seed"]) if s.get("seed") is not None else seed,
        )
        return cls(
            name=name,
            vision=bool(raw["vision"]),
            model_id=str(raw["model_id"]),
            revision=str(raw["revision"]) if raw.get("revision") else None,
            backend=str(raw.get("backend") or "vllm"),
            dtype=str(raw["dtype"]) if raw.get("dtype") else None,
            max_model_len=_opt_int(raw["max_model_len"], "mllm.max_model_len", 64) or 0,
            chat_format=str(raw.get("chat_format") or "template"),
            sampling=sampling,
            ollama=str(raw["ollama"]) if raw.get("ollama") else None,
            gguf=dict(raw["gguf"]) if raw.get("gguf") else None,
            vllm=dict(raw.get("vllm") or {}),
        )


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    display_name: str
    root: Path
    format: str
    generate: str | None
    config: dict[str, Any]  # the whole dataset node, for mllmrec.data.open_dataset

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> DatasetSpec:
        fmt = str(raw.get("format", "processed"))
        name = str(raw.get("name"))
        if fmt != "processed":
            raise ReasonConfigError(
                f"dataset {name!r} has format {fmt!r}: reasoning needs the processed format (item texts "
                "and images). Build it with `python prepare.py dataset=<name>`."
            )
        display = str(raw.get("display_name") or "").strip()
        if not display:
            raise ReasonConfigError(f"dataset.display_name is empty for {name!r}: Prompt 1 names the category")
        root = Path(os.path.expanduser(str(raw["root"])))
        return cls(name, display, root, fmt, raw.get("generate"), {**dict(raw), "root": str(root)})


class _Node:
    """One node of ``reason.*`` read strictly: conf/reason.yaml is the only place a default is
    written, so a key missing here means a config composed without it, and is named as such."""

    def __init__(self, raw: Mapping[str, Any], path: str) -> None:
        self.raw, self.path = raw, path

    def get(self, key: str) -> Any:
        if key not in self.raw:
            raise ReasonConfigError(
                f"{self.path}.{key} is missing from the config: conf/reason.yaml defines every "
                "reason.* key (with its default); compose from it or set the key"
            )
        return self.raw[key]

    def node(self, key: str) -> _Node:
        value = self.get(key)
        if not isinstance(value, Mapping):
            raise ReasonConfigError(f"{self.path}.{key} must be a mapping, got {value!r}")
        return _Node(value, f"{self.path}.{key}")

    def int(self, key: str, minimum: int = 0) -> int:
        number = _opt_int(self.get(key), f"{self.path}.{key}", minimum)
        if number is None:
            raise ReasonConfigError(f"{self.path}.{key} must be an integer, got null")
        return number

    def opt_int(self, key: str, minimum: int = 0) -> int | None:
        return _opt_int(self.get(key), f"{self.path}.{key}", minimum)

    def float(self, key: str, minimum: float | None = None, strict: bool = False) -> float:
        value = self.get(key)
        try:
            number = float(value)
        except (TypeError, ValueError) as exc:
            raise ReasonConfigError(f"{self.path}.{key} must be a number, got {value!r}") from exc
        if minimum is not None and (number <= minimum if strict else number < minimum):
            raise ReasonConfigError(f"{self.path}.{key} must be {'>' if strict else '>='} {minimum}, got {number}")
        return number

    def bool(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            raise ReasonConfigError(f"{self.path}.{key} must be true or false, got {value!r}")
        return value

    def str(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise ReasonConfigError(f"{self.path}.{key} must be a string, got null")
        return str(value)

    def opt_str(self, key: str) -> str | None:
        value = self.get(key)
        return None if value is None or value == "" else str(value)


@dataclass(frozen=True)
class OpenAIOptions:
    """``reason.openai``: an OpenAI-compatible server (Ollama, ``vllm serve``, llama.cpp, hosted)."""

    base_url: str
    api_key: str | None
    model: str | None  # served name; None = the mllm's Ollama tag or HF id, whichever is served
    concurrency: int
    timeout_s: float
    max_retries: int  # the openai client's own backoff between tries
    probe_timeout_s: float

    @classmethod
    def from_node(cls, n: _Node) -> OpenAIOptions:
        return cls(
            base_url=n.opt_str("base_url") or "", api_key=n.opt_str("api_key"), model=n.opt_str("model"),
            concurrency=n.int("concurrency", 1), timeout_s=n.float("timeout_s", 0, strict=True),
            max_retries=n.int("max_retries"), probe_timeout_s=n.float("probe_timeout_s", 0, strict=True),
        )


@dataclass(frozen=True)
class TransformersOptions:
    """``reason.transformers``: Hugging Face transformers in this process."""

    device: str
    dtype: str | None  # None = mllm.dtype on GPU, float32 on CPU
    batch_size: int
    cache_dir: Path | None  # converted GGUF models; None = no cache
    trust_remote_code: bool
    num_threads: int | None  # torch intra-op threads; None = torch's default (1 on a shared CPU)

    @classmethod
    def from_node(cls, n: _Node) -> TransformersOptions:
        cache_dir = n.opt_str("cache_dir")
        return cls(
            device=n.str("device"), dtype=n.opt_str("dtype"), batch_size=n.int("batch_size", 1),
            cache_dir=Path(os.path.expanduser(cache_dir)) if cache_dir else None,
            trust_remote_code=n.bool("trust_remote_code"),
            num_threads=n.opt_int("num_threads", 1),
        )


@dataclass(frozen=True)
class FakeOptions:
    """``reason.fake``: the deterministic dry-run backend."""

    delay_s: float

    @classmethod
    def from_node(cls, n: _Node) -> FakeOptions:
        return cls(delay_s=n.float("delay_s", 0))


#: how long a shard launched by a Hydra multirun (``reason.py -m ... reason.shard=0,1,...``) waits
#: for its siblings when ``reason.shard_wait_s`` is null: the launcher started them all
MULTIRUN_SHARD_WAIT_S = 7 * 24 * 3600.0


def _in_multirun() -> bool:
    """Whether this process is a job of a Hydra multirun (any launcher: local, submitit, ...)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:
        return False
    if not HydraConfig.initialized():
        return False
    return HydraConfig.get().mode == RunMode.MULTIRUN


def _shard_wait_s(reason: _Node, num_shards: int) -> float:
    """``reason.shard_wait_s``; null = 0 (a shard alone stops, exit 3, when others' work is
    missing) except for the shards of a multirun, which wait for each other (they run as
    separate jobs of one launch, so the last one to complete the set merges)."""
    if reason.get("shard_wait_s") is None:
        return MULTIRUN_SHARD_WAIT_S if num_shards > 1 and _in_multirun() else 0.0
    return reason.float("shard_wait_s", 0)


@dataclass(frozen=True)
class ReasonSettings:
    """Everything a run needs, typed and checked; conf/reason.yaml holds the meaning and the default
    of each key (no default is repeated here or in :func:`~mllmrec.reasoning.backends.make_backend`)."""

    dataset: DatasetSpec
    mllm: MllmSpec
    backend: str
    history: str
    separator: str
    list_style: str
    chunk_size: int
    shard: int
    num_shards: int
    shard_wait_s: float
    poll_s: float
    limit_items: int | None
    limit_users: int | None
    seed: int
    empty_retries: int
    retry_failed: bool
    max_prompt_tokens: int
    prompt_margin_tokens: int
    item_max_tokens: int
    chars_per_token: float
    image_workers: int
    allow_outside_images: bool
    progress: bool
    openai: OpenAIOptions
    transformers: TransformersOptions
    vllm: dict[str, Any]  # extra vllm.LLM(...) arguments, over mllm.vllm (passed through as given)
    fake: FakeOptions

    @property
    def output_name(self) -> str:
        """Folder name under ``reasoning/``: the fake backend's outputs never pose as a model's."""
        return f"{self.mllm.name}-fake" if self.backend == "fake" else self.mllm.name

    @classmethod
    def from_config(cls, cfg: DictConfig | Mapping[str, Any]) -> ReasonSettings:
        reason = _Node(_container(cfg["reason"]), "reason")
        seed = reason.int("seed")
        mllm = MllmSpec.from_mapping(_container(cfg["mllm"]), seed)
        dataset = DatasetSpec.from_mapping(_container(cfg["dataset"]))
        backend = reason.opt_str("backend") or mllm.backend
        if backend not in BACKENDS:
            raise ReasonConfigError(f"reason.backend={backend!r} is not one of {BACKENDS}")
        try:
            history = check_history(reason.str("history"))
        except ValueError as exc:
            raise ReasonConfigError(str(exc)) from None
        list_style = reason.str("list_style")
        if list_style not in LIST_STYLES:
            raise ReasonConfigError(f"reason.list_style={list_style!r} is not one of {LIST_STYLES}")
        num_shards = reason.int("num_shards", 1)
        shard = reason.int("shard")
        if shard >= num_shards:
            raise ReasonConfigError(f"reason.shard={shard} must be < reason.num_shards={num_shards}")
        margin = reason.int("prompt_margin_tokens")
        max_prompt = reason.opt_int("max_prompt_tokens", 1)
        if max_prompt is None:
            max_prompt = mllm.max_model_len - mllm.sampling.max_tokens - margin
        if max_prompt + mllm.sampling.max_tokens > mllm.max_model_len:
            raise ReasonConfigError(
                f"reason.max_prompt_tokens={max_prompt} + mllm.sampling.max_tokens="
                f"{mllm.sampling.max_tokens} exceeds mllm.max_model_len={mllm.max_model_len}"
            )
        if max_prompt < 64:
            raise ReasonConfigError(
                f"only {max_prompt} prompt tokens are left by mllm.max_model_len={mllm.max_model_len}: "
                "raise it or lower mllm.sampling.max_tokens"
            )
        if mllm.vision and mllm.gguf and backend == "transformers":
            raise ReasonConfigError("a GGUF model loads text-only here: set mllm.vision=false")
        return cls(
            dataset=dataset,
            mllm=mllm,
            backend=backend,
            history=history,
            separator=reason.str("separator"),
            list_style=list_style,
            chunk_size=reason.int("chunk_size", 1),
            shard=shard,
            num_shards=num_shards,
            shard_wait_s=_shard_wait_s(reason, num_shards),
            poll_s=reason.float("poll_s", 0),
            limit_items=reason.opt_int("limit_items"),
            limit_users=reason.opt_int("limit_users"),
            seed=seed,
            empty_retries=reason.int("empty_retries"),
            retry_failed=reason.bool("retry_failed"),
            max_prompt_tokens=max_prompt,
            prompt_margin_tokens=margin,
            item_max_tokens=reason.int("item_max_tokens", 8),
            chars_per_token=reason.float("chars_per_token", 0, strict=True),
            image_workers=reason.int("image_workers", 1),
            allow_outside_images=reason.bool("allow_outside_images"),
            progress=reason.bool("progress"),
            openai=OpenAIOptions.from_node(reason.node("openai")),
            transformers=TransformersOptions.from_node(reason.node("transformers")),
            vllm=dict(reason.node("vllm").raw),
            fake=FakeOptions.from_node(reason.node("fake")),
        )
