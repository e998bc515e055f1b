"""The vLLM backend against a fake engine injected at the ``vllm.LLM`` boundary (the real engine:
the opt-in ``vllm_cpu`` tier, test_reasoning_vllm_cpu*.py)."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from mllmrec.data import DatasetLayout, read_items
from mllmrec.reasoning import generation_key, image_prompt, run_reasoning
from mllmrec.reasoning.backends.base import BackendError, BackendNotInstalled
from mllmrec.reasoning.backends.vllm_backend import ALLOW_UNTESTED_ENV, check_vllm_version
from mllmrec.reasoning.store import GenerationStore

from reasoning_helpers import tiny_overrides


class FakeEngine:
    """``LLM.llm_engine``: continuous batching in miniature. Each ``step`` advances the first
    ``max_num_seqs`` unfinished requests by one token and returns those that finished (vLLM's
    ``FINAL_ONLY`` outputs, plus an unfinished one now and then, which the backend must skip)."""

    def __init__(self, llm: FakeLLM) -> None:
        self.llm = llm
        self.vllm_config = SimpleNamespace(scheduler_config=SimpleNamespace(max_num_seqs=FakeLLM.max_num_seqs))
        self.engine_core = SimpleNamespace(shutdown=llm._shutdown)
        self.queue: dict[str, list] = {}  # external id -> [output, tokens left, is an image request]
        self.events: list[tuple] = []  # ("submit", n, image?) and ("step", running, image?)
        self.aborted: list[str] = []

    def has_unfinished_requests(self) -> bool:
        return bool(self.queue)

    def step(self) -> list:
        self.llm.steps += 1
        if FakeLLM.on_step is not None:
            FakeLLM.on_step(self)
        running = list(self.queue.items())[: FakeLLM.max_num_seqs]
        self.events.append(("step", len(running), running[0][1][2]))
        outputs = []
        for request_id, state in running:
            state[1] -= 1
            if state[1] <= 0:
                del self.queue[request_id]
                self.llm.delivered += 1
                outputs.append(SimpleNamespace(request_id=request_id, finished=True, outputs=state[0].outputs))
            elif state[1] == 1:
                outputs.append(SimpleNamespace(request_id=request_id, finished=False, outputs=[]))
        return outputs

    def abort_request(self, request_ids, internal: bool = False) -> None:
        self.aborted.extend(request_ids)
        for request_id in request_ids:
            self.queue.pop(request_id, None)


class FakeLLM:
    """Records what the backend asks of ``vllm.LLM`` and answers like vLLM's ``RequestOutput``:
    ``chat`` (the whole-call path) and ``enqueue_chat`` + ``llm_engine.step()`` (streaming)."""

    instances: list[FakeLLM] = []
    fail_on_call: int | None = None  # raise on this chat call (1-based): a crash mid-run
    on_step = None  # called with the engine before each step (tests look at the run from there)
    max_num_seqs = 2
    empty_first_answer = False  # answer "" to seed 0 image requests (the empty-output retry)

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs
        self.chats: list[tuple[list, list]] = []  # chat and enqueue_chat calls: (conversations, params)
        self.chat_templates: list[str | None] = []
        self.shutdowns = 0
        self.steps = 0
        self.delivered = 0
        self.counter = 0
        self.llm_engine = FakeEngine(self)
        FakeLLM.instances.append(self)

    def _shutdown(self) -> None:
        self.shutdowns += 1

    @staticmethod
    def _answer(conversation, params) -> tuple[SimpleNamespace, int]:
        """The output and how many engine steps it takes (answers of different lengths)."""
        content = conversation[-1]["content"]
        if isinstance(content, list):
            image = next(p["image_pil"] for p in content if p["type"] == "image_pil")
            text = f"a product whose colour is rgb{image.getpixel((image.width // 2, image.height // 2))}"
            if FakeLLM.empty_first_answer and params.kwargs["seed"] == 0:
                text = ""
        else:
            text = f"profile of a prompt with {len(content)} characters"
        ids = list(range(min(params.kwargs["max_tokens"], len(text.split()))))
        steps = 1 + sum(map(ord, text)) % 4
        return SimpleNamespace(outputs=[SimpleNamespace(text=text, token_ids=ids, finish_reason="stop")]), steps

    def chat(self, messages, sampling_params=None, use_tqdm=True, chat_template=None):
        self.chats.append((messages, sampling_params))
        self.chat_templates.append(chat_template)
        if FakeLLM.fail_on_call == len(self.chats):
            raise RuntimeError("CUDA error: simulated crash")
        return [self._answer(c, p)[0] for c, p in zip(messages, sampling_params)]

    def enqueue_chat(self, messages, sampling_params=None, use_tqdm=True, chat_template=None):
        self.chats.append((messages, sampling_params))
        self.chat_templates.append(chat_template)
        internal = []
        for conversation, params in zip(messages, sampling_params):
            output, steps = self._answer(conversation, params)
            request_id = str(self.counter)
            self.counter += 1
            self.llm_engine.queue[request_id] = [output, steps, isinstance(conversation[-1]["content"], list)]
            internal.append(f"{request_id}-{self.counter * 7919 % 10**8:08d}")  # vLLM's internal id
        self.llm_engine.events.append(("submit", len(messages), isinstance(messages[0][-1]["content"], list)))
        return internal

    def get_tokenizer(self):
        return SimpleNamespace(encode=lambda text, add_special_tokens=False: text.split(),
                               decode=lambda ids, skip_special_tokens=True: " ".join(ids),
                               convert_tokens_to_ids={"<end_of_turn>": 106}.get, unk_token_id=3)


class FakeSamplingParams:
    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.__version__ = "0.32.0"  # inside the tested range
    module.LLM = FakeLLM
    module.SamplingParams = FakeSamplingParams
    FakeLLM.instances, FakeLLM.fail_on_call, FakeLLM.on_step = [], None, None
    FakeLLM.max_num_seqs, FakeLLM.empty_first_answer = 2, False
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def vllm_cfg(reason_cfg, root: Path, *extra: str):
    return reason_cfg(*tiny_overrides(root, "mllm=gemma3_4b", "reason.backend=vllm", *extra))


def test_missing_vllm_says_how_to_install_or_switch(tiny_root, reason_cfg, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # "not installed", even where it is
    with pytest.raises(BackendNotInstalled) as err:
        run_reasoning(vllm_cfg(reason_cfg, tiny_root))
    message = str(err.value)
    assert 'pip install -e ".[vllm]"' in message and "reason.backend=openai" in message
    assert "reason.backend=transformers" in message


def test_one_engine_built_from_the_mllm_config(fake_vllm, tiny_root, reason_cfg) -> None:
    run_reasoning(vllm_cfg(reason_cfg, tiny_root, "mllm.vllm.tensor_parallel_size=2"))
    assert len(FakeLLM.instances) == 1
    kwargs = FakeLLM.instances[0].kwargs
    assert kwargs["model"] == "google/gemma-3-4b-it" and kwargs["dtype"] == "bfloat16"
    assert kwargs["max_model_len"] == 8192 and kwargs["tensor_parallel_size"] == 2
    assert kwargs["limit_mm_per_prompt"] == {"image": 1} and kwargs["gpu_memory_utilization"] == 0.9
    assert kwargs["mm_processor_kwargs"] == {"do_pan_and_scan": False} and kwargs["seed"] == 0


def test_chunks_carry_pil_images_and_per_request_sampling(fake_vllm, tiny_root, reason_cfg) -> None:
    from PIL import Image

    result = run_reasoning(vllm_cfg(reason_cfg, tiny_root, "reason.chunk_size=2"))
    chats = FakeLLM.instances[0].chats
    # streamed: 3 readable images, then 3 users, each fit in the 4 requests kept in flight
    assert [len(messages) for messages, _ in chats] == [3, 3]
    # published as they finish, 2 per shard: images 2 + 1, profiles 2 + 1
    shards = DatasetLayout(tiny_root).reasoning("gemma3_4b") / "generations" / "shards"
    rows = [len(pd.read_parquet(p)) for p in sorted(shards.glob("*.parquet"))]
    assert rows == [2, 1, 2, 1]
    first = chats[0][0][0][0]["content"]
    assert first[0]["type"] == "image_pil" and isinstance(first[0]["image_pil"], Image.Image)
    assert first[1] == {"type": "text", "text": image_prompt("Baby")}
    params = chats[0][1][0].kwargs
    assert params == {"max_tokens": 160, "temperature": 0.0, "top_p": 1.0, "seed": 0}
    # outputs land on their own items: the engine describes each image by its colour
    descriptions = result.tables["image_descriptions"]["image_description"].tolist()
    assert descriptions[:3] == [f"a product whose colour is rgb{c}" for c in
                                [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]


def test_text_only_engine_reserves_no_image_inputs(fake_vllm, tiny_root, reason_cfg) -> None:
    run_reasoning(reason_cfg(*tiny_overrides(tiny_root, "mllm=gemma3_4b", "mllm.vision=false",
                                             "reason.backend=vllm")))
    kwargs = FakeLLM.instances[0].kwargs
    assert "limit_mm_per_prompt" not in kwargs and "mm_processor_kwargs" not in kwargs
    assert all(isinstance(c[-1]["content"], str) for messages, _ in FakeLLM.instances[0].chats for c in messages)


def test_cache_keys_are_content_keys(fake_vllm, tiny_root, reason_cfg) -> None:
    import hashlib

    run_reasoning(vllm_cfg(reason_cfg, tiny_root))
    store = GenerationStore(DatasetLayout(tiny_root).reasoning("gemma3_4b") / "generations")
    store.refresh()
    sampling = {"max_tokens": 160, "temperature": 0.0, "top_p": 1.0, "seed": 0}
    sha = hashlib.sha256((tiny_root / "images" / "0.png").read_bytes()).hexdigest()
    key = generation_key("google/gemma-3-4b-it@main", [("user", image_prompt("Baby"), sha)], sampling)
    assert store.get(key).text == "a product whose colour is rgb(255, 0, 0)"
    # every ingredient changes the key
    variants = [
        generation_key("google/gemma-3-4b-it@abc123", [("user", image_prompt("Baby"), sha)], sampling),
        generation_key("google/gemma-3-4b-it@main", [("user", image_prompt("Baby"), "0" * 64)], sampling),
        generation_key("google/gemma-3-4b-it@main", [("user", image_prompt("Toys"), sha)], sampling),
        generation_key("google/gemma-3-4b-it@main", [("user", image_prompt("Baby"), sha)], {**sampling, "seed": 1}),
        generation_key("google/gemma-3-4b-it@main", [("user", image_prompt("Baby"), sha)], {**sampling, "max_tokens": 8}),
    ]
    assert len({key, *variants}) == 6


def _shard_rows(root: Path) -> list[int]:
    shards = DatasetLayout(root).reasoning("gemma3_4b") / "generations" / "shards"
    return [len(pd.read_parquet(p)) for p in sorted(shards.glob("*.parquet"))] if shards.is_dir() else []


def test_resume_after_a_crash_mid_run_loses_and_duplicates_nothing(fake_vllm, tiny_root, reason_cfg) -> None:
    cfg = vllm_cfg(reason_cfg, tiny_root, "reason.chunk_size=1")
    FakeLLM.max_num_seqs = 1

    def crash(engine: FakeEngine) -> None:  # two images done, the third in flight
        if engine.llm.delivered == 2:
            raise RuntimeError("simulated crash")

    FakeLLM.on_step = crash
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_reasoning(cfg)
    layout = DatasetLayout(tiny_root)
    assert not (layout.reasoning("gemma3_4b") / "manifest.json").exists()
    published = sum(_shard_rows(tiny_root))
    assert published == 2  # chunk_size 1: each finished image was published at once
    engine = FakeLLM.instances[0].llm_engine
    assert engine.aborted and not engine.queue  # the requests in flight were aborted, not left behind

    FakeLLM.on_step = None
    result = run_reasoning(cfg)
    resumed = FakeLLM.instances[-1].chats
    # only the missing images + the 3 profiles are asked for again
    assert sum(len(m) for m, _ in resumed) == (3 - published) + 3
    shards = layout.reasoning("gemma3_4b") / "generations" / "shards"
    frames = pd.concat([pd.read_parquet(p) for p in shards.glob("*.parquet")])
    assert frames["key"].is_unique and len(frames) == 3 + 3
    assert result.tables["image_descriptions"]["status"].tolist()[:3] == ["ok"] * 3
    assert set(result.tables["user_profiles"]["status"]) == {"ok"}


DEMO = ["dataset.n_users=24", "dataset.n_items=16", "mllm=gemma3_4b", "reason.backend=vllm"]


def test_streaming_keeps_the_engine_full_across_shard_boundaries(fake_vllm, reason_cfg) -> None:
    """Shards of 3 while the engine runs 2 at a time: a batch is partial only in a step's last
    drain, once every request of that step (images, then profiles) was submitted."""
    result = run_reasoning(reason_cfg(*DEMO, "reason.chunk_size=3"))
    events = FakeLLM.instances[0].llm_engine.events
    for image in (True, False):
        mine = [e for e in events if e[2] == image]
        last_submit = max(i for i, e in enumerate(mine) if e[0] == "submit")
        partial = [i for i, e in enumerate(mine) if e[0] == "step" and e[1] < FakeLLM.max_num_seqs]
        assert sum(e[0] == "step" for e in mine) > 8 and last_submit > 3
        assert all(i > last_submit for i in partial), "the engine ran a partial batch with work left to submit"
    assert set(result.tables["image_descriptions"]["status"]) == {"ok"}
    assert set(result.tables["user_profiles"]["status"]) == {"ok"}


def test_results_arrive_out_of_order_and_land_on_their_own_items(fake_vllm, reason_cfg, tmp_path) -> None:
    result = run_reasoning(reason_cfg(*DEMO, "reason.chunk_size=5"))
    shards = tmp_path / "data" / "demo" / "reasoning" / "gemma3_4b" / "generations" / "shards"
    frames = [pd.read_parquet(p) for p in sorted(shards.glob("*.parquet"))]
    images = pd.concat(f for f in frames if (f["kind"] == "image").all())
    assert images["ref"].tolist() != sorted(images["ref"])  # finished out of input order...
    # ...and each description still belongs to its image (the engine names each image's colour)
    from PIL import Image

    demo = tmp_path / "data" / "demo"
    table = result.tables["image_descriptions"]
    items = read_items(demo)
    for item, description in zip(table["item_id"], table["image_description"]):
        with Image.open(demo / items["image_path"][item]) as image:
            centre = image.convert("RGB").getpixel((image.width // 2, image.height // 2))
            assert description == f"a product whose colour is rgb{centre}"
    # every shard but each step's last holds exactly chunk_size records, each key once
    assert pd.concat(frames)["key"].is_unique
    for kind in ("image", "profile"):
        rows = [len(f) for f in frames if (f["kind"] == kind).all()]
        assert set(rows[:-1]) == {5} and 0 < rows[-1] <= 5


def test_finished_work_waiting_to_be_published_is_always_less_than_a_shard(fake_vllm, reason_cfg, tmp_path) -> None:
    """What a kill -9 while waiting on the engine would lose: generations that finished but are
    not in a published shard yet. It must stay below reason.chunk_size at every engine step."""
    shards = tmp_path / "data" / "demo" / "reasoning" / "gemma3_4b" / "generations" / "shards"
    unpublished: list[int] = []

    def look(engine: FakeEngine) -> None:
        published = sum(len(pd.read_parquet(p)) for p in shards.glob("*.parquet")) if shards.is_dir() else 0
        unpublished.append(engine.llm.delivered - published)

    FakeLLM.on_step, FakeLLM.max_num_seqs = look, 3
    run_reasoning(reason_cfg(*DEMO, "reason.chunk_size=4"))
    assert max(unpublished) == 3 and min(unpublished) == 0  # 0..chunk_size-1: never a whole shard


def test_empty_streamed_output_is_asked_again_with_the_next_seed(fake_vllm, tiny_root, reason_cfg) -> None:
    FakeLLM.empty_first_answer = True  # every image answers "" to seed 0
    result = run_reasoning(vllm_cfg(reason_cfg, tiny_root))
    seeds = [p.kwargs["seed"] for messages, params in FakeLLM.instances[0].chats
             for m, p in zip(messages, params) if isinstance(m[-1]["content"], list)]
    assert sorted(seeds) == [0, 0, 0, 1, 1, 1]
    assert result.tables["image_descriptions"]["status"].tolist()[:3] == ["ok"] * 3
    assert result.summary["counts"]["empty_retried_this_run"] == 3


def test_generate_refuses_while_streamed_requests_are_in_flight(fake_vllm) -> None:
    from mllmrec.reasoning.backends.base import Message, Request, Sampling
    from mllmrec.reasoning.backends.vllm_backend import VLLMBackend

    backend = VLLMBackend("m@main", {"model": "m"}, vision=False)
    request = Request((Message("user", "hello there"),), Sampling(max_tokens=4))
    tickets = backend.submit([request, request])
    assert tickets == ["0", "1"] and backend.max_in_flight == 4
    with pytest.raises(BackendError, match="2 streamed requests in flight"):
        backend.generate([request])
    finished = []
    while len(finished) < 2:
        finished += backend.collect()
    assert sorted(t for t, _ in finished) == tickets and backend.collect() == []
    assert finished[0][1].text == "profile of a prompt with 11 characters"
    assert backend.generate([request])[0].text == finished[0][1].text  # the same answer both ways
    backend.close()


@pytest.mark.parametrize("version", ["0.8.5", "0.31.9", "0.33.0", "1.0.0"])
def test_untested_vllm_version_stops_with_the_range(fake_vllm, tiny_root, reason_cfg, monkeypatch, version) -> None:
    monkeypatch.delenv(ALLOW_UNTESTED_ENV, raising=False)
    fake_vllm.__version__ = version
    with pytest.raises(BackendError) as err:
        run_reasoning(vllm_cfg(reason_cfg, tiny_root))
    message = str(err.value)
    assert f"vLLM {version} is installed" in message and ">=0.32,<0.33" in message
    assert ALLOW_UNTESTED_ENV in message and not FakeLLM.instances  # stopped before the engine


@pytest.mark.parametrize("version", ["0.32.0", "0.32.1+cpu", "0.32.2rc1"])
def test_tested_versions_pass(version) -> None:
    assert check_vllm_version(types.SimpleNamespace(__version__=version), environ={}) == version


def test_untested_version_runs_when_allowed(fake_vllm, tiny_root, reason_cfg, monkeypatch) -> None:
    fake_vllm.__version__ = "0.40.0"
    monkeypatch.setenv(ALLOW_UNTESTED_ENV, "1")
    result = run_reasoning(vllm_cfg(reason_cfg, tiny_root))
    assert set(result.tables["user_profiles"]["status"]) == {"ok"}


def test_gguf_model_runs_from_its_converted_folder_with_gemma_turns(fake_vllm, tiny_root, reason_cfg,
                                                                    tmp_path, monkeypatch) -> None:
    import mllmrec.reasoning.backends.transformers_backend as tb

    converted = tmp_path / "converted-folder"
    seen: list[tuple] = []
    monkeypatch.setattr(tb, "resolve_gguf", lambda spec: tmp_path / "model.gguf")
    monkeypatch.setattr(tb, "gguf_as_folder", lambda path, cache: seen.append((path, cache)) or converted)
    cfg = reason_cfg(*tiny_overrides(tiny_root, "mllm=gemma3_270m", "reason.backend=vllm",
                                     f"reason.transformers.cache_dir={tmp_path / 'cache'}"))
    run_reasoning(cfg)
    engine = FakeLLM.instances[0]
    assert seen == [(tmp_path / "model.gguf", tmp_path / "cache")]
    assert engine.kwargs["model"] == str(converted) and "revision" not in engine.kwargs
    assert engine.kwargs["kv_cache_memory_bytes"] == 1 << 30 and engine.kwargs["enforce_eager"] is True
    assert engine.chat_templates and set(engine.chat_templates) == {tb.GEMMA_CHAT_TEMPLATE}
    assert all(p.kwargs["stop_token_ids"] == [106] for _, params in engine.chats for p in params)
    assert engine.shutdowns == 1  # the run closes the engine: its worker processes stop with it


def test_gemma_chat_template_renders_gemma_prompt() -> None:
    """The Jinja template (as chat templates are rendered) writes exactly ``<bos>`` + gemma_prompt."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from mllmrec.reasoning.backends.base import Message
    from mllmrec.reasoning.backends.transformers_backend import GEMMA_CHAT_TEMPLATE, gemma_prompt

    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(GEMMA_CHAT_TEMPLATE)
    chats = [
        [Message("user", "Describe:\n  two lines")],
        [Message("system", "Be brief."), Message("user", "u1"), Message("assistant", "a1"), Message("user", "u2")],
    ]
    for chat in chats:
        rendered = template.render(messages=[{"role": m.role, "content": m.text} for m in chat],
                                   bos_token="<bos>", add_generation_prompt=True)
        assert rendered == "<bos>" + gemma_prompt(chat)


RUN_WITH_ENGINE = """
import os, subprocess, sys, time
from mllmrec.reasoning.backends.vllm_backend import descendant_processes, start_orphan_guard
# an "engine core" that starts its own "worker", as vLLM's does
code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)"
engine = subprocess.Popen([sys.executable, "-c", code])
while len(descendant_processes(os.getpid())) < 2:
    time.sleep(0.05)
processes = descendant_processes(os.getpid())
start_orphan_guard(processes)
print(" ".join(map(str, processes)), flush=True)
time.sleep(600)
"""


def test_orphan_guard_kills_the_engine_processes_of_a_sigkilled_run(tmp_path) -> None:
    """vLLM's engine core does not watch its parent: after `kill -9` of the run, the guard must
    take the engine core and its worker down."""
    import os
    import signal
    import subprocess
    import time

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"),
                                                          os.environ.get("PYTHONPATH", "")])}
    run = subprocess.Popen([sys.executable, "-c", RUN_WITH_ENGINE], stdout=subprocess.PIPE, text=True, env=env)
    pids = [int(p) for p in run.stdout.readline().split()]
    try:
        assert len(pids) == 2 and all(Path(f"/proc/{p}").exists() for p in pids)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_running(p) for p in pids):
            time.sleep(0.1)
        assert not [p for p in pids if _running(p)], "engine processes outlived the killed run"
    finally:
        for p in pids:
            if _running(p):
                os.kill(p, signal.SIGKILL)
        run.stdout.close()


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
