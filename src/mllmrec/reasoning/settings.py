"""Typed, checked settings of one reasoning run, read from the Hydra config (``reason.*``,
``mllm``, ``dataset``). Every check that can fail runs here, before data or a model is loaded."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mllmrec.reasoning.backends.base import Sampling
from mllmrec.reasoning.prompts import LIST_STYLES

__all__ = ["ReasonConfigError", "MllmSpec", "DatasetSpec", "ReasonSettings", "BACKENDS"]

BACKENDS = ("vllm", "openai", "transformers", "fake")


class ReasonConfigError(ValueError):
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
    def from_mapping(cls, raw: Mapping[str, Any], seed: int) -> "MllmSpec":
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
    generator: dict[str, Any]

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> "DatasetSpec":
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
        generator = {k: raw[k] for k in ("n_users", "n_items", "generator_seed", "split_seed") if k in raw}
        return cls(name, display, Path(os.path.expanduser(str(raw["root"]))), fmt,
                   raw.get("generate"), generator)


@dataclass(frozen=True)
class ReasonSettings:
    """Everything a run needs; see conf/reason.yaml for the meaning of each key."""

    dataset: DatasetSpec
    mllm: MllmSpec
    backend: str
    history: str = "train"
    separator: str = " "
    list_style: str = "python"
    chunk_size: int = 256
    shard: int = 0
    num_shards: int = 1
    shard_wait_s: float = 0.0
    poll_s: float = 10.0
    limit_items: int | None = None
    limit_users: int | None = None
    seed: int = 0
    empty_retries: int = 1
    retry_failed: bool = True
    max_prompt_tokens: int = 0
    prompt_margin_tokens: int = 64
    item_max_tokens: int = 256
    chars_per_token: float = 3.0
    image_workers: int = 8
    allow_outside_images: bool = False
    progress: bool = True
    openai: dict[str, Any] = field(default_factory=dict)
    transformers: dict[str, Any] = field(default_factory=dict)
    vllm: dict[str, Any] = field(default_factory=dict)
    fake: dict[str, Any] = field(default_factory=dict)

    @property
    def output_name(self) -> str:
        """Folder name under ``reasoning/``: the fake backend's outputs never pose as a model's."""
        return f"{self.mllm.name}-fake" if self.backend == "fake" else self.mllm.name

    @classmethod
    def from_config(cls, cfg: DictConfig | Mapping[str, Any]) -> "ReasonSettings":
        reason = _container(cfg["reason"])
        seed = int(reason.get("seed", 0))
        mllm = MllmSpec.from_mapping(_container(cfg["mllm"]), seed)
        dataset = DatasetSpec.from_mapping(_container(cfg["dataset"]))
        backend = str(reason.get("backend") or mllm.backend)
        if backend not in BACKENDS:
            raise ReasonConfigError(f"reason.backend={backend!r} is not one of {BACKENDS}")
        history = str(reason.get("history", "train"))
        if history not in ("train", "all"):
            raise ReasonConfigError(
                f"reason.history must be 'train' (default) or 'all' (the authors' leaky variant), got {history!r}"
            )
        list_style = str(reason.get("list_style", "python"))
        if list_style not in LIST_STYLES:
            raise ReasonConfigError(f"reason.list_style={list_style!r} is not one of {LIST_STYLES}")
        num_shards = _opt_int(reason.get("num_shards", 1), "reason.num_shards", 1) or 1
        shard = _opt_int(reason.get("shard", 0), "reason.shard") or 0
        if shard >= num_shards:
            raise ReasonConfigError(f"reason.shard={shard} must be < reason.num_shards={num_shards}")
        margin = _opt_int(reason.get("prompt_margin_tokens", 64), "reason.prompt_margin_tokens") or 0
        max_prompt = _opt_int(reason.get("max_prompt_tokens"), "reason.max_prompt_tokens", 1)
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
        chars_per_token = float(reason.get("chars_per_token", 3.0))
        if chars_per_token <= 0:
            raise ReasonConfigError(f"reason.chars_per_token must be > 0, got {chars_per_token}")
        if mllm.vision and mllm.gguf and backend == "transformers":
            raise ReasonConfigError("a GGUF model loads text-only here: set mllm.vision=false")
        return cls(
            dataset=dataset,
            mllm=mllm,
            backend=backend,
            history=history,
            separator=str(reason.get("separator", " ")),
            list_style=list_style,
            chunk_size=_opt_int(reason.get("chunk_size", 256), "reason.chunk_size", 1) or 256,
            shard=shard,
            num_shards=num_shards,
            shard_wait_s=float(reason.get("shard_wait_s", 0.0)),
            poll_s=float(reason.get("poll_s", 10.0)),
            limit_items=_opt_int(reason.get("limit_items"), "reason.limit_items"),
            limit_users=_opt_int(reason.get("limit_users"), "reason.limit_users"),
            seed=seed,
            empty_retries=_opt_int(reason.get("empty_retries", 1), "reason.empty_retries") or 0,
            retry_failed=bool(reason.get("retry_failed", True)),
            max_prompt_tokens=max_prompt,
            prompt_margin_tokens=margin,
            item_max_tokens=_opt_int(reason.get("item_max_tokens", 256), "reason.item_max_tokens", 8) or 256,
            chars_per_token=chars_per_token,
            image_workers=_opt_int(reason.get("image_workers", 8), "reason.image_workers", 1) or 8,
            allow_outside_images=bool(reason.get("allow_outside_images", False)),
            progress=bool(reason.get("progress", True)),
            openai=dict(reason.get("openai") or {}),
            transformers=dict(reason.get("transformers") or {}),
            vllm=dict(reason.get("vllm") or {}),
            fake=dict(reason.get("fake") or {}),
        )
