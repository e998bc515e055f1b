"""Benchmark of the prepare pipeline's heavy steps on synthetic raw files of Clothing's size.

    python bench/prepare.py                    # 5.7M ratings rows, 300k metadata lines
    python bench/prepare.py --rows 1000000 --meta-lines 50000

Writes the synthetic files to a temp folder (deleted afterwards) in the real raw formats and times:
reading the ratings CSV, dropna + dedup + codes, the 5-core + re-index, the split, and reading the
metadata for the surviving items. Peak RSS is reported at the end.
"""

from __future__ import annotations

import argparse
import gzip
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from mllmrec.data.split import mmrec_split
from mllmrec.prepare.amazon import read_meta, read_ratings_2014
from mllmrec.prepare.kcore import encode_interactions, mmrec_filter


def synthetic_ratings(path: Path, rows: int, seed: int = 0) -> None:
    """Long-tailed users and items (most users rate once, as in the raw Amazon files)."""
    rng = np.random.default_rng(seed)
    n_users, n_items = rows // 2, rows // 5
    users = np.minimum((rng.pareto(1.1, rows) * n_users / 40).astype(np.int64), n_users - 1)
    items = np.minimum((rng.pareto(0.9, rows) * n_items / 60).astype(np.int64), n_items - 1)
    table = pa.table({
        "u": pa.array(np.char.add("A", np.char.zfill(users.astype(str), 13))),
        "i": pa.array(np.char.add("B", np.char.zfill(items.astype(str), 9))),
        "r": rng.integers(1, 6, rows).astype(np.float64),
        "t": 1_000_000_000 + 86_400 * rng.integers(0, 5000, rows),
    })
    pacsv.write_csv(table, path, write_options=pacsv.WriteOptions(include_header=False, quoting_style="none"))


def synthetic_meta(path: Path, lines: int, seed: int = 0) -> None:
    """Dict-literal lines of realistic length (~1 KB: related lists, description)."""
    rng = np.random.default_rng(seed)
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as f:
        for n in range(lines):
            rec = {"asin": f"B{n:09d}", "title": f"Item {n} &amp; co", "price": 9.99,
                   "imUrl": f"http://ecx.images-amazon.com/images/I/{n:011d}._SX300_.jpg",
                   "related": {"also_bought": [f"B{int(x):09d}" for x in rng.integers(0, lines, 30)]},
                   "salesRank": {"Clothing": n}, "categories": [["Clothing, Shoes & Jewelry", "Women"]],
                   "description": "A long description. " * 20}
            f.write(repr(rec) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_700_000)
    parser.add_argument("--meta-lines", type=int, default=300_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mllmrec-bench-"))
    try:
        t = time.perf_counter()
        synthetic_ratings(tmp / "ratings.csv", args.rows)
        synthetic_meta(tmp / "meta.json.gz", args.meta_lines)
        print(f"synthetic files written in {time.perf_counter() - t:.1f} s "
              f"(ratings {(tmp / 'ratings.csv').stat().st_size / 1e6:.0f} MB)")
        timings = {}
        t = time.perf_counter()
        table, _ = read_ratings_2014(tmp / "ratings.csv")
        timings["read ratings CSV"] = time.perf_counter() - t
        t = time.perf_counter()
        encoded = encode_interactions(table)
        del table
        timings["dropna + dedup + codes"] = time.perf_counter() - t
        t = time.perf_counter()
        filtered = mmrec_filter(encoded, 5)
        timings[f"5-core ({filtered.rounds} rounds) + re-index"] = time.perf_counter() - t
        t = time.perf_counter()
        mmrec_split(filtered.users, filtered.timestamp, seed=999)
        timings["split"] = time.perf_counter() - t
        wanted = {f"B{n:09d}" for n in range(0, args.meta_lines, 50)}  # 2% survive, as in Clothing
        t = time.perf_counter()
        found, _ = read_meta(tmp / "meta.json.gz", wanted=wanted)
        timings[f"read meta ({args.meta_lines:,} lines, {len(found):,} kept)"] = time.perf_counter() - t
        print(f"{args.rows:,} rows: {encoded.n_read:,} read, {len(np.unique(encoded.users)):,} users, "
              f"{len(np.unique(encoded.items)):,} items -> 5-core {filtered.n_users:,} users, "
              f"{filtered.n_items:,} items, {len(filtered.users):,} interactions")
        for name, seconds in timings.items():
            print(f"  {name:<45} {seconds:7.2f} s")
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
