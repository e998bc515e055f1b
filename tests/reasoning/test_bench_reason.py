"""bench/reason.py's transformers-vs-vLLM comparison: the model folder it hands vLLM and the prompt
ids both engines get (the engines themselves run by hand: see bench/results/reason.md)."""

from __future__ import annotations

import importlib.util
import json

import torch
from safetensors import safe_open

from mllmrec.reasoning.backends.base import Message, Request, Sampling
from mllmrec.reasoning.backends.transformers_backend import (
    TransformersBackend,
    gemma_prompt,
)

from reasoning_helpers import REPO, tiny_gemma


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_reason", REPO / "bench" / "reason.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vllm_folder_names_the_architecture_and_stores_the_tied_head_as_the_embedding(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    bench = load_bench()
    tokenizer, model = tiny_gemma()
    # what transformers' GGUF loader leaves on a dequantised model: no architectures, a GGUF config
    model.config.architectures = None
    model.config.quantization_config = {"quant_method": "gguf", "gguf_file": "tiny.gguf", "dequantize": False}
    backend = TransformersBackend("tiny@test", chat_format="gemma", device="cpu", model=model, tokenizer=tokenizer)
    folder = bench.save_for_vllm(backend, tmp_path / "for-vllm")

    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"]  # else vLLM resolves a pooling model
    assert "quantization_config" not in config
    assert model.config.quantization_config["quant_method"] == "gguf"  # the live model is untouched
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    reloaded = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    reference = model.state_dict()
    assert all(torch.equal(t, reference[name]) for name, t in reloaded.state_dict().items())
    assert torch.equal(reloaded.lm_head.weight, model.model.embed_tokens.weight)


def test_both_engines_get_the_transformers_backends_prompt_ids() -> None:
    bench = load_bench()
    tokenizer, model = tiny_gemma()
    backend = TransformersBackend("tiny@test", chat_format="gemma", device="cpu", model=model, tokenizer=tokenizer)
    requests = [Request((Message("system", "w1"), Message("user", text)), Sampling(max_tokens=2))
                for text in ("w2 w3 w4", "w5")]
    ids = bench.prompt_token_ids(backend, requests)
    # one by one: no padding; <bos> and the Gemma turns included
    assert ids == [tokenizer(gemma_prompt(r.messages))["input_ids"] for r in requests]
    assert ids[1][0] == 2 and len(ids[1]) < len(ids[0])
