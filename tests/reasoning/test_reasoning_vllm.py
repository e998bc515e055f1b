"""The vLLM backend against a fake engine injected at the ``vllm.LLM`` boundary (the real engine:
the opt-in ``vllm_cpu`` tier, test_reasoning_vllm_cpu*.py)."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from mllmrec.data import DatasetLayout
from mllmrec.reasoning import generation_key, image_prompt, run_reasoning
from mllmrec.reasoning.backends.base import BackendError, BackendNotInstalled
from mllmrec.reasoning.backends.vllm_backend import ALLOW_UNTESTED_ENV, check_vllm_version
from mllmrec.reasoning.store import GenerationStore

from reasoning_helpers import tiny_overrides


class FakeLLM:
    """Records what the backend asks of ``vllm.LLM`` and answers like vLLM's ``RequestOutput``."""

    instances: list[FakeLLM] = []
    fail_on_call: int | None = None  # raise on this chat call (1-based): a crash mid-run

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs
        self.chats: list[tuple[list, list]] = []
        self.chat_templates: list[str | None] = []
        self.shutdowns = 0
        self.llm_engine = SimpleNamespace(engine_core=SimpleNamespace(shutdown=self._shutdown))
        FakeLLM.instances.append(self)

    def _shutdown(self) -> None:
        self.shutdowns += 1

    def chat(self, messages, sampling_params=None, use_tqdm=True, chat_template=None):
        self.chats.append((messages, sampling_params))
        self.chat_templates.append(chat_template)
        if FakeLLM.fail_on_call == len(self.chats):
            raise RuntimeError("CUDA error: simulated crash")
        outputs = []
        for conversation, params in zip(messages, sampling_params):
            content = conversation[-1]["content"]
            if isinstance(content, list):
                image = next(p["image_pil"] for p in content if p["type"] == "image_pil")
                text = f"a product whose colour is rgb{image.getpixel((0, 0))}"
            else:
                text = f"profile of a prompt with {len(content)} characters"
            ids = list(range(min(params.kwargs["max_tokens"], len(text.split()))))
            outputs.append(SimpleNamespace(outputs=[SimpleNamespace(text=text, token_ids=ids, finish_reason="stop")]))
        return outputs

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
    FakeLLM.instances, FakeLLM.fail_on_call = [], None
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
    # 3 readable images -> chunks of 2 + 1; 3 users -> 2 + 1
    assert [len(messages) for messages, _ in chats] == [2, 1, 2, 1]
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


def test_resume_after_a_crash_mid_run_loses_and_duplicates_nothing(fake_vllm, tiny_root, reason_cfg) -> None:
    cfg = vllm_cfg(reason_cfg, tiny_root, "reason.chunk_size=1")
    FakeLLM.fail_on_call = 3  # two image chunks published, the engine dies on the third
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_reasoning(cfg)
    layout = DatasetLayout(tiny_root)
    assert not (layout.reasoning("gemma3_4b") / "manifest.json").exists()
    shards = layout.reasoning("gemma3_4b") / "generations" / "shards"
    assert len(list(shards.glob("*.parquet"))) == 2

    FakeLLM.fail_on_call = None
    result = run_reasoning(cfg)
    resumed = FakeLLM.instances[-1].chats
    # only the 1 missing image + the 3 profiles are asked for again
    assert [len(m) for m, _ in resumed] == [1, 1, 1, 1]
    frames = pd.concat([pd.read_parquet(p) for p in shards.glob("*.parquet")])
    assert frames["key"].is_unique and len(frames) == 3 + 3
    assert result.tables["image_descriptions"]["status"].tolist()[:3] == ["ok"] * 3
    assert set(result.tables["user_profiles"]["status"]) == {"ok"}


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
