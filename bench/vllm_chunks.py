"""Throughput and batch occupancy of the vLLM backend against ``reason.chunk_size`` (run by hand).

Two ways through the pipeline's own code (``--modes``), each publishing shard files of
``chunk_size`` records to a scratch generation store, as ``reason.py`` does:

- ``chunked``: one ``LLM.chat`` call per chunk (``Reasoner._generate_chunk``, the path before
  streaming; still the path of non-streaming backends). The engine's batch drains at every chunk
  boundary: the chunk's last requests run in a shrinking batch and the next chunk's prefill starts
  only after them.
- ``stream``: ``Reasoner._stream_jobs`` (what ``reason.py`` runs with vLLM): ``max_in_flight``
  requests kept in the engine, a shard published whenever ``chunk_size`` have finished.

The same ``--n`` Prompt-2 requests (demo users, fitted to ``--prompt-tokens``) go through each
mode for each ``--chunk-sizes`` value (``all`` = one chunk).
``--ragged`` gives requests different ``max_tokens`` (8..``--max-tokens``), standing in for an
instruction model's answers that end at different lengths (the 270M base model never stops on
its own, so with equal ``max_tokens`` every request of a chunk ends at the same step).

Wall-clock numbers on a shared machine are noisy, so it also records what does not depend on the
load: every engine step's scheduler statistics (``disable_log_stats=False``; read at the engine
client's ``get_output``): the number of steps and the running sequences per step.
``idle share = 1 - mean(running) / max_num_seqs`` over the steps (all steps of a pass have work
left). Passes over the chunk sizes are interleaved ``--repeats`` times.

    VLLM_CPU_NUM_OF_RESERVED_CPU=0 /work/venvs/vllm/bin/python bench/vllm_chunks.py mllm=gemma3_270m \\
        --n 128 --chunk-sizes 8,16,32,all --max-tokens 64 --prompt-tokens 128 --ragged \\
        +reason.vllm.max_num_seqs=16 +reason.vllm.kv_cache_memory_bytes=268435456
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


@dataclass
class StepLog:
    """Running sequences per engine step, recorded at the engine client's ``get_output``."""

    running: list[int] = field(default_factory=list)

    def attach(self, llm: Any) -> None:
        core = llm.llm_engine.engine_core
        get_output = core.get_output

        def recording_get_output() -> Any:
            out = get_output()
            stats = getattr(out, "scheduler_stats", None)
            if stats is not None:
                self.running.append(int(stats.num_running_reqs))
            return out

        core.get_output = recording_get_output

    def take(self) -> list[int]:
        taken, self.running = self.running, []
        return taken


@dataclass(frozen=True)
class PassResult:
    mode: str
    chunk_size: int
    wall_s: float
    generations: int
    tokens: int
    running: list[int]

    def row(self, max_num_seqs: int) -> str:
        busy = [r for r in self.running if r > 0]
        mean_running = statistics.fmean(busy) if busy else 0.0
        return (f"| {self.mode} | {self.chunk_size} | {self.wall_s:.1f} | {self.generations / self.wall_s:.2f} | "
                f"{self.tokens / self.wall_s:.1f} | {len(busy)} | {mean_running:.2f} | "
                f"{1 - mean_running / max_num_seqs:.1%} | {os.getloadavg()[0]:.2f} |")


def timed_pass(mode: str, size: int, run: Callable[[], list], steps: StepLog) -> PassResult:
    steps.take()
    t0 = time.perf_counter()
    outputs = run()
    wall = time.perf_counter() - t0
    return PassResult(mode, size, wall, len(outputs), sum(g.n_tokens for g in outputs), steps.take())


def pipeline_runner(settings: Any, backend: Any, store_dir: Path) -> dict[str, Callable[[Sequence, int], list]]:
    """``mode -> run(requests, chunk_size) -> records``, through the pipeline's own code paths,
    publishing to a scratch store (each pass under fresh keys, so nothing is taken from the cache)."""
    from mllmrec.reasoning.pipeline import Job, Reasoner
    from mllmrec.reasoning.store import GenerationStore

    reasoner = Reasoner(settings, backend)
    reasoner.store = GenerationStore(store_dir)
    passes = iter(range(1 << 30))

    def jobs(requests: Sequence) -> list:
        tag = next(passes)
        return [Job(f"bench-{tag}-{i}", "profile", i, lambda r=r: r) for i, r in enumerate(requests)]

    def chunked(requests: Sequence, size: int) -> list:
        records = []
        todo = jobs(requests)
        for start in range(0, len(todo), size):
            chunk = reasoner._generate_chunk(todo[start : start + size])
            reasoner.store.append(chunk)
            records += chunk
        return records

    def stream(requests: Sequence, size: int) -> list:
        records: list = []

        def publish(chunk: Sequence) -> None:
            reasoner.store.append(chunk)
            records.extend(chunk)

        reasoner.s = replace(settings, chunk_size=size)
        reasoner._stream_jobs(backend, jobs(requests), publish)
        return records

    return {"chunked": chunked, "stream": stream}


def main() -> None:
    from reason import compose, profile_requests  # bench/reason.py: the same requests as its table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--chunk-sizes", default="8,16,32,all")
    parser.add_argument("--modes", default="chunked,stream", help="comma list of: chunked, stream")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--ragged", action="store_true", help="max_tokens 8..--max-tokens per request")
    parser.add_argument("--repeats", type=int, default=1, help="passes over the chunk sizes (interleaved)")
    parser.add_argument("--json", type=Path, help="also write every pass (with its step log) here")
    args, overrides = parser.parse_known_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from mllmrec.reasoning.backends import make_backend
    from mllmrec.reasoning.settings import ReasonSettings

    data_dir = Path(tempfile.mkdtemp(prefix="bench-vllm-chunks-"))
    cfg = compose([f"paths.data_dir={data_dir}", "reason.backend=vllm", "+reason.vllm.disable_log_stats=false",
                   f"mllm.sampling.max_tokens={args.max_tokens}", *overrides])
    settings = ReasonSettings.from_config(cfg)
    t0 = time.perf_counter()
    backend = make_backend(settings)
    start_s = time.perf_counter() - t0
    requests = profile_requests(settings, backend.token_counter(), args.n, args.prompt_tokens, data_dir)
    if args.ragged:
        span = args.max_tokens - 8 + 1
        requests = [replace(r, sampling=replace(r.sampling, max_tokens=8 + (i * 37) % span))
                    for i, r in enumerate(requests)]
    backend.generate(requests[:2])  # warm-up
    steps = StepLog()
    steps.attach(backend.llm)
    scheduler = backend.llm.llm_engine.vllm_config.scheduler_config
    max_num_seqs = int(scheduler.max_num_seqs)
    header = {"mllm": settings.mllm.name, "n": args.n, "max_tokens": args.max_tokens, "ragged": args.ragged,
              "prompt_tokens": args.prompt_tokens, "engine_start_s": round(start_s, 1),
              "max_num_seqs": max_num_seqs, "max_in_flight": backend.max_in_flight,
              "max_num_batched_tokens": scheduler.max_num_batched_tokens,
              "load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(header), flush=True)
    print("| mode | chunk size | wall s | gen/s | out tok/s | steps | mean running | idle share | load avg |")
    print("|---|---|---|---|---|---|---|---|---|")
    sizes = [len(requests) if c == "all" else int(c) for c in args.chunk_sizes.split(",")]
    runners = pipeline_runner(settings, backend, data_dir / "store")
    results: list[PassResult] = []
    for _ in range(args.repeats):
        for size in sizes:
            for mode in args.modes.split(","):
                result = timed_pass(mode, size, lambda m=mode, s=size: runners[m](requests, s), steps)
                results.append(result)
                print(result.row(max_num_seqs), flush=True)
    backend.close()
    if args.json:
        args.json.write_text(json.dumps({"header": header, "passes": [vars(r) for r in results]}))


if __name__ == "__main__":
    main()
