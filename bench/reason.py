"""Generations/s and tokens/s of a reasoning backend on this machine (run by hand, not a test).

Builds realistic requests from the demo dataset -- Prompt 2 over users' behaviour lists fitted to
``--prompt-tokens`` (``--kind profile``) or Prompt 1 over demo images upscaled to
``--image-size`` pixels (``--kind image``) -- and times ``backend.generate`` on ``--n`` of them for
each "width" in ``--widths``: the batch size of the transformers backend, the requests per
``LLM.chat`` call of vLLM (it batches internally), the concurrency of the OpenAI backend.
Prompt tokens are counted with the backend's tokenizer when it has one (else estimated).
Trailing arguments are Hydra overrides of conf/reason.yaml (choose mllm, backend, engine options).

``--vllm-python PY`` (transformers backend, profile requests) also runs the same requests through
a real ``vllm.LLM`` in the same run, in a subprocess under the interpreter ``PY`` (the vLLM venv
that ``scripts/vllm_cpu_env.sh`` builds; the dev venv needs no vLLM): the model the transformers
backend holds is saved as a float32 Hugging Face folder (vllm-cpu cannot read GGUF), both engines
get the very same prompt token ids (the transformers backend's encoding: chat turns and ``<bos>``)
and greedy sampling with the same stop tokens, and the table shows both engines side by side, with
how many generations are token-for-token identical. Width for vLLM = requests per
``LLM.generate`` call (it batches them internally). Prompt tok/s counts the full encoded prompt
(chat turns included) on both sides.

Usage:
    python bench/reason.py mllm=gemma3_270m --n 8 --max-tokens 16 --widths 1,4,8      # CPU
    python bench/reason.py mllm=gemma3_270m reason.transformers.num_threads=1 --n 32 --max-tokens 32 \
        --widths 1,8,32 --vllm-python /work/venvs/vllm/bin/python                       # CPU, vs vLLM
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


def load_average() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def rates(width: int, n: int, wall: float, prompt_tokens: int, out_tokens: int) -> dict:
    """One table row: generations/s, prompt tokens/s and output tokens/s over the wall time."""
    return {
        "width": width, "n": n, "wall_s": round(wall, 2),
        "gen_per_s": round(n / wall, 3), "out_tok_per_s": round(out_tokens / wall, 2),
        "prompt_tok_per_s": round(prompt_tokens / wall, 1),
        "mean_prompt_tokens": round(prompt_tokens / n, 1), "mean_out_tokens": round(out_tokens / n, 1),
    }


def run(backend, requests: list, width: int, counter, prompt_tokens: int | None = None) -> tuple[dict, list]:
    """Time ``backend.generate`` on ``requests`` at ``width``: (row, generations)."""
    set_width(backend, width)
    chunks = [requests[i : i + width] for i in range(0, len(requests), width)] if backend.name == "vllm" else [requests]
    load = load_average()
    t0 = time.perf_counter()
    outputs = [g for chunk in chunks for g in backend.generate(chunk)]
    wall = time.perf_counter() - t0
    if prompt_tokens is None:
        prompt_tokens = sum(counter.count(r.messages[-1].text) for r in requests)
    row = rates(width, len(requests), wall, prompt_tokens, sum(g.n_tokens for g in outputs))
    return {**row, "errors": sum(not g.ok for g in outputs), "load_average": load}, outputs


# -- vLLM on the same requests, in the vLLM venv ------------------------------------------------------
def prompt_token_ids(backend, requests: list) -> list[list[int]]:
    """The token ids the transformers backend feeds its model for each request (encoded one by one:
    no padding), so that vLLM is given exactly the same prompts."""
    return [backend._encode([r]).inputs["input_ids"][0].tolist() for r in requests]


def save_for_vllm(backend, folder: Path) -> Path:
    """The transformers backend's model, its float weights as loaded, as a Hugging Face folder
    that vLLM loads: the architecture named in config.json (the GGUF loader leaves none and vLLM
    would guess a pooling model), no GGUF ``quantization_config`` (the weights are plain floats),
    and a tied vocabulary head stored once under the embedding's name (vLLM ties it back)."""
    import copy

    from safetensors.torch import save_file

    model = backend.model
    folder.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    config.save_pretrained(str(folder))
    model.generation_config.save_pretrained(str(folder))
    backend.tokenizer.save_pretrained(str(folder))
    tied = bool(getattr(config, "tie_word_embeddings", False))
    state = {name: t.detach().contiguous() for name, t in model.state_dict().items()
             if not (tied and name == "lm_head.weight")}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def run_vllm(python: str, spec: dict, work: Path, threads: int) -> dict:
    """Run :func:`vllm_worker` under ``python`` (the vLLM venv) and return its result.

    ``threads`` > 0: that many unbound OpenMP threads (as the transformers side); 0: vLLM's own
    binding of one thread per core."""
    import subprocess

    spec_path, out_path = work / "vllm_spec.json", work / "vllm_result.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",  # vLLM keeps one of 2 cores idle otherwise
           "VLLM_CACHE_ROOT": str(work / "vllm-cache"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    if threads > 0:
        env.update(VLLM_CPU_OMP_THREADS_BIND="nobind", OMP_NUM_THREADS=str(threads))
    print(f"starting vLLM under {python} (engine start: 1-2 min on 2 busy cores)", file=sys.stderr, flush=True)
    done = subprocess.run([python, str(Path(__file__).resolve()), "--vllm-worker", str(spec_path), str(out_path)],
                          env=env, check=False)
    if done.returncode != 0 or not out_path.is_file():
        raise SystemExit(f"the vLLM worker under {python} failed (exit {done.returncode}); its log is above")
    return json.loads(out_path.read_text())


def vllm_worker(spec_path: str, out_path: str) -> None:
    """In the vLLM venv: one ``vllm.LLM``, the spec's token-id prompts at each width, greedy."""
    spec = json.loads(Path(spec_path).read_text())
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    t0 = time.perf_counter()
    llm = LLM(model=spec["model"], **spec["engine"])
    load_s = time.perf_counter() - t0
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], stop_token_ids=spec["stop_token_ids"])
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in spec["prompts"]]
    llm.generate(prompts[:1], params, use_tqdm=False)  # warm-up, as on the transformers side
    stop = set(spec["stop_token_ids"])
    rows = []
    for width in spec["widths"]:
        load = load_average()
        t0 = time.perf_counter()
        outputs = [o for start in range(0, len(prompts), width)
                   for o in llm.generate(prompts[start : start + width], params, use_tqdm=False)]
        wall = time.perf_counter() - t0
        # the stop token ends a generation and is not part of it (as in the transformers backend)
        tokens = [[t for t in o.outputs[0].token_ids if t not in stop] for o in outputs]
        finished = [o.outputs[0].finish_reason for o in outputs]
        rows.append({"width": width, "wall_s": wall, "load_average": load, "tokens": tokens,
                     "errors": sum(f not in ("stop", "length") for f in finished)})
    import vllm

    result = {"load_s": load_s, "rows": rows, "vllm": vllm.__version__}
    tmp = Path(out_path).with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, out_path)


def compare_with_vllm(backend, requests: list, widths: list[int], args, work: Path) -> list[dict]:
    """Both engines on the same prompt ids at each width: rows for the side-by-side table."""
    import torch

    ids = prompt_token_ids(backend, requests)
    prompt_tokens = sum(len(x) for x in ids)
    rows = []
    t_outputs = {}
    for width in widths:
        row, outputs = run(backend, requests, width, None, prompt_tokens)
        t_outputs[width] = outputs
        rows.append({"engine": "transformers", **row, "threads": torch.get_num_threads()})
        print(json.dumps(rows[-1]), flush=True)
    folder = save_for_vllm(backend, work / "vllm-model")
    spec = {
        "model": str(folder), "prompts": ids, "widths": widths, "max_tokens": backend_max_tokens(requests),
        "stop_token_ids": list(backend._stop_ids),
        "engine": {"dtype": "float32", "enforce_eager": True, "max_model_len": args.vllm_max_model_len,
                   "kv_cache_memory_bytes": args.vllm_kv_cache_bytes, "max_num_seqs": max(widths), "seed": 0},
    }
    threads = torch.get_num_threads() if args.vllm_threads is None else args.vllm_threads
    result = run_vllm(args.vllm_python, spec, work, threads)
    for r in result["rows"]:
        texts = [backend.tokenizer.decode(t, skip_special_tokens=True) for t in r["tokens"]]
        same = sum(a.text == b for a, b in zip(t_outputs[r["width"]], texts))
        row = rates(r["width"], len(requests), r["wall_s"], prompt_tokens, sum(len(t) for t in r["tokens"]))
        rows.append({"engine": f"vLLM {result['vllm']}", **row, "errors": r["errors"], "load_average": r["load_average"],
                     "same_as_transformers": f"{same}/{len(requests)}", "load_s": round(result["load_s"], 1),
                     "threads": threads or "vLLM's binding"})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def backend_max_tokens(requests: list) -> int:
    (max_tokens,) = {r.sampling.max_tokens for r in requests}
    return int(max_tokens)


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
    parser.add_argument("--vllm-python", default=None,
                        help="python of a vLLM venv: also run the same requests through vllm.LLM")
    parser.add_argument("--vllm-threads", type=int, default=None,
                        help="vLLM's OpenMP threads (default: the transformers side's; 0: vLLM binds one per core)")
    parser.add_argument("--vllm-max-model-len", type=int, default=1024)
    parser.add_argument("--vllm-kv-cache-bytes", type=int, default=1 << 30,
                        help="vLLM's KV cache (its default sizing fails on vllm-cpu)")
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
    if args.vllm_python and (backend.name != "transformers" or args.kind != "profile"):
        raise SystemExit("--vllm-python compares against reason.backend=transformers with --kind profile")
    backend.generate(requests[:1])  # warm-up: first-call allocations and kernel selection
    header = {"mllm": settings.mllm.name, "backend": backend.name, "kind": args.kind,
              "max_tokens": settings.mllm.sampling.max_tokens, "load_s": round(load_s, 1),
              "load_average": load_average(), "cpus": os.cpu_count()}
    try:
        import torch

        header["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        header["torch_threads"] = torch.get_num_threads()
    except ImportError:
        header["device"] = "unknown"
    print(json.dumps(header))
    widths = [int(w) for w in args.widths.split(",")]
    if args.vllm_python:
        rows = compare_with_vllm(backend, requests, widths, args, data_dir)
        print_comparison(rows)
        print(json.dumps({**header, "rows": rows}))
        backend.close()
        return
    print("| width | n | wall s | gen/s | out tok/s | prompt tok/s | mean prompt tok | mean out tok | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for width in widths:
        row, _ = run(backend, requests, width, counter)
        rows.append(row)
        print(f"| {row['width']} | {row['n']} | {row['wall_s']} | {row['gen_per_s']} | {row['out_tok_per_s']} | "
              f"{row['prompt_tok_per_s']} | {row['mean_prompt_tokens']} | {row['mean_out_tokens']} | "
              f"{row['errors']} |", flush=True)
    best = max(rows, key=lambda r: r["gen_per_s"])
    print(json.dumps({**header, "best": best, "median_gen_per_s": statistics.median(r["gen_per_s"] for r in rows)}))
    backend.close()


def print_comparison(rows: list[dict]) -> None:
    print("| engine | width | n | wall s | gen/s | prompt tok/s | out tok/s | mean prompt tok | mean out tok "
          "| same text as transformers | threads | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["width"], r["engine"] != "transformers")):
        print(f"| {r['engine']} | {r['width']} | {r['n']} | {r['wall_s']} | {r['gen_per_s']} | {r['prompt_tok_per_s']} "
              f"| {r['out_tok_per_s']} | {r['mean_prompt_tokens']} | {r['mean_out_tokens']} "
              f"| {r.get('same_as_transformers', '-')} | {r['threads']} | {r['load_average']} |", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--vllm-worker":  # the subprocess in the vLLM venv
        sys.exit(vllm_worker(sys.argv[2], sys.argv[3]))
    sys.exit(main())
