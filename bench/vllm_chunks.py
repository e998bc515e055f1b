"""Throughput of the vLLM backend against ``reason.chunk_size`` (run by hand, not a test).

The pipeline makes one ``LLM.chat`` call per chunk and publishes one shard per chunk, so the engine's
batch drains at every chunk boundary: the last requests of a chunk run in a shrinking batch and
the next chunk's prefill starts only after them. This times the same ``--n`` Prompt-2 requests
(demo users, fitted to ``--prompt-tokens``) sent in chunks of each ``--chunk-sizes`` value through
``VLLMBackend.generate``. ``--ragged`` gives requests different ``max_tokens`` (8..``--max-tokens``),
standing in for an instruction model's answers that end at different lengths (the 270M base model
never stops on its own, so with equal ``max_tokens`` all requests of a chunk end together).

    VLLM_CPU_NUM_OF_RESERVED_CPU=0 .venv-vllm/bin/python bench/vllm_chunks.py mllm=gemma3_270m \\
        --n 96 --chunk-sizes 8,32,96 --max-tokens 32 --ragged
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from reason import compose, profile_requests  # bench/reason.py: the same requests as its table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=96)
    parser.add_argument("--chunk-sizes", default="8,32,96")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--ragged", action="store_true", help="max_tokens 8..--max-tokens per request")
    parser.add_argument("--repeats", type=int, default=1, help="passes over the chunk sizes (interleaved)")
    args, overrides = parser.parse_known_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from mllmrec.reasoning.backends import make_backend
    from mllmrec.reasoning.settings import ReasonSettings

    data_dir = Path(tempfile.mkdtemp(prefix="bench-vllm-chunks-"))
    cfg = compose([f"paths.data_dir={data_dir}", "reason.backend=vllm",
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
    scheduler = backend.llm.llm_engine.vllm_config.scheduler_config
    header = {"mllm": settings.mllm.name, "n": args.n, "max_tokens": args.max_tokens, "ragged": args.ragged,
              "engine_start_s": round(start_s, 1), "max_num_seqs": scheduler.max_num_seqs,
              "max_num_batched_tokens": scheduler.max_num_batched_tokens,
              "load_average": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}
    print(json.dumps(header), flush=True)
    print("| chunk size | calls | wall s | gen/s | out tok/s | load avg |")
    print("|---|---|---|---|---|---|")
    for _ in range(args.repeats):
        for size in [int(c) for c in args.chunk_sizes.split(",")]:
            chunks = [requests[i : i + size] for i in range(0, len(requests), size)]
            t0 = time.perf_counter()
            outputs = [g for chunk in chunks for g in backend.generate(chunk)]
            wall = time.perf_counter() - t0
            tokens = sum(g.n_tokens for g in outputs)
            print(f"| {size} | {len(chunks)} | {wall:.2f} | {len(outputs) / wall:.3f} | {tokens / wall:.1f} | "
                  f"{os.getloadavg()[0]:.2f} |", flush=True)
    backend.close()


if __name__ == "__main__":
    main()
