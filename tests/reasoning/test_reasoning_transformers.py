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
from mllmrec.reasoning.backends.transformers_backend import TransformersBackend, gemma_prompt


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
    from train_helpers import compose_config

    from mllmrec.encoding import EncoderSpec, encode_texts
    from mllmrec.train.task import train

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
    from PIL import Image
    import hashlib
    import io

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
