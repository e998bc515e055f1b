"""Time one full validation pass of the metrics on the Baby shape (run by hand, not a test).

Baby (MMRec split): 19,445 users x 7,050 items, ~118k training (excluded) and ~20k validation (truth)
interactions. Scores are dot products of random 64-d embeddings. Prints the time with and without the
score computation, and the copying ``update`` path for comparison. The machine may be shared:
compare with the load average (printed) and take the best run.

Usage: python bench/metrics.py [--repeats 3] [--batch-size 4096]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import scipy.sparse as sp
import torch

from mllmrec.metrics import RankingMetrics, evaluate_full_ranking

N_USERS, N_ITEMS, N_TRAIN, N_VALID, DIM = 19_445, 7_050, 118_000, 20_000, 64


def random_split(rng: np.random.Generator) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Disjoint random train / valid interactions of the Baby shape.

    As in MMRec's per-user split every user has a validation item, so all 19,445 users are evaluated.
    """
    extra = N_VALID - N_USERS
    n = N_TRAIN + N_VALID
    flat = np.unique(rng.integers(0, N_USERS * N_ITEMS, size=int(n * 1.2)))
    rng.shuffle(flat)
    # one validation item per user first, then random extra validation and training pairs
    per_user = np.arange(N_USERS) * N_ITEMS + rng.integers(0, N_ITEMS, size=N_USERS)
    flat = np.concatenate([per_user, np.setdiff1d(flat, per_user)[: N_TRAIN + extra]])
    users, items = flat // N_ITEMS, flat % N_ITEMS
    valid_sel = np.zeros(len(flat), dtype=bool)
    valid_sel[: N_USERS + extra] = True
    shape = (N_USERS, N_ITEMS)
    ones = np.ones(len(flat))
    train = sp.csr_matrix((ones[~valid_sel], (users[~valid_sel], items[~valid_sel])), shape=shape)
    valid = sp.csr_matrix((ones[valid_sel], (users[valid_sel], items[valid_sel])), shape=shape)
    return train, valid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4096)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    train, valid = random_split(rng)
    g = torch.Generator().manual_seed(0)
    user_emb = torch.randn(N_USERS, DIM, generator=g)
    item_emb = torch.randn(N_ITEMS, DIM, generator=g)
    print(f"load average {os.getloadavg()[0]:.2f}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"eval users {np.count_nonzero(np.diff(valid.indptr))}, batch {args.batch_size}")

    t0 = time.perf_counter()
    metrics = RankingMetrics(train, valid)
    print(f"setup (RankingMetrics.__init__): {time.perf_counter() - t0:.3f} s")

    users = torch.from_numpy(metrics.eval_users())

    def score_fn(u: torch.Tensor) -> torch.Tensor:
        return user_emb[u] @ item_emb.T

    for r in range(args.repeats):
        t0 = time.perf_counter()
        result = evaluate_full_ranking(score_fn, train, valid, batch_size=args.batch_size)
        total = time.perf_counter() - t0

        # the same pass split in two: score batches first, then only update + compute
        t0 = time.perf_counter()
        batches = [(b, score_fn(b)) for b in users.split(args.batch_size)]
        scoring = time.perf_counter() - t0
        metrics.reset()
        t0, c0 = time.perf_counter(), time.process_time()
        for b, s in batches:
            metrics.update(b, s, inplace=True)  # what evaluate_full_ranking does
        assert metrics.compute() == result
        only, only_cpu = time.perf_counter() - t0, time.process_time() - c0

        # the copying path (update's default, scores left untouched)
        batches = [(b, score_fn(b)) for b in users.split(args.batch_size)]
        metrics.reset()
        t0 = time.perf_counter()
        for b, s in batches:
            metrics.update(b, s)
        metrics.compute()
        copying = time.perf_counter() - t0
        del batches
        print(f"run {r}: evaluate_full_ranking (scores + metrics) {total:.3f} s | scores only "
              f"{scoring:.3f} s | metrics only {only:.3f} s (CPU time {only_cpu:.3f} s) | "
              f"metrics, copying update {copying:.3f} s")
    print(f"train nnz {train.nnz}, valid nnz {valid.nnz}")
    print({k: round(v, 5) for k, v in result.items()})


if __name__ == "__main__":
    main()
