"""Cold-start items: hold a share of the items out of training entirely (``data.cold_start_items``).

This goes beyond the paper and MMRec. A model that represents an item from its content (MLLMRec,
VBPR's feature part) can rank an item nobody has interacted with; an ID-only model (BPR, LightGCN)
cannot: its rows for such items are never trained.

The rule, applied to the dataset's own split (seeded by ``data.cold_start_seed``, independent of the
run's ``seed`` so that runs with different seeds see the same cold items):

1. ``round(share * n)`` items are drawn uniformly, without replacement, from the ``n`` items with at
   least one interaction in any split;
2. each *training* interaction of a drawn item moves to validation or test (a seeded fair coin per
   interaction); their validation and test interactions stay where they were;
3. the training histories drop those items (so the ``mllm=none`` profiles and the co-occurrence graph,
   both built from training only, never see a cold item: cold items get semantic neighbours only);
4. as everywhere (MMRec's rule), the validation/test rows of users left with no training interaction
   are dropped, with a warning.

Cold-item metrics rank, for each user with a cold item in the evaluated split, **the cold items only**
(the usual cold-start protocol: candidates are the items never seen in training), with the same
Recall/NDCG@K code as the full ranking (:func:`mllmrec.metrics.evaluate_full_ranking` on the cold
columns).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import scipy.sparse as sp

from mllmrec.data.errors import DatasetError
from mllmrec.data.interactions import InteractionData

log = logging.getLogger(__name__)

__all__ = ["ColdStartSplit", "hold_out_cold_items"]


class ColdStartSplit:
    """The dataset with cold items held out, and which items are cold.

    Attributes:
        data: the :class:`InteractionData` after the move (training has no cold item).
        cold_items: int64 [n_cold], ascending.
        share, seed: the parameters.
        moved: training interactions moved to validation / test (``{"valid": n, "test": n}``).
    """

    def __init__(self, data: InteractionData, cold_items: np.ndarray, share: float, seed: int,
                 moved: dict[str, int]) -> None:
        self.data, self.cold_items, self.share, self.seed, self.moved = data, cold_items, share, seed, moved

    def restrict(self, matrix: sp.spmatrix) -> sp.csr_matrix:
        """The cold items' columns of a ``[U, I]`` matrix -> ``[U, n_cold]`` (column ``j`` is
        ``cold_items[j]``)."""
        return sp.csr_matrix(matrix)[:, self.cold_items]


def _drop_from_history(data: InteractionData, is_cold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Training histories without the cold items, order kept (CSR-style indptr, items)."""
    keep = ~is_cold[data.history_items]
    owners = np.repeat(np.arange(data.n_users), np.diff(data.history_indptr))[keep]
    indptr = np.zeros(data.n_users + 1, dtype=np.int64)
    np.add.at(indptr, owners + 1, 1)
    return np.cumsum(indptr), data.history_items[keep]


def hold_out_cold_items(data: InteractionData, share: float, seed: int) -> ColdStartSplit:
    """Hold out ``share`` of the items (see the module docstring for the rule).

    Shapes: the returned data keeps ``[n_users, n_items]``; ``cold_items`` [round(share * n)].
    """
    if not 0.0 < share < 1.0:
        raise DatasetError(f"data.cold_start_items must be in (0, 1), got {share}")
    rng = np.random.default_rng(seed)
    used = np.flatnonzero(np.asarray((data.train + data.valid + data.test).sum(axis=0)).ravel() > 0)
    n_cold = int(round(share * len(used)))
    if n_cold < 1:
        raise DatasetError(f"data.cold_start_items={share} of {len(used)} items holds out no item; use a larger share")
    cold = np.sort(rng.choice(used, size=n_cold, replace=False)).astype(np.int64)
    is_cold = np.zeros(data.n_items, dtype=bool)
    is_cold[cold] = True

    train = data.train.tocoo()
    moving = is_cold[train.col]
    to_valid = rng.random(int(moving.sum())) < 0.5
    users, items = train.row[moving], train.col[moving]
    shape = (data.n_users, data.n_items)

    def _add(base: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> sp.csr_matrix:
        extra = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=shape)
        out = (base + extra).tocsr()
        out.data[:] = 1.0
        return out

    new_train = sp.csr_matrix((np.ones(int((~moving).sum()), np.float32),
                               (train.row[~moving], train.col[~moving])), shape=shape)
    valid = _add(data.valid, users[to_valid], items[to_valid])
    test = _add(data.test, users[~to_valid], items[~to_valid])
    # MMRec's rule: users without training interactions are not evaluated
    has_train = np.diff(new_train.indptr) > 0
    orphans = int((~has_train & ((np.diff(valid.indptr) + np.diff(test.indptr)) > 0)).sum())
    if orphans:
        log.warning("cold start: %d users had only cold items in training; their valid/test rows are dropped",
                    orphans)
        keep_rows = sp.diags(has_train.astype(np.float32))
        valid, test = (keep_rows @ valid).tocsr(), (keep_rows @ test).tocsr()
        valid.eliminate_zeros()
        test.eliminate_zeros()
    indptr, history = _drop_from_history(data, is_cold)
    held = replace(data, train=new_train, valid=valid, test=test, history_indptr=indptr, history_items=history,
                   extras={**data.extras, "cold_items": cold})
    moved = {"valid": int(to_valid.sum()), "test": int((~to_valid).sum())}
    log.info("cold start: %d of %d items held out of training (data.cold_start_items=%s, seed %d); %d training "
             "interactions moved to valid, %d to test", n_cold, len(used), share, seed, moved["valid"], moved["test"])
    return ColdStartSplit(held, cold, share, seed, moved)
