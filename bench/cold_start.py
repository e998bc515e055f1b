"""Cold-start items benchmark (run by hand, not a test): MLLMRec vs VBPR vs BPR vs popularity.

``data.cold_start_items`` (docs/cold_start.md) holds a share of the items out of training; each run
reports Recall/NDCG@K ranking only those items (metrics.json's ``cold_start`` block). Two datasets:

* ``demo``: the embedded demo (``mllm=none``: profiles rebuilt from the cold split's training history);
* ``mmrec``: an MMRec-format folder generated here from a larger demo catalogue (``--mmrec-users`` x
  ``--mmrec-items``, generator seed 1): ``<name>.inter`` with the demo's split and ``item_feat.npy`` =
  the MiniLM encoding of the item texts. No user feature file: a file made before the cold split would
  know the held-out items (train.py refuses it), so every model uses a trainable user table there.

Every run is ``python train.py`` in a subprocess, one per (dataset, model, cold seed); the table gives
the mean over the cold seeds and the range.

Usage:
    python bench/cold_start.py                           # writes bench/results/cold_start.md
    python bench/cold_start.py --seeds 1 --datasets demo --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS = {  # name -> train.py overrides
    "MLLMRec": [],
    "VBPR": ["experiment=baseline_vbpr"],
    "BPR": ["experiment=baseline_bpr"],
}
KEYS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def write_mmrec_folder(folder: Path, n_users: int, n_items: int) -> Path:
    """A larger demo catalogue as an MMRec-format folder (``demo_mmrec.inter`` + ``item_feat.npy``)."""
    sys.path.insert(0, str(ROOT / "src"))
    from mllmrec.data.demo import make_demo_dataset
    from mllmrec.encoding import EncoderSpec, encode_texts

    if (folder / "item_feat.npy").is_file():
        return folder
    layout = make_demo_dataset(folder / "source", n_users=n_users, n_items=n_items, seed=1)
    inter = pd.read_parquet(layout.interactions)
    items = pd.read_parquet(layout.items)
    inter.rename(columns={"user_id": "userID", "item_id": "itemID"})[
        ["userID", "itemID", "rating", "timestamp", "x_label"]].to_csv(folder / "demo_mmrec.inter", sep="\t", index=False)
    features = encode_texts(items["text"].tolist(), EncoderSpec(max_seq_length=128, device="cpu"))
    np.save(folder / "item_feat.npy", features.astype(np.float32))
    return folder


def run(overrides: list[str], out: Path) -> dict:
    """One ``python train.py`` run; its metrics.json."""
    cmd = [sys.executable, str(ROOT / "train.py"), "logger=none", "callbacks.user_tsne=null",
           "callbacks.progress_bar=null", f"hydra.run.dir={out}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads((out / "metrics.json").read_text())


def _cell(values: list[float]) -> str:
    mean = float(np.mean(values))
    return f"{mean:.4f}" if len(values) == 1 else f"{mean:.4f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--share", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, default=3, help="cold-item draws (data.cold_start_seed 0..n-1)")
    parser.add_argument("--datasets", nargs="+", default=["demo", "mmrec"], choices=["demo", "mmrec"])
    parser.add_argument("--mmrec-users", type=int, default=1500)
    parser.add_argument("--mmrec-items", type=int, default=800)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="cold_start_bench."))
    datasets = {
        "demo": [f"paths.data_dir={work / 'data'}"],
        "mmrec": ["dataset=mmrec", f"dataset.root={work / 'demo_mmrec'}", "dataset.name=demo_mmrec",
                  "dataset.item_features=item_feat.npy", "dataset.user_features=null",
                  "data.use_user_features=false", "dataset.tuned.alpha=0.5", "trainer.max_epochs=60"],
    }
    if "mmrec" in args.datasets:
        (work / "demo_mmrec").mkdir(parents=True, exist_ok=True)
        write_mmrec_folder(work / "demo_mmrec", args.mmrec_users, args.mmrec_items)
    started = time.time()
    results: dict[tuple[str, str], list[dict]] = {}
    for ds in args.datasets:
        for name, overrides in MODELS.items():
            for seed in range(args.seeds):
                out = work / "runs" / f"{ds}-{name}-{seed}"
                metrics = run([*datasets[ds], *overrides, f"data.cold_start_items={args.share}",
                               f"data.cold_start_seed={seed}"], out)
                results.setdefault((ds, name), []).append(metrics)
                block = metrics["cold_start"]
                print(json.dumps({"dataset": ds, "model": name, "seed": seed, "cold_items": block["items"],
                                  "cold_test": block["test"], "popularity_cold_test": block["popularity"]["test"],
                                  "all_items_test": metrics["test"]}), flush=True)

    lines = [f"data.cold_start_items={args.share}, {args.seeds} cold-item draws (data.cold_start_seed 0..{args.seeds - 1}); "
             "mean (min-max). Cold-start columns rank the held-out items only; 'all items' is the usual full "
             "ranking of the same runs' test split.", "",
             "| dataset | model | cold items | cold R@10 | cold R@20 | cold N@20 | all items R@20 |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for (ds, name), runs in results.items():
        cold = [r["cold_start"] for r in runs]
        lines.append(f"| {ds} | {name} | {cold[0]['items']} | " + " | ".join(
            _cell([c["test"][k] for c in cold]) for k in ("recall@10", "recall@20", "ndcg@20"))
            + f" | {_cell([r['test']['recall@20'] for r in runs])} |")
        if name == "BPR":  # popularity is the same for every model of a dataset (ties: item-id order)
            lines.append(f"| {ds} | popularity | {cold[0]['items']} | " + " | ".join(
                _cell([c["popularity"]["test"][k] for c in cold]) for k in ("recall@10", "recall@20", "ndcg@20"))
                + " | - |")
    lines += ["", f"Wall time {time.time() - started:.0f} s; command: `python bench/cold_start.py "
              f"--share {args.share} --seeds {args.seeds} --datasets {' '.join(args.datasets)}`."]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        out = HERE / "results" / "cold_start.md"
        out.write_text("# Cold-start items (bench/cold_start.py)\n\n" + table + "\n")
        print(f"written to {out}")


if __name__ == "__main__":
    main()
