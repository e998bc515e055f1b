"""Sentences/s of the text encoder on this machine (run by hand, not a test).

Encodes ``--n`` synthetic item descriptions (word counts spread like Amazon descriptions with an
MLLM image description appended: 40-400 words, so some are truncated at ``--max-seq-length``)
with each batch size in ``--batch-sizes`` in this process, then with ``--processes`` worker
processes (``encoder.devices=[cpu,...]``, the cores split between them), and checks that the
pooled vectors equal the single-process ones.

Usage:
    python bench/encode.py                                   # CPU: batch sizes 16..256, 1 vs 2 processes
    python bench/encode.py --device cuda --batch-sizes 64,256,1024 --n 50000
    python bench/encode.py --devices cuda:0,cuda:1 --batch-sizes 512 --n 200000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

WORDS = ("soft cotton blend fabric with a relaxed fit machine washable breathable lightweight durable "
         "toddler baby safe bpa free stroller compatible adjustable strap waterproof lining compact "
         "colour navy grey pink includes two pieces easy to clean gift for newborn shower registry "
         "the image shows a product on a white background with rounded edges and a printed pattern").split()


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(int(rng.uniform(40, 400)))) for _ in range(n)]


def timed(texts: list[str], spec) -> tuple[float, object]:
    from mllmrec.encoding import encode_texts

    encode_texts(texts[: spec.batch_size], spec)  # warm-up: model load, first-call allocations
    t0 = time.perf_counter()
    vectors = encode_texts(texts, spec)
    return time.perf_counter() - t0, vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch-sizes", default="16,64,256")
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--devices", default="cpu,cpu", help="pool devices ('' to skip the pool row)")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    args = parser.parse_args()
    import numpy as np
    import torch

    from mllmrec.encoding import EncoderSpec

    texts = synthetic_texts(args.n)
    header = {"n": args.n, "max_seq_length": args.max_seq_length, "model": args.model, "cpus": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "load_average": round(os.getloadavg()[0], 2)}
    print(json.dumps(header))
    print("| setting | batch | wall s | sentences/s |")
    print("|---|---|---|---|")
    reference, best_batch, best_rate = None, None, 0.0
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        spec = EncoderSpec(model=args.model, max_seq_length=args.max_seq_length, batch_size=batch,
                           device=args.device)
        wall, vectors = timed(texts, spec)
        reference = vectors if reference is None else reference
        rate = args.n / wall
        if rate > best_rate:
            best_batch, best_rate = batch, rate
        print(f"| 1 process ({args.device}, {torch.get_num_threads()} threads) | {batch} | {wall:.1f} | {rate:.1f} |",
              flush=True)
    if args.devices:
        devices = tuple(args.devices.split(","))
        spec = EncoderSpec(model=args.model, max_seq_length=args.max_seq_length, batch_size=best_batch,
                           devices=devices)
        wall, vectors = timed(texts, spec)
        diff = float(np.abs(vectors - reference).max())
        print(f"| {len(devices)} processes ({','.join(devices)}) | {best_batch} | {wall:.1f} | {args.n / wall:.1f} |")
        print(json.dumps({"pool_vs_single_max_abs_diff": diff}))


if __name__ == "__main__":
    sys.exit(main())
