"""Where a full-ranking validation pass spends its time at large catalogues (run by hand, not a test).

Scores are dot products of random ``d``-dim user and item representations (what every
``PrecomputedScores`` model does: ``users[b] @ items.T``), ranked by the real
:class:`mllmrec.metrics.RankingMetrics` in the batches the datamodule uses
(:func:`~mllmrec.train.datamodule.eval_users_per_batch`: a batch's ``[B, I]`` float32 scores stay
under 512 MiB, 134 users at 1M items). Each user has ``--train-per-user`` excluded (training) items
and one truth item. Per batch it times the score product, and the metric update (masking the
excluded items in place, one top-K, the hit lookup) separately, then extrapolates to ``--total-users``.
Then the same users again through the path models use at this size
(:meth:`~mllmrec.models.base.PrecomputedScores.score_blocks` + ``RankingMetrics.update_blocks``:
item blocks of 128k columns in one reused buffer), and checks both give the same metrics.

    python bench/rank.py --items 1000000 --users 16384 --threads 1
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np
import scipy.sparse as sp
import torch

from mllmrec.metrics import RankingMetrics
from mllmrec.models.base import PrecomputedScores
from mllmrec.train.datamodule import eval_users_per_batch


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def random_targets(users: int, items: int, per_user: int, rng: np.random.Generator) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """[users, items] exclude (``per_user`` random items each) and truth (one other item each)."""
    picks = rng.integers(items, size=(users, per_user + 1))
    rows = np.repeat(np.arange(users), per_user)
    exclude = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, picks[:, :per_user].ravel())), shape=(users, items))
    exclude.data[:] = 1.0
    truth = sp.csr_matrix((np.ones(users, np.float32), (np.arange(users), picks[:, per_user])), shape=(users, items))
    truth = truth - truth.multiply(exclude)  # a truth item is never also a training item
    truth.eliminate_zeros()
    return exclude.tocsr(), truth.tocsr()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=16_384, help="users ranked (timed)")
    parser.add_argument("--total-users", type=int, default=1_000_000, help="users of the extrapolated full pass")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--train-per-user", type=int, default=10)
    parser.add_argument("--eval-batch-size", type=int, default=4096, help="data.eval_batch_size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--blocks-only", action="store_true", help="time only the item-block path")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    generator = torch.Generator().manual_seed(0)
    user_vectors = torch.randn(args.users, args.dim, generator=generator)
    item_vectors = torch.randn(args.items, args.dim, generator=generator)
    exclude, truth = random_targets(args.users, args.items, args.train_per_user, rng)
    per_batch = eval_users_per_batch(args.eval_batch_size, args.items)
    metrics = RankingMetrics(exclude, truth)
    users = torch.from_numpy(metrics.eval_users())
    load_before = os.getloadavg()[0]
    score_wall = score_cpu = update_wall = update_cpu = 0.0
    started = time.perf_counter()
    with torch.no_grad():
        for batch in users.split(per_batch) if not args.blocks_only else ():
            t, c = time.perf_counter(), cpu_seconds()
            scores = user_vectors[batch] @ item_vectors.T  # [B, I], as PrecomputedScores.full_scores
            score_wall, score_cpu = score_wall + time.perf_counter() - t, score_cpu + cpu_seconds() - c
            t, c = time.perf_counter(), cpu_seconds()
            metrics.update(batch, scores, inplace=True)
            update_wall, update_cpu = update_wall + time.perf_counter() - t, update_cpu + cpu_seconds() - c
    total = time.perf_counter() - started
    whole = metrics.compute() if not args.blocks_only else None
    n = users.numel()
    scale = args.total_users / n
    print(f"{n:,} users x {args.items:,} items, d = {args.dim}, {per_batch} users per batch, "
          f"{args.threads} thread(s), load {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    if whole is not None:
        print("whole rows (full_scores + update):")
        print(f"  scores (matmul):            {score_wall:7.1f} s wall, {score_cpu:7.1f} s CPU")
        print(f"  metric update (mask, top-K): {update_wall:7.1f} s wall, {update_cpu:7.1f} s CPU")
        print(f"  total {total:.1f} s wall = {1000 * total / n:.2f} ms per user; "
              f"{args.total_users:,} users: ~{total * scale / 60:.0f} min wall, "
              f"~{(score_cpu + update_cpu) * scale / 60:.0f} CPU-min (extrapolated)")

    model = PrecomputedScores()
    model._eval_users, model._eval_items = user_vectors, item_vectors
    metrics = RankingMetrics(exclude, truth)
    started, cpu_started = time.perf_counter(), cpu_seconds()
    with torch.no_grad():
        for batch in users.split(per_batch):
            metrics.update_blocks(batch, model.score_blocks(batch))
    total, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    blocked = metrics.compute()
    print(f"item blocks (score_blocks + update_blocks): {total:.1f} s wall, {cpu:.1f} s CPU = "
          f"{1000 * total / n:.2f} ms per user; {args.total_users:,} users: ~{total * scale / 60:.0f} min wall, "
          f"~{cpu * scale / 60:.0f} CPU-min (extrapolated); same metrics as whole rows: "
          f"{'not run' if whole is None else all(abs(whole[k] - blocked[k]) < 1e-9 for k in whole)}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB, load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
