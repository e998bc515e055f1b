"""The transformers backend: the real Gemma 3 270M end to end, and the chat-template/vision path
against a fake processor and model."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from mllmrec.data import DatasetLayout
from mllmrec.reasoning import run_reasoning
from mllmrec.reasoning.backends.base import ImagePart, Message, Request, Sampling
from mllmrec.reasoning.backends.transformers_backend import (
    TransformersBackend,
    gemma_prompt,
)

from reasoning_helpers import TINY_WORDS, tiny_gemma


class Recording:
    """Delegates to a real backend and keeps the requests it was given."""

    def __init__(self, inner) -> None:
        self.inner, self.requests = inner, []
        self.name, self.identity, self.supports_images = inner.name, inner.identity, inner.supports_images

    def generate(self, requests):
        self.requests += list(requests)
        return self.inner.generate(requests)

    def token_counter(self):
        return self.inner.token_counter()

    def close(self) -> None:
        """The session fixture owns the model."""


@pytest.mark.slow
def test_gemma3_270m_end_to_end_on_the_demo(gemma_backend, reason_cfg) -> None:
    backend = Recording(gemma_backend)
    cfg = reason_cfg(
        "mllm=gemma3_270m", "dataset.n_users=8", "dataset.n_items=12", "reason.limit_users=3",
        "mllm.sampling.max_tokens=8", "reason.max_prompt_tokens=160", "reason.item_max_tokens=48",
    )
    result = run_reasoning(cfg, backend)
    out = result.out_dir
    assert out == DatasetLayout(cfg.dataset.root).reasoning("gemma3_270m")
    images = pd.read_parquet(out / "image_descriptions.parquet")
    items = pd.read_parquet(out / "item_descriptions.parquet")
    users = pd.read_parquet(out / "user_profiles.parquet")
    assert len(images) == len(items) == 12 and len(users) == 8
    assert set(images["status"]) == {"text_only_model"}  # text-only model: no image step
    assert (items["description"] == items["text"]).all()
    assert users["status"].tolist()[:3] == ["ok"] * 3 and set(users["status"][3:]) == {"skipped_limit"}
    assert users["profile"][:3].str.len().min() > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"] == "transformers" and manifest["context"]["token_counting"] == "tokenizer"
    assert manifest["this_run"]["profile"]["generated"] == 3
    assert manifest["output_length"]["profile"]["mean_tokens"] <= 8
    # the demo's histories (5-40 items) do not fit 160 tokens: the oldest items were dropped
    assert manifest["counts"]["users_with_dropped_items"] >= 1
    assert (users["n_used"][:3] <= users["n_history"][:3]).all()
    # counted with the model's own tokenizer, every profile prompt fits the budget
    tokenizer = gemma_backend.tokenizer
    assert len(backend.requests) == 3
    assert all(len(tokenizer.encode(r.messages[0].text, add_special_tokens=False)) <= 160
               for r in backend.requests)

    # ... and the training app encodes exactly these texts and trains on them
    from mllmrec.encoding import EncoderSpec, encode_texts
    from mllmrec.train.task import train

    from train_helpers import compose_config

    train_cfg = compose_config("train", [
        f"paths.data_dir={cfg.paths.data_dir}", "mllm=gemma3_270m", "dataset.n_users=8",
        "dataset.n_items=12", "trainer.max_epochs=1", "logger=none", "callbacks.progress_bar=null",
        "compare_popularity=false",
    ], out.parent / "train_run")
    summary, objects = train(train_cfg)
    assert set(summary["test"]) == {"recall@10", "recall@20", "ndcg@10", "ndcg@20"}
    profiles = encode_texts(users["profile"].tolist()[:3], EncoderSpec())
    assert torch.allclose(objects["datamodule"].user_features[:3], torch.from_numpy(profiles), atol=1e-5)


@pytest.mark.slow
def test_left_padded_batch_matches_one_by_one(gemma_backend) -> None:
    short = Request((Message("user", "Red shoes."),), Sampling(max_tokens=3))
    long = Request((Message("user", "A soft cotton shirt in navy blue, for casual summer days."),),
                   Sampling(max_tokens=3))
    together = gemma_backend.generate([long, short])
    alone = gemma_backend.generate([short])
    assert together[1].text == alone[0].text and together[1].n_tokens == alone[0].n_tokens
    assert all(g.ok and g.n_tokens <= 3 for g in together)


def test_gemma_turns_are_written_out() -> None:
    messages = [Message("system", "Be brief."), Message("user", "Hi")]
    assert gemma_prompt(messages) == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    )


class FakeProcessor:
    """Stands in for a vision processor: records the conversations, tokenises to fixed ids."""

    chat_template = "{{ messages }}"  # only its presence is checked

    def __init__(self) -> None:
        self.tokenizer = SimpleNamespace(padding_side="right", pad_token_id=0, eos_token_id=2,
                                         eos_token="</s>", unk_token_id=3,
                                         decode=lambda ids, skip_special_tokens=True: " ".join(map(str, ids)))
        self.seen: list = []

    def apply_chat_template(self, conversations, **kwargs):
        self.seen.append((conversations, kwargs, self.tokenizer.padding_side))
        return {"input_ids": torch.ones(len(conversations), 5, dtype=torch.long),
                "attention_mask": torch.ones(len(conversations), 5, dtype=torch.long)}


class FakeVisionModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.generation_config = SimpleNamespace(eos_token_id=[2])
        self.calls: list = []

    def generate(self, input_ids, attention_mask, **kwargs):
        self.calls.append(kwargs)
        # row 0 stops at eos (2), row 1 runs to max_new_tokens
        new = torch.tensor([[7, 8, 2, 0], [9, 9, 9, 9]])[: input_ids.shape[0]]
        return torch.cat([input_ids, new], dim=1)


def test_vision_path_uses_the_processor_chat_template_with_images() -> None:
    import hashlib
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGBA", (4, 4), (10, 20, 30, 255)).save(buf, format="PNG")
    part = ImagePart(buf.getvalue(), "image/png", hashlib.sha256(buf.getvalue()).hexdigest())
    processor, model = FakeProcessor(), FakeVisionModel()
    backend = TransformersBackend("fake-vlm@main", vision=True, device="cpu", batch_size=4,
                                  model=model, tokenizer=None, processor=processor)
    requests = [Request((Message("user", f"describe {i}", part),), Sampling(max_tokens=4)) for i in range(2)]
    out = backend.generate(requests)
    assert [(g.text, g.n_tokens, g.finish_reason) for g in out] == [("7 8", 2, "stop"), ("9 9 9 9", 4, "length")]
    conversations, kwargs, padding_side = processor.seen[0]
    assert padding_side == "left" and kwargs["add_generation_prompt"] and kwargs["padding"]
    image_part, text_part = conversations[0][0]["content"]
    assert image_part["type"] == "image" and image_part["image"].mode == "RGB"
    assert text_part == {"type": "text", "text": "describe 0"}
    assert model.calls[0]["max_new_tokens"] == 4 and model.calls[0]["do_sample"] is False
    assert model.calls[0]["eos_token_id"] == [2]


def test_missing_chat_template_or_processor_is_a_clear_error() -> None:
    from mllmrec.reasoning.backends.base import BackendError

    tokenizer = FakeProcessor().tokenizer  # a tokenizer without a chat template
    with pytest.raises(BackendError, match="chat_format=gemma"):
        TransformersBackend("m@main", device="cpu", model=FakeVisionModel(), tokenizer=tokenizer)
    with pytest.raises(BackendError, match="needs its processor"):
        TransformersBackend("m@main", vision=True, device="cpu", model=FakeVisionModel(), tokenizer=tokenizer)


def greedy_without_cache(model, input_ids: list[int], max_tokens: int, stop: set[int]) -> list[int]:
    """Reference greedy decoding: the whole sequence re-run each step, argmax of the full logits."""
    ids, new = list(input_ids), []
    with torch.inference_mode():
        for _ in range(max_tokens):
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits
            token = int(logits[0, -1].argmax())
            if token in stop:
                break
            ids.append(token)
            new.append(token)
    return new


def test_greedy_generation_keeps_only_last_position_logits_and_matches_a_full_recompute() -> None:
    tokenizer, model = tiny_gemma()
    backend = TransformersBackend("tiny-gemma@test", chat_format="gemma", device="cpu", batch_size=2,
                                  model=model, tokenizer=tokenizer)
    logit_shapes: list[tuple[int, ...]] = []
    hook = model.register_forward_hook(lambda module, args, out: logit_shapes.append(tuple(out.logits.shape)))
    requests = [Request((Message("user", text),), Sampling(max_tokens=6))
                for text in ("w1 w2 w3 w4 w5 w6 w7", "w8", "w9 w10 w11")]
    try:
        out = backend.generate(requests)
    finally:
        hook.remove()
    # a prefill plus decode steps, each with logits for one position: the 262k-token head of
    # Gemma 3 is never computed for the prompt's other positions
    assert len(logit_shapes) > 1
    assert {shape[1] for shape in logit_shapes} == {1}, logit_shapes
    assert {shape[2] for shape in logit_shapes} == {len(TINY_WORDS)}
    # the KV cache, left padding and last-position logits change nothing: same tokens as a
    # one-by-one, cache-free decode
    stop = {1, 5}
    for request, generation in zip(requests, out):
        prompt_ids = tokenizer(gemma_prompt(request.messages))["input_ids"]
        expected = greedy_without_cache(model, prompt_ids, 6, stop)
        assert generation.n_tokens == len(expected)
        assert generation.text == tokenizer.decode(expected, skip_special_tokens=True)
        assert generation.finish_reason == ("length" if len(expected) == 6 else "stop")


def test_num_threads_sets_torch_intra_op_threads_before_loading() -> None:
    from mllmrec.reasoning.backends.base import BackendError

    tokenizer, model = tiny_gemma()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        TransformersBackend("t@test", chat_format="gemma", device="cpu", num_threads=2,
                            model=model, tokenizer=tokenizer)
        assert torch.get_num_threads() == 2
        TransformersBackend("t@test", chat_format="gemma", device="cpu", model=model, tokenizer=tokenizer)
        assert torch.get_num_threads() == 2  # None leaves the process's setting alone
        with pytest.raises(BackendError, match="reason.transformers.num_threads"):
            TransformersBackend("t@test", chat_format="gemma", device="cpu", num_threads=0,
                                model=model, tokenizer=tokenizer)
    finally:
        torch.set_num_threads(before)


def test_reason_transformers_num_threads_reaches_the_backend(tmp_path, reason_cfg) -> None:
    from mllmrec.reasoning.backends import make_backend
    from mllmrec.reasoning.settings import ReasonSettings

    tokenizer, model = tiny_gemma()
    tokenizer.save_pretrained(tmp_path / "tiny")
    model.save_pretrained(tmp_path / "tiny")
    cfg = reason_cfg("mllm=gemma3_270m", "mllm.gguf=null", f"mllm.model_id={tmp_path / 'tiny'}",
                     "mllm.revision=null", "reason.backend=transformers",
                     "reason.transformers.device=cpu", "reason.transformers.num_threads=2")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        backend = make_backend(ReasonSettings.from_config(cfg))
        assert backend.name == "transformers" and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_gguf_conversion_is_cached_and_reloaded(tmp_path, monkeypatch) -> None:
    """The GGUF reader (a minute or more per parse) runs once per file content; later loads come
    from the converted folder, with the same weights and tokenizer."""
    import transformers

    from mllmrec.reasoning.backends.transformers_backend import load_gguf_model

    reads: list[str] = []
    real_tokenizer = transformers.AutoTokenizer.from_pretrained
    real_model = transformers.AutoModelForCausalLM.from_pretrained

    def fake_tokenizer(name, *args, **kwargs):
        if kwargs.get("gguf_file"):
            reads.append("tokenizer")
            return tiny_gemma()[0]
        return real_tokenizer(name, *args, **kwargs)

    def fake_model(name, *args, **kwargs):
        if kwargs.get("gguf_file"):
            reads.append("model")
            return tiny_gemma()[1]
        return real_model(name, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_tokenizer)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_model)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF stand-in, version 1")
    cache = tmp_path / "cache"

    tokenizer, model = load_gguf_model(gguf, cache)
    assert reads == ["tokenizer", "model"]
    tokenizer2, model2 = load_gguf_model(gguf, cache)
    assert reads == ["tokenizer", "model"]  # from the folder: no second GGUF parse
    assert model2 is not model
    reference = model.state_dict()
    assert set(model2.state_dict()) == set(reference)
    assert all(torch.equal(t, reference[name]) for name, t in model2.state_dict().items())
    text = "<start_of_turn>user\nw1 w2<end_of_turn>\n"
    assert tokenizer2(text)["input_ids"] == tokenizer(text)["input_ids"]

    # other file content: a new conversion, beside the first
    gguf.write_bytes(b"GGUF stand-in, version 2")
    load_gguf_model(gguf, cache)
    assert reads == ["tokenizer", "model"] * 2
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2  # beside them: the writers' lock files
