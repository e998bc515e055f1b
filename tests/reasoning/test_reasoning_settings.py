"""conf/reason.yaml is the one place a reason.* default is written: settings read every key from it
(none has a default in code) and make_backend hands the typed values to the backend unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from mllmrec.reasoning.backends import make_backend
from mllmrec.reasoning.settings import ReasonConfigError, ReasonSettings

from reasoning_helpers import compose_reason

CONF = Path(__file__).resolve().parents[2] / "conf"


def _leaves(node, prefix: str = "reason") -> list[str]:
    """Dotted paths of every key under ``reason`` (``reason.vllm`` is a free-form mapping)."""
    out = []
    for key in node:
        path = f"{prefix}.{key}"
        value = node[key] if not OmegaConf.is_interpolation(node, key) else None
        if OmegaConf.is_dict(value) and path != "reason.vllm":
            out += _leaves(value, path)
        else:
            out.append(path)
    return out


def _without(cfg, dotted: str):
    cfg = cfg.copy()
    *parents, last = dotted.split(".")
    node = cfg
    for key in parents:
        node = node[key]
    with open_dict(node):
        del node[last]
    return cfg


def test_every_reason_key_is_read_from_the_yaml_and_none_has_a_code_default() -> None:
    cfg = compose_reason(["mllm=qwen25vl"])
    ReasonSettings.from_config(cfg)  # the composed YAML is complete
    keys = _leaves(cfg.reason)
    assert {"reason.chunk_size", "reason.openai.concurrency", "reason.transformers.batch_size",
            "reason.fake.delay_s", "reason.vllm"} <= set(keys)
    for dotted in keys:
        with pytest.raises(ReasonConfigError, match=f"{dotted} is missing from the config"):
            ReasonSettings.from_config(_without(cfg, dotted))


def test_typed_settings_hold_the_yaml_defaults() -> None:
    """Compared with the raw file read by OmegaConf alone (not through the settings' code)."""
    raw = OmegaConf.load(CONF / "reason.yaml").reason
    s = ReasonSettings.from_config(compose_reason(["mllm=qwen25vl"]))
    for key in ("chunk_size", "empty_retries", "retry_failed", "item_max_tokens", "image_workers",
                "prompt_margin_tokens", "separator", "list_style", "history", "seed", "num_shards"):
        assert getattr(s, key) == raw[key], key
    assert s.chars_per_token == float(raw.chars_per_token)
    for key in ("concurrency", "timeout_s", "max_retries", "probe_timeout_s"):
        assert getattr(s.openai, key) == raw.openai[key], key
    assert (s.transformers.device, s.transformers.batch_size) == (raw.transformers.device,
                                                                  raw.transformers.batch_size)
    assert s.fake.delay_s == raw.fake.delay_s and s.vllm == dict(raw.vllm)


def test_bad_values_name_their_key() -> None:
    with pytest.raises(ReasonConfigError, match="reason.openai.concurrency must be >= 1"):
        ReasonSettings.from_config(compose_reason(["mllm=qwen25vl", "reason.openai.concurrency=0"]))
    with pytest.raises(ReasonConfigError, match="reason.transformers.trust_remote_code must be true or false"):
        ReasonSettings.from_config(compose_reason(["mllm=qwen25vl", "reason.transformers.trust_remote_code=maybe"]))
    with pytest.raises(ReasonConfigError, match="reason.chunk_size must be an integer, got null"):
        ReasonSettings.from_config(compose_reason(["mllm=qwen25vl", "reason.chunk_size=null"]))


def test_make_backend_passes_every_openai_option_from_the_settings(monkeypatch) -> None:
    import mllmrec.reasoning.backends.openai_backend as openai_backend

    seen = {}
    monkeypatch.setattr(openai_backend, "OpenAIBackend", lambda **kwargs: seen.update(kwargs) or "built")
    cfg = compose_reason(["mllm=qwen25vl", "reason.backend=openai", "reason.openai.base_url=http://box:1/v1",
                          "reason.openai.api_key=k", "reason.openai.concurrency=3", "reason.openai.timeout_s=7",
                          "reason.openai.max_retries=2", "reason.openai.probe_timeout_s=4"])
    assert make_backend(ReasonSettings.from_config(cfg)) == "built"
    mllm = cfg.mllm
    assert seen == {
        "base_url": "http://box:1/v1", "identity": f"{mllm.model_id}@{mllm.revision or 'main'}", "model": None,
        "candidates": [c for c in (mllm.get("ollama"), mllm.model_id) if c], "vision": mllm.vision,
        "api_key": "k", "concurrency": 3, "timeout_s": 7.0, "max_retries": 2, "probe_timeout_s": 4.0,
    }


def test_make_backend_passes_every_transformers_and_fake_option(monkeypatch, tmp_path) -> None:
    import mllmrec.reasoning.backends.transformers_backend as transformers_backend

    seen = {}
    monkeypatch.setattr(transformers_backend, "TransformersBackend", lambda **kwargs: seen.update(kwargs))
    cfg = compose_reason(["mllm=gemma3_270m", "reason.backend=transformers", "reason.transformers.device=cpu",
                          "reason.transformers.batch_size=3", f"reason.transformers.cache_dir={tmp_path}",
                          "reason.transformers.trust_remote_code=true"])
    make_backend(ReasonSettings.from_config(cfg))
    assert {k: seen[k] for k in ("device", "dtype", "batch_size", "cache_dir", "trust_remote_code")} == {
        "device": "cpu", "dtype": None, "batch_size": 3, "cache_dir": tmp_path, "trust_remote_code": True}
    assert seen["model_id"] == cfg.mllm.model_id and seen["chat_format"] == cfg.mllm.chat_format

    fake = make_backend(ReasonSettings.from_config(
        compose_reason(["mllm=qwen25vl", "reason.backend=fake", "reason.fake.delay_s=0.25"])))
    assert fake.delay_s == 0.25 and fake.supports_images
