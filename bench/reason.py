"""Generations/s and tokens/s of a reasoning backend on this machine (run by hand, not a test).

Builds realistic requests from the demo dataset -- Prompt 2 over users' behaviour lists fitted to
``--prompt-tokens`` (``--kind profile``) or Prompt 1 over demo images upscaled to
``--image-size`` pixels (``--kind image``) -- and times ``backend.generate`` on ``--n`` of them for
each "width" in ``--widths``: the batch size of the transformers backend, the requests per
``LLM.chat`` call of vLLM (it batches internally), the concurrency of the OpenAI backend.
Prompt tokens are counted with the backend's tokenizer when it has one (else estimated).
Trailing arguments are Hydra overrides of conf/reason.yaml (choose mllm, backend, engine options).

Usage:
    python bench/reason.py mllm=gemma3_270m --n 8 --max-tokens 16 --widths 1,4,8      # CPU
    python bench/reason.py mllm=qwen25vl --kind image --n 512 --widths 512             # GPU, vLLM
    python bench/reason.py mllm=gemma3_4b reason.backend=openai reason.openai.base_url=http://host:8000/v1
    python bench/reason.py --cache-scale 10000000     # the generation cache: open + lookups at 10M records
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="reason", overrides=overrides)


def profile_requests(settings, counter, n: int, prompt_tokens: int, data_dir: Path) -> list:
    """Prompt 2 over the demo users' histories (item text only), each fitted to ``prompt_tokens``."""
    from mllmrec.data import load_processed_dataset, read_items
    from mllmrec.data.demo import ensure_demo_dataset
    from mllmrec.reasoning.backends.base import Message, Request
    from mllmrec.reasoning.prompts import fit_history, profile_prompt

    layout = ensure_demo_dataset(data_dir / "demo")
    data = load_processed_dataset(layout.root)
    texts = read_items(layout.root, data.n_items)["text"].tolist()
    requests = []
    for user in range(n):
        # the longest histories first would bias the numbers: take users in id order
        fit = fit_history([texts[i] for i in data.history(user % data.n_users)], counter, prompt_tokens,
                          settings.item_max_tokens, settings.list_style)
        prompt = profile_prompt(fit.descriptions, settings.list_style)
        requests.append(Request((Message("user", prompt),), settings.mllm.sampling))
    return requests


def image_requests(settings, n: int, size: int, data_dir: Path) -> list:
    """Prompt 1 over demo item images, upscaled to ``size`` pixels (Amazon images are ~500 px)."""
    import hashlib

    from PIL import Image

    from mllmrec.data.demo import ensure_demo_dataset
    from mllmrec.reasoning.backends.base import ImagePart, Message, Request
    from mllmrec.reasoning.prompts import image_prompt

    layout = ensure_demo_dataset(data_dir / "demo")
    prompt = image_prompt(settings.dataset.display_name)
    requests = []
    for item in range(n):
        with Image.open(layout.root / "images" / f"{item % 300}.png") as img:
            buf = io.BytesIO()
            img.convert("RGB").resize((size, size), Image.NEAREST).save(buf, format="JPEG", quality=90)
        data = buf.getvalue()
        part = ImagePart(data, "image/jpeg", hashlib.sha256(data).hexdigest())
        requests.append(Request((Message("user", prompt, part),), settings.mllm.sampling))
    return requests


def set_width(backend, width: int) -> None:
    if backend.name == "transformers":
        backend.batch_size = width
    elif backend.name == "openai":
        backend.concurrency = width


def run(backend, requests: list, width: int, counter) -> dict:
    set_width(backend, width)
    chunks = [requests[i : i + width] for i in range(0, len(requests), width)] if backend.name == "vllm" else [requests]
    t0 = time.perf_counter()
    outputs = [g for chunk in chunks for g in backend.generate(chunk)]
    wall = time.perf_counter() - t0
    out_tokens = sum(g.n_tokens for g in outputs)
    prompt_tokens = sum(counter.count(r.messages[-1].text) for r in requests)
    return {
        "width": width, "n": len(requests), "wall_s": round(wall, 2),
        "gen_per_s": round(len(requests) / wall, 3), "out_tok_per_s": round(out_tokens / wall, 2),
        "prompt_tok_per_s": round(prompt_tokens / wall, 1),
        "mean_prompt_tokens": round(prompt_tokens / len(requests), 1),
        "mean_out_tokens": round(out_tokens / len(requests), 1),
        "errors": sum(not g.ok for g in outputs),
    }


# -- the generation cache at scale (--cache-scale): no backend involved -------------------------------

def _synthetic_shard(start: int, rows: int, keys: list[str]):
    """One shard of synthetic generations as the store writes them (every 50th a failure)."""
    import numpy as np
    import pyarrow as pa

    from mllmrec.reasoning.store import RECORD_COLUMNS

    ids = np.arange(start, start + rows)
    ok = ids % 50 != 0
    text = [f"user {i} prefers compact, durable products in muted colours; price-sensitive; buys "
            f"for a toddler and reads reviews before buying ({i % 97})" if o else "" for i, o in zip(ids, ok)]
    table = pa.table({
        "key": keys, "kind": ["profile"] * rows, "ref": ids.astype(np.int64),
        "status": np.where(ok, "ok", "failed").tolist(), "text": text,
        "n_tokens": np.full(rows, 40, np.int64), "finish_reason": np.where(ok, "stop", "error").tolist(),
        "error": [None if o else "boom" for o in ok], "backend": ["fake"] * rows,
        "created": np.full(rows, 1.7e9),
    })
    return table.select(RECORD_COLUMNS), ok


def _synthetic_keys(start: int, rows: int) -> list[str]:
    """Keys shaped like ``generation_key``'s (32 hex chars), unique per record id."""
    import hashlib

    return [hashlib.sha256(b"%d" % i).hexdigest()[:32] for i in range(start, start + rows)]


def build_synthetic_cache(root: Path, n: int, shard_rows: int) -> dict:
    """Write ``n`` records in shards of ``shard_rows`` through the store's own publish path (so the
    index segments are the ones a generating run leaves behind)."""
    from mllmrec.reasoning.store import GenerationStore

    store = GenerationStore(root)
    t0 = time.perf_counter()
    for start in range(0, n, shard_rows):
        rows = min(shard_rows, n - start)
        keys = _synthetic_keys(start, rows)
        table, ok = _synthetic_shard(start, rows, keys)
        store._publish(table, keys, ok)
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return {"build_s": round(time.perf_counter() - t0, 1), "shards": len(list(store.shards.iterdir())),
            "segments": len(list(store.index_dir.glob("*.npz"))), "disk_gb": round(size / 2**30, 2)}


def _open_and_look_up(root: str, n: int, lookups: int, seed: int, queue) -> None:
    """In a fresh process: open the store, then look keys up; peak RSS is this process's."""
    import random
    import resource

    from mllmrec.reasoning.store import GenerationStore

    out = {}
    t0 = time.perf_counter()
    store = GenerationStore(root)
    store.refresh()
    out["open_s"] = round(time.perf_counter() - t0, 2)
    out["records"] = len(store)
    out["rss_after_open_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    rng = random.Random(seed)
    ids = rng.sample(range(n), lookups)
    keys = [_synthetic_keys(i, 1)[0] for i in ids] + [f"absent-{i}" for i in range(lookups // 10)]
    t0 = time.perf_counter()
    missing = store.missing(keys)
    out["missing_s"] = round(time.perf_counter() - t0, 2)
    assert len(missing) == lookups // 10, "the index lost keys"
    t0 = time.perf_counter()
    done = store.done_many(keys[:lookups], retry_failed=True)
    out["done_many_s"] = round(time.perf_counter() - t0, 2)
    assert int(done.sum()) == sum(i % 50 != 0 for i in ids)
    # one run's own keys: contiguous ids (a run's chunks), then the same number spread at random
    start = rng.randrange(max(1, n - lookups))
    for label, chosen in (("contiguous", range(start, min(n, start + lookups))), ("random", ids)):
        keys = [_synthetic_keys(i, 1)[0] for i in chosen]
        t0 = time.perf_counter()
        got = store.get_many(keys)
        out[f"get_many_{label}_s"] = round(time.perf_counter() - t0, 2)
        assert len(got) == len(keys) and all(got[k].ref == i for k, i in zip(keys, chosen))
    out["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    queue.put(out)


def cache_scale(n: int, shard_rows: int, lookups: int, workdir: Path | None, keep: bool) -> dict:
    """Build a synthetic cache of ``n`` records (unless ``workdir`` already holds one of that size),
    then time opening it and looking ``lookups`` keys up in a fresh process."""
    import multiprocessing as mp
    import shutil

    root = (workdir or Path(tempfile.mkdtemp(prefix="bench-cache-"))) / f"cache-{n}-{shard_rows}"
    result = {"records": n, "shard_rows": shard_rows, "lookups": lookups, "cpus": os.cpu_count()}
    marker = root / "BUILT"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        result.update(build_synthetic_cache(root, n, shard_rows))
        marker.write_text(json.dumps(result))
    else:
        result.update({k: v for k, v in json.loads(marker.read_text()).items() if k not in result})
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_open_and_look_up, args=(str(root), n, lookups, 0, queue))
    proc.start()
    result.update(queue.get())
    proc.join()
    if not keep and workdir is None:
        shutil.rmtree(root.parent, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["profile", "image"], default="profile")
    parser.add_argument("--n", type=int, default=8, help="requests per measurement")
    parser.add_argument("--max-tokens", type=int, default=None, help="override mllm.sampling.max_tokens")
    parser.add_argument("--prompt-tokens", type=int, default=256, help="profile prompt budget")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--widths", default="1,4,8")
    parser.add_argument("--data-dir", default=None, help="where the demo dataset lives (default: a temp dir)")
    parser.add_argument("--cache-scale", type=int, default=0,
                        help="benchmark the generation cache with this many synthetic records instead")
    parser.add_argument("--cache-shard-rows", type=int, default=256, help="records per shard (reason.chunk_size)")
    parser.add_argument("--cache-lookups", type=int, default=100_000)
    parser.add_argument("--cache-dir", default=None, help="keep/reuse the synthetic cache here")
    args, overrides = parser.parse_known_args()
    if args.cache_scale:
        print(json.dumps(cache_scale(args.cache_scale, args.cache_shard_rows, args.cache_lookups,
                                     Path(args.cache_dir) if args.cache_dir else None, keep=False)))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from mllmrec.reasoning.backends import make_backend
    from mllmrec.reasoning.settings import ReasonSettings
    from mllmrec.reasoning.tokens import CharEstimateCounter

    data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="bench-reason-"))
    if args.max_tokens:
        overrides.append(f"mllm.sampling.max_tokens={args.max_tokens}")
    cfg = compose([f"paths.data_dir={data_dir}", *overrides])
    settings = ReasonSettings.from_config(cfg)
    t0 = time.perf_counter()
    backend = make_backend(settings)
    load_s = time.perf_counter() - t0
    counter = backend.token_counter() or CharEstimateCounter(settings.chars_per_token)
    if args.kind == "image":
        requests = image_requests(settings, args.n, args.image_size, data_dir)
    else:
        requests = profile_requests(settings, counter, args.n, args.prompt_tokens, data_dir)
    backend.generate(requests[:1])  # warm-up: first-call allocations and kernel selection
    try:
        load_avg = os.getloadavg()[0]
    except OSError:
        load_avg = float("nan")
    header = {"mllm": settings.mllm.name, "backend": backend.name, "kind": args.kind,
              "max_tokens": settings.mllm.sampling.max_tokens, "load_s": round(load_s, 1),
              "load_average": round(load_avg, 2), "cpus": os.cpu_count()}
    try:
        import torch

        header["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        header["torch_threads"] = torch.get_num_threads()
    except ImportError:
        header["device"] = "unknown"
    print(json.dumps(header))
    print("| width | n | wall s | gen/s | out tok/s | prompt tok/s | mean prompt tok | mean out tok | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for width in [int(w) for w in args.widths.split(",")]:
        row = run(backend, requests, width, counter)
        rows.append(row)
        print(f"| {row['width']} | {row['n']} | {row['wall_s']} | {row['gen_per_s']} | {row['out_tok_per_s']} | "
              f"{row['prompt_tok_per_s']} | {row['mean_prompt_tokens']} | {row['mean_out_tokens']} | "
              f"{row['errors']} |", flush=True)
    best = max(rows, key=lambda r: r["gen_per_s"])
    print(json.dumps({**header, "best": best, "median_gen_per_s": statistics.median(r["gen_per_s"] for r in rows)}))
    backend.close()


if __name__ == "__main__":
    sys.exit(main())
