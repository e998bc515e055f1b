"""Build time and peak memory of the refined item-item graph at the paper's dataset shapes (run by hand).

    python bench/graph.py                   # the paper's shapes and 100k (exact and faiss), on stdout
    python bench/graph.py --shapes baby     # a subset
    python bench/graph.py --out bench/results/graph.md
    python bench/graph.py --shapes 100k --knn exact faiss     # both searches, neighbour recall of faiss
    python bench/graph.py --shapes 1m --train                 # 1M items: build, one epoch, validation

``--knn`` picks the semantic search(es) (default: exact for the paper's shapes, both at 100k, faiss at
1M where exact would take hours); each (shape, search) is its own child process. With both, the
faiss row reports its neighbour recall against the exact row's kNN lists (all items); a faiss row
without an exact one reports the recall on 2,000 sampled items (exact rows computed after the
measured build). ``--train`` adds, in the same child after the build, one BPR training epoch of
MLLMRec (d = 64, batch 2048) and a full-ranking validation pass over a sample of users (RankingMetrics,
batches capped as in the datamodule), with peak RSS after each.

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
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
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
    "1m": Shape("1M items", 1_000_000, 1_000_000, 10_000_000, 10, 0.6, 10, 1200.0, 16.0),
}
# the semantic searches run per shape when --knn is not given
DEFAULT_KNN = {"baby": ["exact"], "sports": ["exact"], "clothing": ["exact"], "100k": ["exact", "faiss"],
               "1m": ["faiss"]}
RECALL_SAMPLE = 2_000

FEATURE_DIM = 384
ITEM_POPULARITY_EXPONENT = 0.75  # Zipf-like: the top item holds ~1-2% of all interactions
MIN_USER_INTERACTIONS = 5  # the datasets are 5-core


def synthetic_features(items: int, rng: np.random.Generator, block: int = 65_536) -> np.ndarray:
    """Items scattered around ~items/40 cluster centres of uneven size (float32, [items, 384]).

    Written ``block`` rows at a time, so generating 1M x 384 needs no temporaries beyond the result.
    """
    clusters = max(1, items // 40)
    centres = rng.standard_normal((clusters, FEATURE_DIM), dtype=np.float32)
    cluster_weight = rng.pareto(1.5, clusters) + 1.0
    assignment = rng.choice(clusters, size=items, p=cluster_weight / cluster_weight.sum())
    # noise of norm 0.5-1.5 x the centre's: kNN similarities spread over ~0.45-0.8 and ~12% of the
    # kNN edges fall below 0.5 at Baby's shape, as in the paper's Fig. 1b
    noise_scale = rng.uniform(0.5, 1.5, size=(items, 1)).astype(np.float32)
    features = np.empty((items, FEATURE_DIM), dtype=np.float32)
    for start in range(0, items, block):
        rows = slice(start, min(start + block, items))
        noise = rng.standard_normal((rows.stop - rows.start, FEATURE_DIM), dtype=np.float32)
        features[rows] = centres[assignment[rows]] + noise_scale[rows] * noise
    return features


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


class StageClock:
    """Wall and CPU seconds of the build's stages, taken by wrapping the functions that run them."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self.results: dict[str, object] = {}

    def wrap(self, module, name: str, stage: str) -> None:
        real = getattr(module, name)

        def timed(*args, **kwargs):
            started, cpu_started = time.perf_counter(), cpu_seconds()
            result = real(*args, **kwargs)
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started
            self.cpu_seconds[stage] = self.cpu_seconds.get(stage, 0.0) + cpu_seconds() - cpu_started
            self.results[stage] = result
            return result

        setattr(module, name, timed)


def sampled_recall(features, found, k: int, rng: np.random.Generator) -> dict:
    """Neighbour recall of the kNN ``found`` against the exact top-k of RECALL_SAMPLE sampled items, and
    the mean cosine of the k-th neighbour in both (how much worse a missed neighbour's replacement is)."""
    import torch

    from mllmrec.graph import knn

    n = features.shape[0]
    items = torch.from_numpy(np.sort(rng.choice(n, size=min(RECALL_SAMPLE, n), replace=False)))
    unit, nonzero = knn._unit_rows(features)
    exact = knn._semantic_rows(unit, nonzero, items, k, 64)  # [64, I] blocks: 256 MB at 1M items
    exact_cols = exact.cols.view(-1, k).numpy()
    found_cols = found.cols.view(-1, k).numpy()[items.numpy()]
    return {
        "sampled_recall": float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found_cols, exact_cols)])),
        "kth_cosine_exact": float(exact.scores.view(-1, k)[:, -1].mean()),
        "kth_cosine_found": float(found.scores.view(-1, k)[items, -1].mean()),
    }


def train_and_validate(features, interactions: sp.csr_matrix, graph, threads_note: int, rng) -> dict:
    """One BPR training epoch of MLLMRec and a validation pass over sampled users (see module doc)."""
    import torch

    from mllmrec.metrics import RankingMetrics
    from mllmrec.models.mllmrec import MLLMRec
    from mllmrec.train.batches import BPRTriplets
    from mllmrec.train.datamodule import eval_users_per_batch

    users, items = interactions.shape
    user_features = torch.from_numpy(synthetic_features(users, rng))
    # validation truth: one random item per user (timing only; the metric values mean nothing here)
    truth = sp.csr_matrix((np.ones(users, dtype=np.float32), (np.arange(users), rng.integers(items, size=users))),
                          shape=(users, items))
    torch.manual_seed(0)
    started, cpu_started = time.perf_counter(), cpu_seconds()
    model = MLLMRec(features, user_features, graph, d=64)
    model.propagated_items()  # once per run (on_fit_start): the graph propagation of the frozen features
    init_seconds, init_cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    optimizer = model.configure_optimizers()
    triplets = BPRTriplets(interactions, 2048, seed=999)

    started, cpu_started = time.perf_counter(), cpu_seconds()
    triplets.build_epoch(0)
    model.train()
    for batch in range(len(triplets)):
        user, positive, negative = triplets[batch]
        loss = model.loss(user, positive, negative)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    epoch_seconds, epoch_cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    rss_after_epoch = peak_rss_gb()
    print(f"epoch done: {epoch_seconds:.1f} s wall, {epoch_cpu:.1f} s CPU, {len(triplets)} batches, "
          f"peak RSS {rss_after_epoch:.2f} GB", file=sys.stderr, flush=True)

    eval_users = np.sort(rng.choice(users, size=min(users, 8_192), replace=False))
    per_batch = eval_users_per_batch(4096, items)
    started, cpu_started = time.perf_counter(), cpu_seconds()
    model.eval()
    with torch.no_grad():
        model.prepare_eval()
        ranking = RankingMetrics(interactions, truth)
        for start in range(0, eval_users.size, per_batch):
            batch_users = torch.from_numpy(eval_users[start : start + per_batch])
            blocks = model.score_blocks(batch_users)  # what validation does (item blocks above 32k items)
            if blocks is not None:
                ranking.update_blocks(batch_users, blocks)
            else:
                ranking.update(batch_users, model.full_scores(batch_users), inplace=True)
    valid_seconds, valid_cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    return {
        "model_init_seconds": init_seconds, "model_init_cpu_seconds": init_cpu,
        "train_batches": len(triplets), "epoch_seconds": epoch_seconds, "epoch_cpu_seconds": epoch_cpu,
        "peak_rss_after_epoch_gb": rss_after_epoch,
        "valid_users_timed": int(eval_users.size), "valid_users_total": users, "valid_batch_users": per_batch,
        "valid_seconds": valid_seconds, "valid_cpu_seconds": valid_cpu,
        "valid_full_pass_seconds_extrapolated": valid_seconds * users / eval_users.size,
        "peak_rss_after_valid_gb": peak_rss_gb(),
    }


def run_one(key: str, method: str, threads: int | None, cols_out: str | None, train: bool,
            probes: int | None, refine: int | None = None) -> dict:
    """Runs inside the child process: build the graph once, report timings and peak RSS as JSON."""
    import torch

    from mllmrec.graph import AnnParams, ann, build_refined_item_graph, knn

    if threads:
        torch.set_num_threads(threads)
    # the approximate search logs where its time goes (k-means, probes, list scan, re-scoring)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("mllmrec.graph.ann").setLevel(logging.INFO)

    shape = SHAPES[key]
    rng = np.random.default_rng(999)
    features = torch.from_numpy(synthetic_features(shape.items, rng))
    interactions = synthetic_interactions(shape.users, shape.items, shape.interactions, rng)
    rss_before_gb = peak_rss_gb()
    clock = StageClock()
    clock.wrap(knn, "semantic_knn", "semantic")
    clock.wrap(ann, "approximate_semantic_knn", "semantic")
    clock.wrap(knn, "cooccurrence_knn", "cooccurrence")

    cpu_started = cpu_seconds()
    started = time.perf_counter()
    # the build returns its statistics too (as in a training run), so they are part of what is timed
    ann_params = AnnParams(**{name: value for name, value in (("probes", probes), ("refine", refine))
                              if value is not None})
    built = build_refined_item_graph(features, interactions, shape.k_s, shape.alpha, shape.k_c, knn_method=method,
                                     ann_params=ann_params)
    total_seconds = time.perf_counter() - started
    total_cpu_seconds = cpu_seconds() - cpu_started
    peak_gb = peak_rss_gb()
    load_after_build = os.getloadavg()[0]

    k = min(shape.k_s, shape.items)
    found_cols = clock.results["semantic"].cols.view(-1, k).numpy()
    if cols_out:
        np.save(cols_out, found_cols)
    recall = sampled_recall(features, clock.results["semantic"], k, np.random.default_rng(1)) if method == "faiss" else {}
    # from the measured build's own statistics: do the synthetic similarities look like Fig. 1b?
    similarities = built.statistics.knn_similarities
    below_half = float((similarities < 0.5).mean()) if similarities.size else float("nan")
    item_degree = np.asarray(interactions.sum(axis=0)).ravel()
    result = {
        **asdict(shape),
        "knn": method if method == "exact" else f"{method} (L = {ann_params.resolved_lists(shape.items)}, "
                                                f"P = {ann_params.probes}, R = {ann_params.refine})",
        "actual_interactions": int(interactions.nnz),
        "max_item_degree": int(item_degree.max()),
        "seconds": total_seconds,
        "cpu_seconds": total_cpu_seconds,
        "semantic_seconds": clock.seconds["semantic"],
        "semantic_cpu_seconds": clock.cpu_seconds["semantic"],
        "cooccurrence_seconds": clock.seconds.get("cooccurrence", 0.0),
        "cooccurrence_cpu_seconds": clock.cpu_seconds.get("cooccurrence", 0.0),
        "peak_rss_gb": peak_gb,
        "rss_before_build_gb": rss_before_gb,
        "final_edges": int(built.graph._nnz()),
        "cooccurrence_edges": int(built.statistics.cooccurrence_edges),
        "knn_below_half_share": below_half,
        **recall,
        "load_average_build": load_after_build,
        "torch_threads": torch.get_num_threads(),
    }
    # progress on stderr: a long run that is stopped later still leaves the build's numbers behind
    print(f"build done: {json.dumps(result)}", file=sys.stderr, flush=True)
    if train:
        del clock
        result.update(train_and_validate(features, interactions, built.graph, torch.get_num_threads(), rng))
    return result


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

    def recall(r: dict) -> str:
        if r.get("recall") is not None:
            return f"{r['recall']:.4f} (all items; {r['sampled_recall']:.4f} on {RECALL_SAMPLE:,} sampled)"
        if r.get("sampled_recall") is not None:
            return (f"{r['sampled_recall']:.4f} ({RECALL_SAMPLE:,} sampled; K-th cosine "
                    f"{r['kth_cosine_found']:.3f} vs exact {r['kth_cosine_exact']:.3f})")
        return "exact"

    lines = [
        "| shape | users | items | interactions (max item deg.) | K_s / alpha / K_c | kNN | build time | CPU time "
        "| semantic: wall / CPU | co-occ.: wall / CPU | peak RSS | RSS before build | edges S~+C~ (C~) "
        "| kNN recall | kNN sims < 0.5 | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['users']:,} | {r['items']:,} | {r['actual_interactions']:,} "
            f"({r['max_item_degree']:,}) | {r['k_s']} / {r['alpha']} / {r['k_c']} | {r['knn']} "
            f"| {target(r['seconds'], r['target_seconds'], 's')} | {r['cpu_seconds']:.1f} s "
            f"| {r['semantic_seconds']:.1f} / {r['semantic_cpu_seconds']:.1f} s "
            f"| {r['cooccurrence_seconds']:.1f} / {r['cooccurrence_cpu_seconds']:.1f} s "
            f"| {target(r['peak_rss_gb'], r['target_gb'], 'GB')} | {r['rss_before_build_gb']:.2f} GB "
            f"| {r['final_edges']:,} ({r['cooccurrence_edges']:,}) | {recall(r)} "
            f"| {below_half(r['knn_below_half_share'])} | {r['load_average_build']:.1f} |"
        )
    trained = [r for r in results if "epoch_seconds" in r]
    if trained:
        lines += [
            "",
            "| shape | kNN | model init + propagation: wall / CPU | training epoch (batches): wall / CPU "
            "| peak RSS after epoch | validation: users timed (per batch) | wall / CPU "
            "| full pass, extrapolated | peak RSS after validation | load avg |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in trained:
            lines.append(
                f"| {r['name']} | {r['knn']} | {r['model_init_seconds']:.1f} / {r['model_init_cpu_seconds']:.1f} s "
                f"| {r['epoch_seconds']:.1f} / {r['epoch_cpu_seconds']:.1f} s ({r['train_batches']:,}) "
                f"| {r['peak_rss_after_epoch_gb']:.2f} GB "
                f"| {r['valid_users_timed']:,} of {r['valid_users_total']:,} ({r['valid_batch_users']}) "
                f"| {r['valid_seconds']:.1f} / {r['valid_cpu_seconds']:.1f} s "
                f"| {r['valid_full_pass_seconds_extrapolated'] / 60:.0f} min "
                f"| {r['peak_rss_after_valid_gb']:.2f} GB | {r['load_average']:.1f} |"
            )
    return "\n".join(lines)


def full_recall(exact_cols: Path, found_cols: Path) -> float:
    """Mean over all items of |found top-k & exact top-k| / k (the item itself included in both)."""
    exact, found = np.load(exact_cols), np.load(found_cols)
    hits = (found[:, :, None] == exact[:, None, :]).any(axis=2).sum(axis=1)  # rows hold distinct ids
    return float(hits.mean() / exact.shape[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=[s for s in SHAPES if s != "1m"])
    parser.add_argument("--knn", nargs="+", choices=["exact", "faiss"], help="semantic search(es) per shape")
    parser.add_argument("--train", action="store_true", help="also one training epoch + validation pass")
    parser.add_argument("--probes", type=int, help="graph.ann.probes of the faiss search (default: its default)")
    parser.add_argument("--refine", type=int, help="graph.ann.refine of the faiss search (default: its default)")
    parser.add_argument("--out", type=Path, help="also write the table (with date and machine) here")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--one", choices=sorted(SHAPES), help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--method", choices=["exact", "faiss"], help=argparse.SUPPRESS)
    parser.add_argument("--cols-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.method, args.threads, args.cols_out, args.train, args.probes,
                                 args.refine)))
        return

    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for key in args.shapes:
            columns = {}
            for method in args.knn or DEFAULT_KNN[key]:
                columns[method] = Path(scratch) / f"{key}-{method}.npy"
                child = subprocess.run(
                    [sys.executable, __file__, "--one", key, "--method", method, "--cols-out", str(columns[method]),
                     *(["--probes", str(args.probes)] if args.probes else []),
                     *(["--refine", str(args.refine)] if args.refine is not None else []),
                     *(["--threads", str(args.threads)] if args.threads else []),
                     *(["--train"] if args.train else [])],
                    stdout=subprocess.PIPE, text=True, check=False,  # the child's progress goes to stderr
                )
                if child.returncode != 0:
                    sys.exit(f"shape {key} ({method}) failed (its stderr is above)")
                # other processes on a shared machine slow the build down: record how busy it was
                results.append({**json.loads(child.stdout.strip().splitlines()[-1]), "load_average": os.getloadavg()[0]})
                print(f"{key} {method}: {results[-1]['seconds']:.2f} s, {results[-1]['peak_rss_gb']:.2f} GB",
                      file=sys.stderr)
            if "exact" in columns and "faiss" in columns:
                faiss_row = next(r for r in reversed(results) if r["knn"].startswith("faiss"))
                faiss_row["recall"] = full_recall(columns["exact"], columns["faiss"])

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
            "normalisation, with its statistics) with the kNN search of the `kNN` column. Build time is "
            "wall-clock; CPU time is the user + system time of the build (with 2 threads on an idle machine "
            "about twice the wall time; less means other processes held the cores); the semantic and "
            "co-occurrence columns are the two searches inside that build. Load avg is the 1-minute load "
            "average when the build finished (this benchmark alone makes it ~2). Peak RSS is `ru_maxrss` of a "
            "fresh child process per row and includes Python, torch and the synthetic data (the `RSS before "
            "build` column). kNN recall: share of the exact top-K_s lists (self included) that the faiss "
            "search returns. Targets from the issue in parentheses.\n\n"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(header + table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
