"""Per-epoch time of every model at the Baby shape (run by hand, not a test).

Each model runs in a fresh subprocess through the same path as bench/train.py (synthetic Baby-shaped
MMRec folder, composed config, datamodule, Lightning on CPU, no checkpoints/logging): BPR, LightGCN,
VBPR, FREEDOM, LATTICE, LGMRec, GUME (each multimodal one on MMRec's 384-d text + 4096-d image features, and
with the refined graph, +GR), MLLMRec and MLLMRec w/ GCN_UI.

Usage:
    python bench/baselines.py                      # writes bench/results/baselines.md
    python bench/baselines.py --epochs 3 --threads 1 --models bpr lightgcn --no-write
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

MODELS = {  # name -> Hydra overrides
    "BPR": ["model=bpr"],
    "LightGCN": ["model=lightgcn"],
    "VBPR": ["model=vbpr"],
    "FREEDOM": ["model=freedom"],
    "FREEDOM+GR": ["model=freedom", "model.item_graph=refined"],
    "LATTICE": ["model=lattice"],
    "LATTICE+GR": ["model=lattice", "model.item_graph=refined"],
    "LGMRec": ["model=lgmrec"],
    "LGMRec+GR": ["model=lgmrec", "model.item_graph=refined"],
    "GUME": ["model=gume"],
    "GUME+GR": ["model=gume", "model.item_graph=refined"],
    "MLLMRec": ["model=mllmrec"],
    "MLLMRec w/ GCN_UI": ["model=mllmrec", "model.ui_layers=2"],
}
KEYS = {m.lower().replace(" ", "_").replace("/", "").replace("+", "_"): m for m in MODELS}


def _train_bench():
    """bench/train.py as a module (loaded by path: the repository root has its own train.py)."""
    spec = importlib.util.spec_from_file_location("bench_train", HERE / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(KEYS), choices=list(KEYS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--shape", default="baby")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    bench = _train_bench()
    data_dir = args.data_dir or bench.DEFAULT_DATA
    rows = []
    for key in args.models:
        name = KEYS[key]
        result = bench.run_in_subprocess(args.shape, args.epochs, data_dir, MODELS[name], args.threads)
        print(json.dumps({"model": name, **result}), flush=True)
        rows.append((name, result))

    first = rows[0][1]
    lines = [
        f"`python bench/baselines.py {' '.join(sys.argv[1:])}`".replace(" `", "`") + f" — {args.shape} shape "
        f"({first['users']:,} users, {first['items']:,} items, {first['train_interactions']:,} training "
        f"interactions, {first['batches']} batches of 2048), torch {first['torch']}, "
        f"{first['torch_threads']} thread(s); medians over epochs after the first.",
        "",
        "| model | train epoch: wall (CPU) | validation pass: wall (CPU) | data setup / model init | peak RSS | load avg before -> after |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | **{r['train_epoch_median_s']:.2f} s** ({r['train_epoch_cpu_median_s']:.2f} s) "
            f"| {r['valid_pass_median_s']:.2f} s ({r['valid_pass_cpu_median_s']:.2f} s) | {r['setup_s']:.1f} s / {r['model_init_s']:.1f} s "
            f"| {r['peak_rss_mb']:.0f} MB | {r['load_before'][0]:.2f} -> {r['load_after'][0]:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        bench.append_results("baselines.md", text)


if __name__ == "__main__":
    main()
