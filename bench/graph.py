"""Build time and peak memory of the refined item-item graph at the paper's dataset shapes (run by hand).

    python bench/graph.py                   # all shapes, markdown table on stdout
    python bench/graph.py --shapes baby     # a subset
    python bench/graph.py --out bench/results/graph.md

Every shape runs in a fresh subprocess so its peak RSS (``ru_maxrss`` of that child, which includes
the Python + torch baseline and the synthetic data) is its own. Data are synthetic but shaped like the
real thing: 384-d features drawn around cluster centres (so kNN lists are not trivial and similarities
spread over [-1, 1]), power-law item popularity and 5-core-like heavy-tailed user activity (so some rows
of R^T R are dense, the case that breaks naive co-occurrence code).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class Shape:
    name: str
    users: int
    items: int
    interactions: int
    k_s: int
    alpha: float
    k_c: int
    target_seconds: float
    target_gb: float


# (alpha, k_c): the authors' best per dataset (PAPER.md); K_s = 10 everywhere.
SHAPES = {
    "baby": Shape("Baby", 19_445, 7_050, 160_792, 10, 0.7, 10, 3.0, 0.5),
    "sports": Shape("Sports", 35_598, 18_357, 296_337, 10, 0.4, 10, float("nan"), float("nan")),
    "clothing": Shape("Clothing", 39_387, 23_033, 278_677, 10, 0.6, 15, 15.0, 1.0),
    "100k": Shape("100k items", 100_000, 100_000, 1_000_000, 10, 0.6, 10, 300.0, 4.0),
}

FEATURE_DIM = 384
ITEM_POPULARITY_EXPONENT = 0.75  # Zipf-like: the top item holds ~1-2% of all interactions
MIN_USER_INTERACTIONS = 5  # the datasets are 5-core


def synthetic_features(items: int, rng: np.random.Generator) -> np.ndarray:
    """Items scattered around ~items/40 cluster centres of uneven size (float32, [items, 384])."""
    clusters = max(1, items // 40)
    centres = rng.standard_normal((clusters, FEATURE_DIM), dtype=np.float32)
    cluster_weight = rng.pareto(1.5, clusters) + 1.0
    assignment = rng.choice(clusters, size=items, p=cluster_weight / cluster_weight.sum())
    # noise of norm 0.5-1.5 x the centre's: kNN similarities spread over ~0.45-0.8 and ~12% of the
    # kNN edges fall below 0.5 at Baby's shape, as in the paper's Fig. 1b
    noise_scale = rng.uniform(0.5, 1.5, size=(items, 1)).astype(np.float32)
    features = centres[assignment] + noise_scale * rng.standard_normal((items, FEATURE_DIM), dtype=np.float32)
    return features.astype(np.float32)


def synthetic_interactions(users: int, items: int, interactions: int, rng: np.random.Generator) -> sp.csr_matrix:
    """Binary [users, items] CSR with power-law item popularity and >= 5 interactions per user."""
    extra_mean = max(interactions / users - MIN_USER_INTERACTIONS, 0.0)
    extra = rng.lognormal(mean=0.0, sigma=1.0, size=users)
    extra = np.floor(extra * extra_mean / extra.mean()).astype(np.int64)
    per_user = MIN_USER_INTERACTIONS + extra
    popularity = 1.0 / np.arange(1, items + 1) ** ITEM_POPULARITY_EXPONENT
    popularity = popularity[rng.permutation(items)]
    user_ids = np.repeat(np.arange(users), per_user)
    item_ids = rng.choice(items, size=user_ids.shape[0], p=popularity / popularity.sum())
    matrix = sp.csr_matrix((np.ones_like(user_ids, dtype=np.float32), (user_ids, item_ids)), shape=(users, items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0  # repeated draws of the same (user, item) are one interaction
    return matrix


def peak_rss_gb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS)
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_one(key: str, threads: int | None) -> dict:
    """Runs inside the child process: build the graph once, report timings and peak RSS as JSON."""
    import torch

    from mllmrec.graph import build_refined_item_graph, cooccurrence_graph

    if threads:
        torch.set_num_threads(threads)

    shape = SHAPES[key]
    rng = np.random.default_rng(999)
    features = torch.from_numpy(synthetic_features(shape.items, rng))
    interactions = synthetic_interactions(shape.users, shape.items, shape.interactions, rng)
    rss_before_gb = peak_rss_gb()

    cpu_started = cpu_seconds()
    started = time.perf_counter()
    # the build returns its statistics too (as in a training run), so they are part of what is timed
    built = build_refined_item_graph(features, interactions, shape.k_s, shape.alpha, shape.k_c)
    total_seconds = time.perf_counter() - started
    total_cpu_seconds = cpu_seconds() - cpu_started
    peak_gb = peak_rss_gb()

    # after the measured run (so it cannot change its peak RSS): the co-occurrence half alone (cheap);
    # the semantic half is the rest of the build
    started = time.perf_counter()
    cooccurrence = cooccurrence_graph(interactions, shape.k_c)
    cooccurrence_seconds = time.perf_counter() - started
    # from the measured build's own statistics: do the synthetic similarities look like Fig. 1b?
    similarities = built.statistics.knn_similarities
    below_half = float((similarities < 0.5).mean()) if similarities.size else float("nan")
    item_degree = np.asarray(interactions.sum(axis=0)).ravel()
    return {
        **asdict(shape),
        "actual_interactions": int(interactions.nnz),
        "max_item_degree": int(item_degree.max()),
        "seconds": total_seconds,
        "cpu_seconds": total_cpu_seconds,
        "cooccurrence_seconds": cooccurrence_seconds,
        "peak_rss_gb": peak_gb,
        "rss_before_build_gb": rss_before_gb,
        "final_edges": int(built.graph._nnz()),
        "cooccurrence_edges": int(cooccurrence._nnz()),
        "knn_below_half_share": below_half,
        "torch_threads": torch.get_num_threads(),
    }


def cpu_description() -> str:
    """CPU model and clock from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in info if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    return (
        f"{fields.get('model name', platform.machine())}, family {fields.get('cpu family', '?')} "
        f"model {fields.get('model', '?')}, {float(fields.get('cpu MHz', 'nan')):.0f} MHz"
    )


def markdown_table(results: list[dict]) -> str:
    def target(value: float, limit: float, unit: str) -> str:
        if limit != limit:  # NaN: no target for this shape
            return f"{value:.2f} {unit}"
        return f"{value:.2f} {unit} ({'ok' if value <= limit else 'MISSED'} <= {limit:g})"

    def below_half(share: float) -> str:
        return "n/a" if share != share else f"{100 * share:.1f}%"

    lines = [
        "| shape | users | items | interactions (max item deg.) | K_s / alpha / K_c | build time | CPU time "
        "| of which co-occ. | peak RSS | RSS before build | edges S~+C~ (C~) | kNN sims < 0.5 "
        "| load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['users']:,} | {r['items']:,} | {r['actual_interactions']:,} "
            f"({r['max_item_degree']:,}) | {r['k_s']} / {r['alpha']} / {r['k_c']} "
            f"| {target(r['seconds'], r['target_seconds'], 's')} | {r['cpu_seconds']:.1f} s "
            f"| {r['cooccurrence_seconds']:.2f} s "
            f"| {target(r['peak_rss_gb'], r['target_gb'], 'GB')} | {r['rss_before_build_gb']:.2f} GB "
            f"| {r['final_edges']:,} ({r['cooccurrence_edges']:,}) | {below_half(r['knn_below_half_share'])} "
            f"| {r['load_average']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    parser.add_argument("--out", type=Path, help="also write the table (with date and machine) here")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--one", choices=sorted(SHAPES), help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.threads)))
        return

    results = []
    for key in args.shapes:
        child = subprocess.run(
            [sys.executable, __file__, "--one", key, *(["--threads", str(args.threads)] if args.threads else [])],
            capture_output=True,
            text=True,
            check=False,
        )
        if child.returncode != 0:
            sys.exit(f"shape {key} failed:\n{child.stderr}")
        # other processes on a shared machine slow the build down: record how busy it was
        results.append({**json.loads(child.stdout.strip().splitlines()[-1]), "load_average": os.getloadavg()[0]})
        print(f"{key}: {results[-1]['seconds']:.2f} s, {results[-1]['peak_rss_gb']:.2f} GB", file=sys.stderr)

    table = markdown_table(results)
    print(table)
    if args.out:
        header = (
            f"# Refined item graph build benchmark\n\n"
            f"Date: {datetime.date.today().isoformat()}. Machine: {os.cpu_count()} CPU cores "
            f"({cpu_description()}), {results[0]['torch_threads']} torch threads, "
            f"no GPU. Command: `python {' '.join(sys.argv)}`.\n\n"
            "Synthetic data (see `bench/graph.py`): 384-d clustered features, power-law item popularity "
            "(exponent 0.75), 5-core-like user activity. Build = `build_refined_item_graph` (S~ + C~, before "
            "normalisation, with its statistics). Build time is wall-clock; CPU time is the "
            "user + system time of the build (with 2 threads on an idle machine about twice the wall time; "
            "less means other processes held the cores). Load avg is the 1-minute load average when the "
            "shape finished (this benchmark alone makes it ~2). Peak RSS is `ru_maxrss` of a fresh child "
            "process per shape and includes Python, torch and the synthetic data (the `RSS before build` column). Targets from the issue "
            "in parentheses.\n\n"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(header + table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
