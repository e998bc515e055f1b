"""Fixtures of the reasoning tests: composed configs, tiny datasets, the real Gemma 3 270M."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from reasoning_helpers import build_tiny_dataset, compose_reason


@pytest.fixture
def reason_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``reason_cfg(*overrides)``: composed config with data under tmp_path and no progress bars."""

    def make(*overrides: str) -> DictConfig:
        base = [f"paths.data_dir={tmp_path / 'data'}", "reason.progress=false"]
        return compose_reason(base + list(overrides))

    return make


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    return build_tiny_dataset(tmp_path / "data" / "tiny")


@pytest.fixture(scope="session")
def gemma_backend():
    """The real Gemma 3 270M (GGUF, transformers backend), loaded once per test session.

    The first load on a machine converts the GGUF (1-4 minutes on 2 busy cores) and caches the
    converted model under MLLMREC_MODEL_CACHE or ~/.cache/mllmrec/gguf; later sessions load it in
    well under a minute.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from mllmrec.reasoning.backends.transformers_backend import TransformersBackend

    cfg = compose_reason(["mllm=gemma3_270m"])
    cache_dir = os.path.expanduser(str(cfg.reason.transformers.cache_dir))
    backend = TransformersBackend(
        identity=f"{cfg.mllm.model_id}@{cfg.mllm.revision}",
        gguf=dict(cfg.mllm.gguf), vision=False, chat_format=str(cfg.mllm.chat_format),
        device="cpu", batch_size=4, cache_dir=cache_dir,
    )
    yield backend
    backend.close()
