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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["profile", "image"], default="profile")
    parser.add_argument("--n", type=int, default=8, help="requests per measurement")
    parser.add_argument("--max-tokens", type=int, default=None, help="override mllm.sampling.max_tokens")
    parser.add_argument("--prompt-tokens", type=int, default=256, help="profile prompt budget")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--widths", default="1,4,8")
    parser.add_argument("--data-dir", default=None, help="where the demo dataset lives (default: a temp dir)")
    args, overrides = parser.parse_known_args()
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
