"""``python reason.py``: config errors, the mllm group, and a run killed with SIGKILL then resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra.errors import MissingConfigException

from mllmrec.reasoning import ReasonConfigError, run_reasoning

from reasoning_helpers import CONF, REPO, compose_reason

PAPER_MODELS = {  # Table 4 of the paper -> Hugging Face id
    "gemma3_4b": "google/gemma-3-4b-it",
    "gemma3_12b": "google/gemma-3-12b-it",
    "gemma3_27b": "google/gemma-3-27b-it",
    "qwen25vl": "Qwen/Qwen2.5-VL-7B-Instruct",
    "llava_7b": "llava-hf/llava-v1.6-mistral-7b-hf",
    "ministral3_8b": "mistralai/Ministral-3-8B-Instruct-2512",
}


def reason_command(tmp: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(REPO / "reason.py"), f"paths.data_dir={tmp / 'data'}",
            f"hydra.run.dir={tmp / 'run'}", "reason.progress=false", *overrides]


def test_every_mllm_config_names_itself_and_says_if_it_sees() -> None:
    for path in sorted((CONF / "mllm").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        assert cfg["name"] == path.stem and isinstance(cfg["vision"], bool), path
    for name, model_id in PAPER_MODELS.items():
        cfg = compose_reason([f"mllm={name}"]).mllm
        assert cfg.model_id == model_id and cfg.vision is True and cfg.backend == "vllm"
        assert cfg.sampling.max_tokens <= 200 and cfg.ollama  # <= 100 words asked for
    assert compose_reason([]).mllm.name == "gemma3_270m"
    for name in ("gemma3_4b", "gemma3_12b", "gemma3_27b"):  # fp16 gives empty text in vLLM
        assert compose_reason([f"mllm={name}"]).mllm.dtype == "bfloat16"


def test_unknown_mllm_is_hydras_clear_error(tmp_path) -> None:
    with pytest.raises(MissingConfigException, match="mllm/gemma9"):
        compose_reason(["mllm=gemma9"])
    proc = subprocess.run(reason_command(tmp_path, "mllm=gemma9"), capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    assert "Could not find 'mllm/gemma9'" in proc.stderr and "qwen25vl" in proc.stderr


def test_mllm_none_and_bad_settings_fail_before_any_work(reason_cfg) -> None:
    with pytest.raises(ReasonConfigError, match="mllm=none means no MLLM"):
        run_reasoning(reason_cfg("mllm=none"))
    with pytest.raises(ReasonConfigError, match="reason.history"):
        run_reasoning(reason_cfg("reason.history=test"))
    with pytest.raises(ReasonConfigError, match="reason.shard=2 must be < reason.num_shards=2"):
        run_reasoning(reason_cfg("reason.shard=2", "reason.num_shards=2"))
    with pytest.raises(ReasonConfigError, match="reason.backend='llamacpp'"):
        run_reasoning(reason_cfg("reason.backend=llamacpp"))
    with pytest.raises(ReasonConfigError, match="exceeds mllm.max_model_len"):
        run_reasoning(reason_cfg("reason.max_prompt_tokens=5000"))
    with pytest.raises(ReasonConfigError, match="format 'mmrec'"):
        run_reasoning(reason_cfg("dataset=mmrec", "dataset.name=x", "dataset.root=/nonexistent"))


def _shards(out: Path) -> list[Path]:
    """Published shard files (a kill can leave a dot-prefixed temp file: not a shard)."""
    return sorted(p for p in out.glob("*.parquet") if not p.name.startswith(".")) if out.is_dir() else []


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_gives_exactly_one_output_each(tmp_path) -> None:
    overrides = ["mllm=qwen25vl", "reason.backend=fake", "reason.chunk_size=4", "dataset.n_users=24",
                 "dataset.n_items=16"]
    shards = tmp_path / "data" / "demo" / "reasoning" / "qwen25vl-fake" / "generations" / "shards"
    proc = subprocess.Popen(reason_command(tmp_path, *overrides, "reason.fake.delay_s=0.4"),
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while len(_shards(shards)) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)  # no cleanup handlers run: as abrupt as a power cut
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = len(_shards(shards))
    assert 3 <= killed_at and not (shards.parent.parent / "manifest.json").exists()

    done = subprocess.run(reason_command(tmp_path, *overrides), cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = shards.parent.parent
    images = pd.read_parquet(out / "image_descriptions.parquet")
    profiles = pd.read_parquet(out / "user_profiles.parquet")
    assert images["item_id"].tolist() == list(range(16)) and set(images["status"]) == {"ok"}
    assert profiles["user_id"].tolist() == list(range(24)) and set(profiles["status"]) == {"ok"}
    records = pd.concat([pd.read_parquet(p) for p in _shards(shards)])
    assert records["key"].is_unique  # nothing generated twice, nothing lost
    assert len(_shards(shards)) > killed_at


def test_a_shard_waiting_for_others_exits_3_with_its_work_saved(tmp_path) -> None:
    overrides = ["mllm=qwen25vl", "reason.backend=fake", "dataset.n_users=6", "dataset.n_items=5",
                 "reason.num_shards=2", "reason.shard=0"]
    proc = subprocess.run(reason_command(tmp_path, *overrides), cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "Rerun this shard when the others have finished" in proc.stdout + proc.stderr
    shards = tmp_path / "data" / "demo" / "reasoning" / "qwen25vl-fake" / "generations" / "shards"
    assert len(_shards(shards)) == 1
