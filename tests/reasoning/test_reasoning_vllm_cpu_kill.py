"""``python reason.py mllm=gemma3_270m reason.backend=vllm`` (the real CLI, the real engine) killed
with SIGKILL mid-run, then rerun: exactly one output per user, no duplicate keys, every profile
``ok``, a complete manifest; and the engine's worker processes do not outlive the killed run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from vllm_cpu_helpers import GEMMA_SMALL, alive, descendants, gemma_folder, run_reason, shard_frames, vllm_env

from reasoning_helpers import REPO

pytestmark = pytest.mark.vllm_cpu

N_USERS = 40


def test_sigkill_mid_run_then_rerun(tmp_path) -> None:
    env = vllm_env(tmp_path / "vllm-cache")
    os.environ.update({k: env[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")})
    gemma_folder()  # the one-time GGUF conversion, outside the timed run
    data = tmp_path / "data"
    args = [f"paths.data_dir={data}", "mllm=gemma3_270m", "reason.backend=vllm", "reason.progress=false",
            f"reason.limit_users={N_USERS}", "reason.chunk_size=2", "mllm.sampling.max_tokens=8", *GEMMA_SMALL]
    generations = data / "demo" / "reasoning" / "gemma3_270m" / "generations"
    shards = generations / "shards"
    log = tmp_path / "killed-run.log"
    with open(log, "wb") as out:  # a file, not a pipe: vLLM's verbose logs would fill a pipe and stall the run
        run = subprocess.Popen([sys.executable, str(REPO / "reason.py"), *args], env=env, cwd=REPO,
                               stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline and run.poll() is None and len(list(shards.glob("*.parquet"))) < 2:
        time.sleep(0.02)
    assert run.poll() is None, f"the run ended before the kill: {log.read_text()[-3000:]}"
    workers = descendants(run.pid)  # the engine core (and any helper) the run started
    assert workers, "vLLM's engine runs in a child process; none found"
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=60)
    # orphaned engine processes would hold the cores and the KV cache memory: they must go too
    gone_by = time.monotonic() + 60
    while time.monotonic() < gone_by and any(alive(p) for p in workers):
        time.sleep(0.5)
    assert not [p for p in workers if alive(p)], "engine worker processes outlived the killed run"

    killed = shard_frames(generations)
    assert 0 < len(killed) < N_USERS and killed["key"].is_unique
    # streamed: a shard is published as soon as chunk_size generations have finished, so every
    # shard of the killed run is full (a kill loses at most the unpublished part of one shard,
    # plus the requests in flight)
    assert set(killed.groupby("shard_file").size()) == {2}
    assert not (generations.parent / "manifest.json").exists()

    done = run_reason(args, env)
    assert done.returncode == 0, done.stderr[-3000:]
    frames = shard_frames(generations)
    assert frames["key"].is_unique and set(killed["key"]) <= set(frames["key"])
    profiles = pd.read_parquet(generations.parent / "user_profiles.parquet")
    assert profiles["user_id"].is_unique and profiles["user_id"].tolist() == list(range(len(profiles)))
    assert (profiles["status"][:N_USERS] == "ok").all()
    assert (profiles["status"][N_USERS:] == "skipped_limit").all()
    manifest = json.loads((generations.parent / "manifest.json").read_text())
    assert manifest["backend"] == "vllm" and manifest["counts"]["profile_status"]["ok"] == N_USERS
    assert manifest["n_failures"] == 0
    # the rerun asked only for what the killed run had not published
    assert manifest["this_run"]["profile"]["generated"] == len(frames) - len(killed)
